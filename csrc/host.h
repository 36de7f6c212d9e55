// Helpers of the ops' host code (csrc/<family>.h: argument checks, output allocation, kernel parameters,
// launch), shared by the extension (ops.cpp: CUDA tensors, the current CUDA stream) and by the CPU emulation build used
// in tests (emu/emu_ops.cpp: CPU tensors, kernels run by csrc/emu/cuda_emu.h). Checks raise readable errors
// (TORCH_CHECK); the Python `supports()` checks of sam3lt/ops/_cuda.py reject the same inputs before a call.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "params.h"

namespace sam3lt {
namespace host {

// Output allocator: at::empty, replaced by the emulation tests with one that surrounds the output with guard
// bytes (out-of-bounds writes) and fills it with a poison pattern (elements never written).
using AllocFn = at::Tensor (*)(at::IntArrayRef sizes, const at::TensorOptions& options);
inline AllocFn& allocator() {
  static AllocFn fn = nullptr;
  return fn;
}
inline at::Tensor alloc(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return allocator() != nullptr ? allocator()(sizes, options) : at::empty(sizes, options);
}

constexpr int64_t kIntMax = std::numeric_limits<int>::max();

inline void check_device(const char* op, const at::Tensor& ref, std::initializer_list<const at::Tensor*> others) {
#ifdef SAM3LT_EMULATE
  TORCH_CHECK(ref.device().is_cpu(), op, ": the emulated kernels take CPU tensors");
#else
  TORCH_CHECK(ref.is_cuda(), op, ": expected CUDA tensors, got ", ref.device());
#endif
  for (const at::Tensor* t : others)
    TORCH_CHECK(t->device() == ref.device(), op, ": tensors on different devices (", ref.device(), ", ", t->device(), ")");
}

inline DType dtype_code(const char* op, at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, op, ": unsupported dtype ", t, " (float32, float16 and bfloat16 are supported)");
  }
  return DType::kFloat32;
}

inline void check_int(const char* op, int64_t v, const char* what) {
  TORCH_CHECK(v >= 0 && v <= kIntMax, op, ": ", what, " = ", v, " does not fit the kernels' int32 indexing");
}

// True when rows of 8 consecutive elements along dim `d` can be read with 16-byte loads: unit stride along d,
// a 16-byte aligned base and every other stride (of a dimension longer than 1) a multiple of 16 bytes.
inline bool vec_ok(const at::Tensor& t, int64_t d) {
  if (t.stride(d) != 1 || reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 != 0) return false;
  const int64_t elem = static_cast<int64_t>(t.element_size());
  for (int64_t i = 0; i < t.dim(); ++i)
    if (i != d && t.size(i) > 1 && (t.stride(i) * elem) % 16 != 0) return false;
  return true;
}

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": kernel launch failed: ", cudaGetErrorString(err));
}

inline void check_head_dim(const char* op, int64_t d) {
  TORCH_CHECK(d > 0 && d <= 128 && d % 8 == 0 && attention_kernel_head_dim(static_cast<int>(d)) != 0, op,
              ": head dim ", d, " is not supported (multiples of 8 up to 128)");
}

}  // namespace host
}  // namespace sam3lt
