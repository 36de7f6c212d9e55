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

#include "../host.h"

// the kernels, compiled for the emulator
#include "../attention.cu"
#include "../repmixer.cu"
#include "../upsample.cu"

namespace {

constexpr int64_t kGuardBytes = 512;

struct Guarded {
  at::Tensor buffer;
  int64_t nbytes = 0;
};
Guarded g_last;

at::Tensor guarded_alloc(at::IntArrayRef sizes, const at::TensorOptions& options) {
  int64_t numel = 1;
  for (int64_t s : sizes) numel *= s;
  const int64_t nbytes = numel * static_cast<int64_t>(c10::elementSize(options.dtype().toScalarType()));
  g_last = Guarded{};
  if (numel == 0) return at::empty(sizes, options);
  at::Tensor buffer = at::empty({nbytes + 2 * kGuardBytes}, options.dtype(at::kByte));
  std::memset(buffer.data_ptr(), 0xFF, static_cast<size_t>(nbytes + 2 * kGuardBytes));
  g_last = Guarded{buffer, nbytes};
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
  g_last = Guarded{};
  return result;
}

struct UseGuards {
  UseGuards() { sam3lt::host::allocator() = &guarded_alloc; }
  ~UseGuards() { sam3lt::host::allocator() = nullptr; }
};

at::Tensor repmixer_dwconv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool residual) {
  UseGuards g;
  return checked("repmixer_dwconv", sam3lt::host::repmixer_dwconv(x, weight, bias, residual, nullptr));
}

at::Tensor window_attention(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t num_heads,
                            int64_t window_size, const std::optional<at::Tensor>& pad_value) {
  UseGuards g;
  return checked("window_attention",
                 sam3lt::host::window_attention(qkv, cos, sin, num_heads, window_size, pad_value, nullptr));
}

at::Tensor box_bias_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias_y,
                              const at::Tensor& bias_x) {
  UseGuards g;
  return checked("box_bias_attention", sam3lt::host::box_bias_attention(q, k, v, bias_y, bias_x, nullptr));
}

at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                            const std::optional<at::Tensor>& key_padding_mask) {
  UseGuards g;
  return checked("masked_attention", sam3lt::host::masked_attention(q, k, v, key_padding_mask, nullptr));
}

at::Tensor upsample_nearest_add(const at::Tensor& x, const at::Tensor& skip) {
  UseGuards g;
  return checked("upsample_nearest_add", sam3lt::host::upsample_nearest_add(x, skip, nullptr));
}

at::Tensor masks_to_binary(const at::Tensor& mask_logits, at::IntArrayRef size, double threshold) {
  UseGuards g;
  return checked("masks_to_binary", sam3lt::host::masks_to_binary(mask_logits, size, threshold, nullptr));
}

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

at::Tensor selftest(int64_t mode) {
  at::Tensor out = at::full({64}, -7, at::kInt);
  int* ptr = out.data_ptr<int>();
  sam3lt_emu::launch(dim3(1), dim3(64), 64 * sizeof(int), [&] { race_kernel(ptr, static_cast<int>(mode)); });
  return out;
}

}  // namespace

TORCH_LIBRARY(sam3lt_emu, m) {
  m.def("repmixer_dwconv(Tensor x, Tensor weight, Tensor bias, bool residual) -> Tensor");
  m.def("window_attention(Tensor qkv, Tensor cos, Tensor sin, int num_heads, int window_size, Tensor? pad_value) -> Tensor");
  m.def("box_bias_attention(Tensor q, Tensor k, Tensor v, Tensor bias_y, Tensor bias_x) -> Tensor");
  m.def("masked_attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask) -> Tensor");
  m.def("upsample_nearest_add(Tensor x, Tensor skip) -> Tensor");
  m.def("masks_to_binary(Tensor mask_logits, int[] size, float threshold) -> Tensor");
  m.def("set_schedule(int order, int seed) -> ()", &set_schedule);
  m.def("launch_count() -> int", &launch_count);
  m.def("selftest(int mode) -> Tensor", &selftest);
}

TORCH_LIBRARY_IMPL(sam3lt_emu, CPU, m) {
  m.impl("repmixer_dwconv", &repmixer_dwconv);
  m.impl("window_attention", &window_attention);
  m.impl("box_bias_attention", &box_bias_attention);
  m.impl("masked_attention", &masked_attention);
  m.impl("upsample_nearest_add", &upsample_nearest_add);
  m.impl("masks_to_binary", &masks_to_binary);
}
