// Host side of upsample.cu: upsample_nearest_add and masks_to_binary (checks, parameters, launch, Meta).
#pragma once

#include "host.h"

namespace sam3lt {
namespace host {

inline at::Tensor upsample_nearest_add(cudaStream_t stream, const at::Tensor& x, const at::Tensor& skip) {
  const char* op = "sam3lt_C::upsample_nearest_add";
  TORCH_CHECK(x.dim() == 4 && skip.dim() == 4 && x.size(0) == skip.size(0) && x.size(1) == skip.size(1), op,
              ": expects x (B, C, h, w) and skip (B, C, H, W)");
  check_device(op, x, {&skip});
  TORCH_CHECK(x.scalar_type() == skip.scalar_type(), op, ": x and skip dtypes differ");
  UpsampleParams p{};
  p.dtype = dtype_code(op, x.scalar_type());
  at::Tensor out = alloc(skip.sizes(), skip.options());
  if (out.numel() == 0) return out;
  TORCH_CHECK(x.size(2) > 0 && x.size(3) > 0, op, ": empty input grid");
  for (int i = 2; i < 4; ++i) {
    check_int(op, x.size(i), "input size");
    check_int(op, skip.size(i), "output size");
  }
  p.x = x.data_ptr();
  p.skip = skip.data_ptr();
  for (int i = 0; i < 4; ++i) {
    p.s_x[i] = x.stride(i);
    p.s_skip[i] = skip.stride(i);
  }
  p.out = out.data_ptr();
  p.B = skip.size(0); p.C = skip.size(1);
  p.h = static_cast<int>(x.size(2)); p.w = static_cast<int>(x.size(3));
  p.H = static_cast<int>(skip.size(2)); p.W = static_cast<int>(skip.size(3));
  p.scale_h = static_cast<float>(p.h) / static_cast<float>(p.H);  // torch: (float)in / out
  p.scale_w = static_cast<float>(p.w) / static_cast<float>(p.W);
  check_launch(op, launch_upsample_nearest_add(p, stream));
  return out;
}

inline at::Tensor masks_to_binary(cudaStream_t stream, const at::Tensor& logits, at::IntArrayRef size, double threshold) {
  const char* op = "sam3lt_C::masks_to_binary";
  TORCH_CHECK(logits.dim() == 3 && size.size() == 2, op, ": expects mask_logits (N, h, w) and size (H, W)");
  check_device(op, logits, {});
  TORCH_CHECK(size[0] >= 0 && size[1] >= 0, op, ": negative output size");
  BinaryParams p{};
  p.dtype = dtype_code(op, logits.scalar_type());
  at::Tensor out = alloc({logits.size(0), size[0], size[1]}, logits.options().dtype(at::kBool));
  if (out.numel() == 0) return out;
  TORCH_CHECK(logits.size(1) > 0 && logits.size(2) > 0, op, ": empty input masks");
  for (int i = 1; i < 3; ++i) check_int(op, logits.size(i), "input size");
  check_int(op, size[0], "output height");
  check_int(op, size[1], "output width");
  p.x = logits.data_ptr();
  for (int i = 0; i < 3; ++i) p.s_x[i] = logits.stride(i);
  p.out = out.data_ptr();
  p.N = logits.size(0);
  p.h = static_cast<int>(logits.size(1)); p.w = static_cast<int>(logits.size(2));
  p.H = static_cast<int>(size[0]); p.W = static_cast<int>(size[1]);
  p.scale_h = static_cast<float>(p.h) / static_cast<float>(p.H);
  p.scale_w = static_cast<float>(p.w) / static_cast<float>(p.W);
  // the reference compares a tensor of the input dtype with a Python float: the scalar becomes that dtype
  const float thr = static_cast<float>(threshold);
  p.threshold = p.dtype == DType::kFloat16    ? static_cast<float>(c10::Half(thr))
                : p.dtype == DType::kBFloat16 ? static_cast<float>(c10::BFloat16(thr))
                                              : thr;
  check_launch(op, launch_masks_to_binary(p, stream));
  return out;
}

inline at::Tensor upsample_nearest_add_meta(const at::Tensor& x, const at::Tensor& skip) {
  TORCH_CHECK(x.dim() == 4 && skip.dim() == 4, "sam3lt_C::upsample_nearest_add: expects x (B, C, h, w) and skip (B, C, H, W)");
  return at::empty_symint(skip.sym_sizes(), skip.options());
}

inline at::Tensor masks_to_binary_meta(const at::Tensor& mask_logits, at::IntArrayRef size, double threshold) {
  TORCH_CHECK(mask_logits.dim() == 3 && size.size() == 2, "sam3lt_C::masks_to_binary: expects mask_logits (N, h, w) and size (H, W)");
  return at::empty_symint({mask_logits.sym_size(0), c10::SymInt(size[0]), c10::SymInt(size[1])},
                          mask_logits.options().dtype(at::kBool));
}

}  // namespace host
}  // namespace sam3lt
