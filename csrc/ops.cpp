// The extension module sam3lt._C: torch operator schemas (TORCH_LIBRARY(sam3lt_C)), their CUDA implementations
// (csrc/host.h -> csrc/*.cu kernels) and Meta implementations (output shape/dtype only; used by fake tensors,
// torch.compile and meta-device tracing).
//
// The module itself has no Python functions: importing it loads the library, whose static initialisers register
// the ops as torch.ops.sam3lt_C.<name>. It exposes build metadata as attributes (__torch_version__,
// __cuda_archs__) that sam3lt/_ext.py compares with the running torch and GPU.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "host.h"

// Build metadata from setup.py, given as bare tokens (-DSAM3LT_TORCH_VERSION=2.14.1+cu130
// -DSAM3LT_CUDA_ARCHS=8.0,9.0) because the compile commands go through a shell.
#define SAM3LT_STRINGIZE_(...) #__VA_ARGS__
#define SAM3LT_STRINGIZE(...) SAM3LT_STRINGIZE_(__VA_ARGS__)
#ifdef SAM3LT_TORCH_VERSION
#define SAM3LT_TORCH_VERSION_STR SAM3LT_STRINGIZE(SAM3LT_TORCH_VERSION)
#else
#define SAM3LT_TORCH_VERSION_STR "unknown"
#endif
#ifdef SAM3LT_CUDA_ARCHS
#define SAM3LT_CUDA_ARCHS_STR SAM3LT_STRINGIZE(SAM3LT_CUDA_ARCHS)
#else
#define SAM3LT_CUDA_ARCHS_STR "unknown"
#endif

namespace sam3lt {
namespace {

cudaStream_t stream_for(const at::Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

// ------------------------------------------------------------------ CUDA implementations

at::Tensor repmixer_dwconv_cuda(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool residual) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  return host::repmixer_dwconv(x, weight, bias, residual, stream_for(x));
}

at::Tensor window_attention_cuda(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t num_heads,
                                 int64_t window_size, const std::optional<at::Tensor>& pad_value) {
  const c10::cuda::OptionalCUDAGuard guard(qkv.device());
  return host::window_attention(qkv, cos, sin, num_heads, window_size, pad_value, stream_for(qkv));
}

at::Tensor box_bias_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias_y,
                                   const at::Tensor& bias_x) {
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  return host::box_bias_attention(q, k, v, bias_y, bias_x, stream_for(q));
}

at::Tensor masked_attention_cuda(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& key_padding_mask) {
  const c10::cuda::OptionalCUDAGuard guard(q.device());
  return host::masked_attention(q, k, v, key_padding_mask, stream_for(q));
}

at::Tensor upsample_nearest_add_cuda(const at::Tensor& x, const at::Tensor& skip) {
  const c10::cuda::OptionalCUDAGuard guard(x.device());
  return host::upsample_nearest_add(x, skip, stream_for(x));
}

at::Tensor masks_to_binary_cuda(const at::Tensor& mask_logits, at::IntArrayRef size, double threshold) {
  const c10::cuda::OptionalCUDAGuard guard(mask_logits.device());
  return host::masks_to_binary(mask_logits, size, threshold, stream_for(mask_logits));
}

// ------------------------------------------------------------------ Meta implementations (shapes only)

at::Tensor repmixer_dwconv_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool residual) {
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && bias.dim() == 1, "sam3lt_C::repmixer_dwconv: expects x (B, L, C), weight (C, K), bias (C,)");
  return at::empty_symint(x.sym_sizes(), x.options());
}

at::Tensor window_attention_meta(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t num_heads,
                                 int64_t window_size, const std::optional<at::Tensor>& pad_value) {
  TORCH_CHECK(qkv.dim() == 4, "sam3lt_C::window_attention: expects qkv (B, H, W, 3C)");
  return at::empty_symint({qkv.sym_size(0), qkv.sym_size(1), qkv.sym_size(2), qkv.sym_size(3) / 3}, qkv.options());
}

at::Tensor attention_out_meta(const char* op, const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 4, op, ": expects q (B, heads, Lq, D)");
  return at::empty_symint({q.sym_size(0), q.sym_size(2), q.sym_size(1) * q.sym_size(3)}, q.options());
}

at::Tensor box_bias_attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& bias_y,
                                   const at::Tensor& bias_x) {
  return attention_out_meta("sam3lt_C::box_bias_attention", q);
}

at::Tensor masked_attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                 const std::optional<at::Tensor>& key_padding_mask) {
  return attention_out_meta("sam3lt_C::masked_attention", q);
}

at::Tensor upsample_nearest_add_meta(const at::Tensor& x, const at::Tensor& skip) {
  TORCH_CHECK(x.dim() == 4 && skip.dim() == 4, "sam3lt_C::upsample_nearest_add: expects x (B, C, h, w) and skip (B, C, H, W)");
  return at::empty_symint(skip.sym_sizes(), skip.options());
}

at::Tensor masks_to_binary_meta(const at::Tensor& mask_logits, at::IntArrayRef size, double threshold) {
  TORCH_CHECK(mask_logits.dim() == 3 && size.size() == 2, "sam3lt_C::masks_to_binary: expects mask_logits (N, h, w) and size (H, W)");
  return at::empty_symint({mask_logits.sym_size(0), c10::SymInt(size[0]), c10::SymInt(size[1])},
                          mask_logits.options().dtype(at::kBool));
}

}  // namespace
}  // namespace sam3lt

// Schemas: the same arguments as the public sam3lt.ops functions (and the Triton sam3lt:: ops).
TORCH_LIBRARY(sam3lt_C, m) {
  m.def("repmixer_dwconv(Tensor x, Tensor weight, Tensor bias, bool residual) -> Tensor");
  m.def("window_attention(Tensor qkv, Tensor cos, Tensor sin, int num_heads, int window_size, Tensor? pad_value) -> Tensor");
  m.def("box_bias_attention(Tensor q, Tensor k, Tensor v, Tensor bias_y, Tensor bias_x) -> Tensor");
  m.def("masked_attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask) -> Tensor");
  m.def("upsample_nearest_add(Tensor x, Tensor skip) -> Tensor");
  m.def("masks_to_binary(Tensor mask_logits, int[] size, float threshold) -> Tensor");
}

TORCH_LIBRARY_IMPL(sam3lt_C, CUDA, m) {
  m.impl("repmixer_dwconv", &sam3lt::repmixer_dwconv_cuda);
  m.impl("window_attention", &sam3lt::window_attention_cuda);
  m.impl("box_bias_attention", &sam3lt::box_bias_attention_cuda);
  m.impl("masked_attention", &sam3lt::masked_attention_cuda);
  m.impl("upsample_nearest_add", &sam3lt::upsample_nearest_add_cuda);
  m.impl("masks_to_binary", &sam3lt::masks_to_binary_cuda);
}

TORCH_LIBRARY_IMPL(sam3lt_C, Meta, m) {
  m.impl("repmixer_dwconv", &sam3lt::repmixer_dwconv_meta);
  m.impl("window_attention", &sam3lt::window_attention_meta);
  m.impl("box_bias_attention", &sam3lt::box_bias_attention_meta);
  m.impl("masked_attention", &sam3lt::masked_attention_meta);
  m.impl("upsample_nearest_add", &sam3lt::upsample_nearest_add_meta);
  m.impl("masks_to_binary", &sam3lt::masks_to_binary_meta);
}

// A plain CPython module (no pybind11: faster to build). Import it after torch.
static PyModuleDef sam3lt_c_module = {PyModuleDef_HEAD_INIT, "sam3lt._C",
                                      "CUDA kernels of sam3lt, registered as torch.ops.sam3lt_C.*", -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* mod = PyModule_Create(&sam3lt_c_module);
  if (mod == nullptr) return nullptr;
  if (PyModule_AddStringConstant(mod, "__torch_version__", SAM3LT_TORCH_VERSION_STR) < 0 ||
      PyModule_AddStringConstant(mod, "__cuda_archs__", SAM3LT_CUDA_ARCHS_STR) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
