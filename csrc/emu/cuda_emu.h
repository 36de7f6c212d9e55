// CPU emulation of the CUDA subset used by csrc/*.cu, for testing the kernels without a GPU.
//
// Compiled only with -DSAM3LT_EMULATE (tests/test_cuda_backend.py builds csrc/emu/emu_ops.cpp with it); the real
// extension never includes this file.
//
// Model: the blocks of a grid run one after another; the threads of a block are fibers (ucontext) on one OS
// thread. A fiber runs until it reaches a barrier (__syncthreads, __syncwarp, a warp shuffle) or returns; the
// scheduler then runs the next ready fiber, in a configurable order (forward, reverse or seeded random), and
// releases a barrier once every thread it waits for has arrived. Barriers reached by only part of a warp or a
// block (divergent barriers, a __syncthreads after some threads returned) are reported as errors, as is a
// deadlock. Running the same kernel under different orders exposes missing barriers: a thread that reads
// shared memory another thread has not written yet in that order reads the poison pattern (0xFF bytes: NaN)
// or stale values.
//
// wmma: a fragment holds the whole 16x16 tile in every lane (the real layout is opaque, and the kernels do not
// depend on it); mma_sync computes in fp32 with the products of exactly representable 16-bit inputs;
// store_matrix_sync writes from each lane only the elements e with e % 32 == lane, so a missing __syncwarp
// between a store and reads of other lanes' elements is visible in some orders.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

// ------------------------------------------------------------------ CUDA runtime types and qualifiers

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned int x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }

struct CUstream_st;
typedef CUstream_st* cudaStream_t;
enum cudaError_t { cudaSuccess = 0, cudaErrorInvalidValue = 1, cudaErrorLaunchFailure = 719 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline const char* cudaGetErrorString(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated launch failure"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaGetDevice(int* d) { *d = 0; return cudaSuccess; }
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount = 16 };
// The emulated device reports an H200's SM count, so launchers that size their grid by it take the same path here.
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) { *v = 132; return cudaSuccess; }
template <class F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return cudaSuccess; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static

inline dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace sam3lt_emu {

enum class Order { kForward = 0, kReverse = 1, kRandom = 2 };
enum class State { kReady, kBlockBarrier, kWarpBarrier, kDone, kFailed };

struct Fiber {
  ucontext_t ctx;
  State state = State::kReady;
};

struct Emulator {
  std::mutex mutex;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  size_t stack_size = 1 << 20;
  ucontext_t main_ctx;
  int current = -1;
  int nthreads = 0;
  std::function<void()>* body = nullptr;
  std::unique_ptr<char[]> smem_raw;
  char* smem = nullptr;
  size_t smem_size = 0;
  std::vector<uint64_t> xchg;  // one slot per thread for warp shuffles
  Order order = Order::kForward;
  std::mt19937 rng{1234};
  std::string error;
  int64_t launches = 0;
};

inline Emulator& emu() {
  static Emulator e;
  return e;
}

inline void set_order(int order, uint32_t seed) {
  emu().order = static_cast<Order>(order);
  emu().rng.seed(seed);
}

inline int lane_id() { return emu().current % 32; }

// The calling fiber stops here for good; the scheduler raises `msg` once control is back in the main context.
[[noreturn]] inline void fail(const std::string& msg) {
  Emulator& e = emu();
  if (e.error.empty()) e.error = msg;
  e.fibers[e.current].state = State::kFailed;
  swapcontext(&e.fibers[e.current].ctx, &e.main_ctx);
  std::abort();  // never resumed
}

inline void wait_at(State s) {
  Emulator& e = emu();
  const int me = e.current;
  e.fibers[me].state = s;
  swapcontext(&e.fibers[me].ctx, &e.main_ctx);
}

inline void fiber_main() {
  Emulator& e = emu();
  (*e.body)();
  e.fibers[e.current].state = State::kDone;
  // returning resumes uc_link (the scheduler)
}

inline void set_builtins(int t, const dim3& block) {
  threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
}

inline void run_block(const dim3& block) {
  Emulator& e = emu();
  const int n = e.nthreads;
  for (int t = 0; t < n; ++t) {
    Fiber& f = e.fibers[t];
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = e.stacks[t].get();
    f.ctx.uc_stack.ss_size = e.stack_size;
    f.ctx.uc_link = &e.main_ctx;
    makecontext(&f.ctx, reinterpret_cast<void (*)()>(&fiber_main), 0);
    f.state = State::kReady;
  }
  std::vector<int> ready;
  ready.reserve(n);
  while (true) {
    ready.clear();
    for (int t = 0; t < n; ++t)
      if (e.fibers[t].state == State::kReady) ready.push_back(t);
    if (!ready.empty()) {
      if (e.order == Order::kReverse) std::reverse(ready.begin(), ready.end());
      if (e.order == Order::kRandom) std::shuffle(ready.begin(), ready.end(), e.rng);
      for (int t : ready) {
        set_builtins(t, block);
        e.current = t;
        swapcontext(&e.main_ctx, &e.fibers[t].ctx);
        if (e.fibers[t].state == State::kFailed) throw std::runtime_error("emulated kernel: " + e.error);
      }
      continue;
    }
    bool all_done = true;
    for (int t = 0; t < n; ++t) all_done = all_done && e.fibers[t].state == State::kDone;
    if (all_done) return;
    bool released = false;
    for (int w0 = 0; w0 < n; w0 += 32) {
      const int w1 = std::min(n, w0 + 32);
      int at_warp = 0, other = 0;
      for (int t = w0; t < w1; ++t) {
        if (e.fibers[t].state == State::kWarpBarrier) ++at_warp;
        else ++other;
      }
      if (at_warp == 0) continue;
      if (other != 0)
        throw std::runtime_error("emulated kernel: divergent warp barrier (warp " + std::to_string(w0 / 32) +
                                 ": some lanes at __syncwarp/shuffle, others at __syncthreads or returned)");
      for (int t = w0; t < w1; ++t) e.fibers[t].state = State::kReady;
      released = true;
    }
    if (released) continue;
    int at_block = 0, done = 0;
    for (int t = 0; t < n; ++t) {
      if (e.fibers[t].state == State::kBlockBarrier) ++at_block;
      if (e.fibers[t].state == State::kDone) ++done;
    }
    if (at_block > 0 && done > 0)
      throw std::runtime_error("emulated kernel: __syncthreads reached after some threads of the block returned");
    if (at_block != n) throw std::runtime_error("emulated kernel: deadlock");
    for (int t = 0; t < n; ++t) e.fibers[t].state = State::kReady;
  }
}

template <class F>
void launch(dim3 grid, dim3 block, size_t smem_bytes, F&& f) {
  Emulator& e = emu();
  std::lock_guard<std::mutex> lock(e.mutex);
  const int n = static_cast<int>(block.x * block.y * block.z);
  if (n <= 0 || n > 1024) throw std::runtime_error("emulated launch: bad block size");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) throw std::runtime_error("emulated launch: empty grid");
  if (grid.y > 65535 || grid.z > 65535) throw std::runtime_error("emulated launch: grid.y/z > 65535");
  if (smem_bytes > 227 * 1024) throw std::runtime_error("emulated launch: more than 227 KiB of shared memory");
  std::function<void()> body = std::forward<F>(f);
  e.body = &body;
  e.nthreads = n;
  if (static_cast<int>(e.fibers.size()) < n) e.fibers.resize(n);
  while (static_cast<int>(e.stacks.size()) < n) e.stacks.emplace_back(new char[e.stack_size]);
  e.xchg.assign(n, 0);
  e.smem_raw.reset(new char[smem_bytes + 256]);
  e.smem = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(e.smem_raw.get()) + 127) & ~uintptr_t(127));
  e.smem_size = smem_bytes;
  e.error.clear();
  blockDim = block;
  gridDim = grid;
  ++e.launches;
  for (unsigned int z = 0; z < grid.z; ++z)
    for (unsigned int y = 0; y < grid.y; ++y)
      for (unsigned int x = 0; x < grid.x; ++x) {
        blockIdx = dim3(x, y, z);
        std::memset(e.smem, 0xFF, smem_bytes);  // poison: NaN for every float type
        run_block(block);
      }
  e.body = nullptr;
}

inline char* dynamic_smem() { return emu().smem; }

}  // namespace sam3lt_emu

inline void __syncthreads() { sam3lt_emu::wait_at(sam3lt_emu::State::kBlockBarrier); }
inline void __syncwarp(unsigned int mask = 0xffffffffu) {
  if (mask != 0xffffffffu) sam3lt_emu::fail("__syncwarp with a partial mask is not emulated");
  sam3lt_emu::wait_at(sam3lt_emu::State::kWarpBarrier);
}

template <typename T>
inline T __shfl_xor_sync(unsigned int mask, T value, int lane_mask, int width = 32) {
  static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
  if (mask != 0xffffffffu || width != 32) sam3lt_emu::fail("__shfl_xor_sync: only full-warp shuffles are emulated");
  auto& e = sam3lt_emu::emu();
  const int me = e.current;
  const int src = (me & ~31) | ((me & 31) ^ lane_mask);
  if (src >= e.nthreads) sam3lt_emu::fail("__shfl_xor_sync: source lane outside the block");
  uint64_t slot = 0;
  std::memcpy(&slot, &value, sizeof(T));
  e.xchg[me] = slot;
  __syncwarp();
  T out;
  slot = e.xchg[src];
  std::memcpy(&out, &slot, sizeof(T));
  __syncwarp();
  return out;
}

inline float __ldg(const float* p) { return *p; }

// ------------------------------------------------------------------ wmma

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <class Use, int M, int N, int K, class T, class Layout = void>
struct fragment {
  static constexpr int kRows = std::is_same<Use, matrix_b>::value ? K : M;
  static constexpr int kCols = std::is_same<Use, matrix_a>::value ? K : N;
  float v[kRows * kCols];
};

inline void check_ptr(const void* p, unsigned ldm, size_t elem, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0)
    sam3lt_emu::fail(std::string(what) + ": pointer not 256-bit aligned");
  if ((ldm * elem) % 16 != 0) sam3lt_emu::fail(std::string(what) + ": ldm not a multiple of 16 bytes");
}

template <class Use, int M, int N, int K, class T, class Layout, class V>
inline void fill_fragment(fragment<Use, M, N, K, T, Layout>& f, V value) {
  for (auto& x : f.v) x = static_cast<float>(value);
}

template <class Use, int M, int N, int K, class T, class Layout>
inline void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& f, const T* p, unsigned ldm) {
  static_assert(!std::is_same<Use, accumulator>::value, "accumulator loads need a layout");
  check_ptr(p, ldm, sizeof(T), "load_matrix_sync");
  using F = fragment<Use, M, N, K, T, Layout>;
  for (int r = 0; r < F::kRows; ++r)
    for (int c = 0; c < F::kCols; ++c) {
      const T& x = std::is_same<Layout, row_major>::value ? p[r * ldm + c] : p[c * ldm + r];
      f.v[r * F::kCols + c] = static_cast<float>(x);
    }
}

template <int M, int N, int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, M, N, K, float>& f, unsigned ldm, layout_t layout) {
  check_ptr(p, ldm, sizeof(float), "store_matrix_sync");
  const int lane = sam3lt_emu::lane_id();
  for (int e = lane; e < M * N; e += 32) {
    const int r = e / N, c = e % N;
    if (layout == mem_row_major) p[r * ldm + c] = f.v[e];
    else p[c * ldm + r] = f.v[e];
  }
}

template <int M, int N, int K, class TA, class LA, class TB, class LB>
inline void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, float>& c) {
  float out[M * N];
  for (int r = 0; r < M; ++r)
    for (int col = 0; col < N; ++col) {
      float acc = c.v[r * N + col];
      for (int k = 0; k < K; ++k) acc = std::fma(a.v[r * K + k], b.v[k * N + col], acc);
      out[r * N + col] = acc;
    }
  std::memcpy(d.v, out, sizeof(out));
}

}  // namespace wmma
}  // namespace nvcuda
