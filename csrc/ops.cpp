// The extension module sam3lt._C: the ops of csrc/ops.h registered as torch.ops.sam3lt_C.* with their CUDA
// implementations (host code in csrc/<family>.h -> kernels in csrc/<family>.cu) and Meta implementations
// (output shape/dtype only; used by fake tensors, torch.compile and meta-device tracing).
//
// The module itself has no Python functions: importing it loads the library, whose static initialisers register
// the ops as torch.ops.sam3lt_C.<name>. It exposes build metadata as attributes (__torch_version__,
// __cuda_archs__) that sam3lt/_ext.py compares with the running torch and GPU.
#include <Python.h>

#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "ops.h"

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

// Runs a host function on the current CUDA stream of the call's device.
struct OnCudaStream {
  template <typename Fn>
  static at::Tensor run(Fn fn, const at::Tensor& first) {
    const c10::cuda::OptionalCUDAGuard guard(first.device());
    return fn(c10::cuda::getCurrentCUDAStream(first.device().index()).stream());
  }
};

}  // namespace
}  // namespace sam3lt

#define SAM3LT_DEF(NAME, SCHEMA) m.def(#NAME SCHEMA);
#define SAM3LT_CUDA(NAME, SCHEMA) m.impl(#NAME, &sam3lt::Bind<&sam3lt::host::NAME, sam3lt::OnCudaStream>::call);
#define SAM3LT_META(NAME, SCHEMA) m.impl(#NAME, &sam3lt::host::NAME##_meta);

TORCH_LIBRARY(sam3lt_C, m) { SAM3LT_OPS(SAM3LT_DEF) }
TORCH_LIBRARY_IMPL(sam3lt_C, CUDA, m) { SAM3LT_OPS(SAM3LT_CUDA) }
TORCH_LIBRARY_IMPL(sam3lt_C, Meta, m) { SAM3LT_OPS(SAM3LT_META) }

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
