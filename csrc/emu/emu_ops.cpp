// Test-only build of the CUDA kernels on the CPU: csrc/*.cu compiled as C++ against csrc/emu/cuda_emu.h, with the
// host code of csrc/host.h, registered as torch.ops.sam3lt_emu.* for CPU tensors (same schemas as sam3lt_C).
//
// Built on demand by tests/test_cuda_backend.py (torch.utils.cpp_extension.load, -DSAM3LT_EMULATE); never installed.
// Every output is allocated inside a larger buffer filled with 0xFF bytes (NaN in every float type): the bytes
// around it must still be 0xFF after the kernel (no out-of-bounds writes), and an element the kernel forgot to
// write stays NaN (or, for bool outputs, a byte that is neither 0 nor 1).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstring>

#include "../ops.h"
#include "../tensor_core.cuh"

// The kernels (every csrc/*.cu) are compiled into the same unit after this file: the test's build writes one
// source that includes this file and then each of them, so a new family needs no line here.

namespace {

constexpr int64_t kGuardBytes = 512;

struct GuardedBuffer {
  at::Tensor buffer;
  int64_t nbytes = 0;
};
GuardedBuffer g_last;

at::Tensor guarded_alloc(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(options.dtype().toScalarType()));
  g_last = GuardedBuffer{};
  if (numel == 0) return at::empty(sizes, options);
  at::Tensor buffer = at::empty({nbytes + 2 * kGuardBytes}, options.dtype(at::kByte));
  std::memset(buffer.data_ptr(), 0xFF, static_cast<size_t>(nbytes + 2 * kGuardBytes));
  g_last = GuardedBuffer{buffer, nbytes};
  return buffer.narrow(0, kGuardBytes, nbytes).view(options.dtype().toScalarType()).view(sizes);
}

at::Tensor checked(const char* op, const at::Tensor& out) {
  if (!g_last.buffer.defined()) return out;
  const uint8_t* bytes = g_last.buffer.data_ptr<uint8_t>();
  for (int64_t i = 0; i < kGuardBytes; ++i) {
    TORCH_CHECK(bytes[i] == 0xFF, op, ": out-of-bounds write ", kGuardBytes - i, " bytes before the output");
    TORCH_CHECK(bytes[kGuardBytes + g_last.nbytes + i] == 0xFF, op, ": out-of-bounds write ", i,
                " bytes after the output");
  }
  if (out.scalar_type() == at::kBool) {
    for (int64_t i = 0; i < g_last.nbytes; ++i)
      TORCH_CHECK(bytes[kGuardBytes + i] <= 1, op, ": output byte ", i, " was never written");
  }
  at::Tensor result = out.clone();
  g_last = GuardedBuffer{};
  return result;
}

struct UseGuards {
  UseGuards() { sam3lt::host::allocator() = &guarded_alloc; }
  ~UseGuards() { sam3lt::host::allocator() = nullptr; }
};

// Runs a host function without a stream; the output sits between guard bytes and is checked after the kernel.
template <typename Op>
struct Guarded {
  template <typename Fn>
  static at::Tensor run(Fn fn, const at::Tensor&) {
    UseGuards g;
    return checked(Op::name, fn(nullptr));
  }
};

#define SAM3LT_NAME(NAME, SCHEMA) \
  struct NAME##_op {              \
    static constexpr const char* name = #NAME; \
  };
SAM3LT_OPS(SAM3LT_NAME)
#undef SAM3LT_NAME

// Thread scheduling of the emulator: 0 forward, 1 reverse, 2 random (seeded).
void set_schedule(int64_t order, int64_t seed) {
  TORCH_CHECK(order >= 0 && order <= 2, "set_schedule: order must be 0 (forward), 1 (reverse) or 2 (random)");
  sam3lt_emu::set_order(static_cast<int>(order), static_cast<uint32_t>(seed));
}

int64_t launch_count() { return sam3lt_emu::emu().launches; }

// Self-test of the emulator (tests/test_cuda_backend.py): thread t of a 64-thread block writes s[t] = t, then reads
// s[(t + 1) % 64]. mode 0: with a __syncthreads in between (correct in every schedule); 1: without it (a race:
// the result depends on the schedule); 2: only even threads reach the barrier (must be reported as an error).
void race_kernel(int* out, int mode) {
  int* s = reinterpret_cast<int*>(sam3lt_emu::dynamic_smem());
  const int t = static_cast<int>(threadIdx.x), n = static_cast<int>(blockDim.x);
  s[t] = t;
  if (mode == 0 || (mode == 2 && t % 2 == 0)) __syncthreads();
  out[t] = s[(t + 1) % n];
}

// mode 3: thread t copies src[4t .. 4t + 4) to shared memory with cp.async, waits, reads s[4t] (gets src[4t]);
// 4: reads before the wait (gets the poison, -1); 5: a copy from a misaligned source (must be reported).
void copy_kernel(const int* src, int* out, int mode) {
  int* s = reinterpret_cast<int*>(sam3lt_emu::dynamic_smem());
  const int t = static_cast<int>(threadIdx.x);
  sam3lt::cp_async16(s + 4 * t, src + 4 * t + (mode == 5 ? 1 : 0), true);
  sam3lt::cp_async_commit();
  if (mode == 4) out[t] = s[4 * t];
  sam3lt::cp_async_wait<0>();
  if (mode != 4) out[t] = s[4 * t];
}

at::Tensor selftest(int64_t mode) {
  TORCH_CHECK(mode >= 0 && mode <= 5, "selftest: mode must be in 0..5");
  at::Tensor out = at::full({64}, -7, at::kInt);
  int* ptr = out.data_ptr<int>();
  if (mode >= 3) {
    at::Tensor src = at::arange(4 * 64 + 4, at::kInt);
    const int* sp = src.data_ptr<int>();
    sam3lt_emu::launch(dim3(1), dim3(64), 4 * 64 * sizeof(int), [&] { copy_kernel(sp, ptr, static_cast<int>(mode)); });
    return out;
  }
  sam3lt_emu::launch(dim3(1), dim3(64), 64 * sizeof(int), [&] { race_kernel(ptr, static_cast<int>(mode)); });
  return out;
}

// One warp on the 16 x 16 matrix M[r][c] = r * 16 + c (exact in bf16) in shared memory. Row (lane % 8) +
// 8 ((lane / 8) % 2), columns from 8 (lane / 16): ldmatrix_x4 -> out[lane][0:8], the .trans version ->
// out[lane][8:16], then D = M M[:, 0:8] with mma_m16n8k16 on those fragments -> out[lane][16:20]
// (tests/test_cuda_backend.py checks each against the PTX ISA's layouts).
void fragment_kernel(float* out) {
  using T = c10::BFloat16;
  T* s = reinterpret_cast<T*>(sam3lt_emu::dynamic_smem());
  const int lane = static_cast<int>(threadIdx.x);
  for (int i = lane; i < 256; i += 32) s[i] = T(static_cast<float>(i));
  __syncwarp();
  const T* row = s + ((lane % 8) + 8 * ((lane / 8) % 2)) * 16 + 8 * (lane / 16);
  uint32_t a[4], bt[4];
  sam3lt::ldmatrix_x4(a, row);
  sam3lt::ldmatrix_x4<true>(bt, row);
  auto half = [](uint32_t r, int h) { return sam3lt_emu::from_bits<T>(r >> (16 * h)); };
  for (int j = 0; j < 8; ++j) {
    out[lane * 20 + j] = half(a[j / 2], j % 2);
    out[lane * 20 + 8 + j] = half(bt[j / 2], j % 2);
  }
  float d[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  const uint32_t b[2] = {bt[0], bt[1]};
  sam3lt::mma_m16n8k16<T>(d, a, b);
  for (int e = 0; e < 4; ++e) out[lane * 20 + 16 + e] = d[e];
}

at::Tensor fragment_selftest() {
  at::Tensor out = at::full({32, 20}, -1.0f, at::kFloat);
  float* ptr = out.data_ptr<float>();
  sam3lt_emu::launch(dim3(1), dim3(32), 256 * sizeof(c10::BFloat16), [&] { fragment_kernel(ptr); });
  return out;
}

}  // namespace

#define SAM3LT_DEF(NAME, SCHEMA) m.def(#NAME SCHEMA);
#define SAM3LT_EMU(NAME, SCHEMA) m.impl(#NAME, &sam3lt::Bind<&sam3lt::host::NAME, Guarded<NAME##_op>>::call);

TORCH_LIBRARY(sam3lt_emu, m) {
  SAM3LT_OPS(SAM3LT_DEF)
  m.def("set_schedule(int order, int seed) -> ()", &set_schedule);
  m.def("launch_count() -> int", &launch_count);
  m.def("selftest(int mode) -> Tensor", &selftest);
  m.def("fragment_selftest() -> Tensor", &fragment_selftest);
}

TORCH_LIBRARY_IMPL(sam3lt_emu, CPU, m) { SAM3LT_OPS(SAM3LT_EMU) }
