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
// Warp shuffles, ldmatrix and mma.sync (m16n8k16, with the PTX ISA's fragment layouts) are warp collectives: each
// lane posts its operands (value, row address, fragments) to a per-thread slot, the warp meets at a barrier, then
// each lane computes its own result from the posted operands (two slot sets used in turn, so no second barrier
// is needed).
// cp.async: a copy is queued and carried out only when the thread waits for its group (cp.async.wait_group), so
// a read of the destination before the wait sees the poison pattern; 16-byte alignment is checked.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <array>
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
  std::vector<std::array<uint64_t, 8>> posts[2];  // per-thread operand slots of warp collectives (two sets)
  std::vector<int64_t> collectives;              // warp collectives each thread has reached
  struct Copy { void* dst; const void* src; int bytes; int group; };
  std::vector<std::vector<Copy>> copies;  // per-thread cp.async queue
  std::vector<int> open_group;            // per-thread index of the group new copies join
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
  for (auto& set : e.posts) set.assign(n, {});
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
        e.collectives.assign(n, 0);
        e.copies.assign(n, {});
        e.open_group.assign(n, 0);
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

inline float __ldg(const float* p) { return *p; }

// ------------------------------------------------------------------ ldmatrix, mma.sync, cp.async

namespace sam3lt_emu {

inline bool in_smem(const void* p, size_t bytes) {
  const Emulator& e = emu();
  const char* c = static_cast<const char*>(p);
  return c >= e.smem && c + bytes <= e.smem + e.smem_size;
}

// Posts this lane's operand words for the warp collective it has reached, waits for the whole warp, and returns
// the 32 slots of its warp. Two slot sets are used in turn: a lane can be at most one collective ahead of another
// (the next collective's barrier holds it), so nobody overwrites a set still being read.
inline const std::array<uint64_t, 8>* post(const uint64_t* words, int n) {
  Emulator& e = emu();
  const int me = e.current;
  auto& set = e.posts[e.collectives[me]++ & 1];
  std::copy(words, words + n, set[me].begin());
  __syncwarp();
  return set.data() + (me & ~31);
}

// ldmatrix and mma.sync read operands from all 32 lanes.
inline void require_whole_warps(const char* what) {
  if (emu().nthreads % 32 != 0) fail(std::string(what) + ": the block is not a whole number of warps");
}

}  // namespace sam3lt_emu

// A warp shuffle is a warp collective like the ones below: each lane posts its value, then reads its source's.
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
  const auto* lanes = sam3lt_emu::post(&slot, 1);
  T out;
  std::memcpy(&out, &lanes[src & 31][0], sizeof(T));
  return out;
}

namespace sam3lt_emu {

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: lane l gives the address of row l % 8 of matrix l / 8;
// r[j] receives matrix j's elements (l / 4, 2 (l % 4) + {0, 1}), or with .trans (2 (l % 4) + {0, 1}, l / 4).
template <bool kTrans>
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  if (!in_smem(row, 16) || reinterpret_cast<uintptr_t>(row) % 16 != 0)
    fail("ldmatrix: a row address outside shared memory or not 16-byte aligned");
  require_whole_warps("ldmatrix");
  const uint64_t word = reinterpret_cast<uintptr_t>(row);
  const auto* lanes = post(&word, 1);
  const int l = lane_id();
  auto elem = [&](int j, int i, int c) {  // matrix j, row i, column c
    return static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(lanes[8 * j + i][0])[c]);
  };
  for (int j = 0; j < 4; ++j) {
    if (kTrans) r[j] = elem(j, 2 * (l % 4), l / 4) | elem(j, 2 * (l % 4) + 1, l / 4) << 16;
    else r[j] = elem(j, l / 4, 2 * (l % 4)) | elem(j, l / 4, 2 * (l % 4) + 1) << 16;
  }
}

template <typename T>
inline float from_bits(uint32_t bits) {
  return static_cast<float>(T(static_cast<uint16_t>(bits), T::from_bits()));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: d += A B. With g = l / 4, t = l % 4, lane l holds
// a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]} (pairs, low half first), b = {B[2t..][g],
// B[2t+8..][g]} and d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}. Sums in fp32, k in order.
template <typename T>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  const uint64_t words[3] = {a[0] | uint64_t{a[1]} << 32, a[2] | uint64_t{a[3]} << 32, b[0] | uint64_t{b[1]} << 32};
  require_whole_warps("mma.sync");
  const auto* lanes = post(words, 3);
  auto reg = [&](int lane, int k) { return static_cast<uint32_t>(lanes[lane][k / 2] >> (32 * (k % 2))); };
  auto A = [&](int r, int k) {  // register (r >= 8) + 2 (k >= 8) of lane 4 (r % 8) + (k % 8) / 2
    return from_bits<T>(reg(4 * (r % 8) + (k % 8) / 2, (r >= 8) + 2 * (k >= 8)) >> (16 * (k % 2)));
  };
  auto B = [&](int k, int n) { return from_bits<T>(reg(4 * n + (k % 8) / 2, 4 + (k >= 8)) >> (16 * (k % 2))); };
  const int l = lane_id(), g = l / 4, t = l % 4;
  for (int e = 0; e < 4; ++e) {
    const int r = g + 8 * (e / 2), n = 2 * t + e % 2;
    float acc = d[e];
    for (int k = 0; k < 16; ++k) acc = std::fma(A(r, k), B(k, n), acc);
    d[e] = acc;
  }
}

// cp.async.cg.shared.global [dst], [src], 16, src_bytes: queued, carried out by cp_async_wait.
inline void cp_async16(void* dst, const void* src, int src_bytes) {
  Emulator& e = emu();
  if (!in_smem(dst, 16) || reinterpret_cast<uintptr_t>(dst) % 16 != 0)
    fail("cp.async: destination outside shared memory or not 16-byte aligned");
  if (src_bytes != 0 && (src_bytes != 16 || reinterpret_cast<uintptr_t>(src) % 16 != 0))
    fail("cp.async: source not 16-byte aligned (or a partial copy)");
  e.copies[e.current].push_back({dst, src, src_bytes, e.open_group[e.current]});
}

inline void cp_async_commit() { ++emu().open_group[emu().current]; }

// cp.async.wait_group n: every committed group but the newest n is complete.
inline void cp_async_wait(int n) {
  Emulator& e = emu();
  auto& q = e.copies[e.current];
  const int done_below = e.open_group[e.current] - n;
  auto keep = q.begin();
  for (auto& c : q) {
    if (c.group < done_below) {
      std::memset(c.dst, 0, 16);
      if (c.bytes) std::memcpy(c.dst, c.src, c.bytes);
    } else {
      *keep++ = c;
    }
  }
  q.erase(keep, q.end());
}

}  // namespace sam3lt_emu
