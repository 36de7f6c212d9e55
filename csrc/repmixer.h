// Host side of repmixer.cu: repmixer_dwconv's checks, parameters and launch; its Meta (shape) function.
#pragma once

#include "host.h"

namespace sam3lt {
namespace host {

inline at::Tensor repmixer_dwconv(cudaStream_t stream, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                  bool residual) {
  const char* op = "sam3lt_C::repmixer_dwconv";
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && bias.dim() == 1, op, ": expects x (B, L, C), weight (C, K), bias (C,)");
  check_device(op, x, {&weight, &bias});
  const int64_t C = x.size(2), K = weight.size(1);
  TORCH_CHECK(weight.size(0) == C && bias.size(0) == C, op, ": x, weight and bias disagree on the channel count");
  TORCH_CHECK(K % 2 == 1, op, ": the kernel size must be odd (got ", K, ")");
  TORCH_CHECK(weight.scalar_type() == x.scalar_type() && bias.scalar_type() == x.scalar_type(), op,
              ": x, weight and bias must share a dtype");
  RepmixerParams p{};
  p.dtype = dtype_code(op, x.scalar_type());
  check_int(op, x.size(1), "L");
  check_int(op, C, "C");
  at::Tensor out = alloc({x.size(0), x.size(1), C}, x.options());
  if (out.numel() == 0) return out;
  p.x = x.data_ptr(); p.s_xb = x.stride(0); p.s_xl = x.stride(1); p.s_xc = x.stride(2);
  p.weight = weight.data_ptr(); p.s_wc = weight.stride(0); p.s_wk = weight.stride(1);
  p.bias = bias.data_ptr(); p.s_bias = bias.stride(0);
  p.out = out.data_ptr();
  p.B = x.size(0); p.L = static_cast<int>(x.size(1)); p.C = static_cast<int>(C); p.K = static_cast<int>(K);
  p.residual = residual;
  check_launch(op, launch_repmixer_dwconv(p, stream));
  return out;
}

// Meta: output shape and dtype only (fake tensors, torch.compile, meta-device tracing).
inline at::Tensor repmixer_dwconv_meta(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool residual) {
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && bias.dim() == 1, "sam3lt_C::repmixer_dwconv: expects x (B, L, C), weight (C, K), bias (C,)");
  return at::empty_symint(x.sym_sizes(), x.options());
}

}  // namespace host
}  // namespace sam3lt
