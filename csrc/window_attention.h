// Host side of window_attention.cu: checks, parameters and launch of window_attention; its Meta function.
#pragma once

#include "host.h"

namespace sam3lt {
namespace host {

inline at::Tensor window_attention(cudaStream_t stream, const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                                   int64_t num_heads, int64_t window_size, const std::optional<at::Tensor>& pad_value) {
  const char* op = "sam3lt_C::window_attention";
  TORCH_CHECK(qkv.dim() == 4 && cos.dim() == 2 && sin.dim() == 2, op, ": expects qkv (B, H, W, 3C) and cos/sin (T, D)");
  check_device(op, qkv, {&cos, &sin});
  const int64_t B = qkv.size(0), H = qkv.size(1), W = qkv.size(2), three_c = qkv.size(3);
  TORCH_CHECK(num_heads > 0 && three_c % (3 * num_heads) == 0, op, ": qkv channels ", three_c,
              " are not 3 x num_heads x head_dim");
  const int64_t C = three_c / 3, D = C / num_heads;
  check_head_dim(op, D);
  TORCH_CHECK(window_size >= 0, op, ": negative window size");
  const int64_t win_h = window_size > 0 ? window_size : H, win_w = window_size > 0 ? window_size : W;
  const int64_t T = win_h * win_w;
  TORCH_CHECK(cos.size(0) == T && cos.size(1) == D && sin.size(0) == T && sin.size(1) == D, op,
              ": cos/sin must be (", T, ", ", D, ") for this window");
  AttnParams p{};
  p.dtype = dtype_code(op, qkv.scalar_type());
  at::Tensor out = alloc({B, H, W, C}, qkv.options());
  if (out.numel() == 0) return out;
  check_int(op, T, "tokens per window");
  check_int(op, B * num_heads, "batch x heads");
  check_int(op, three_c, "channels");
  check_int(op, H, "H");
  check_int(op, W, "W");
  const at::Tensor cosf = cos.to(at::kFloat), sinf = sin.to(at::kFloat);
  const bool padded = window_size > 0 && (H % window_size != 0 || W % window_size != 0);
  at::Tensor pad;
  if (padded && pad_value.has_value()) {
    TORCH_CHECK(pad_value->dim() == 1 && pad_value->size(0) == three_c, op, ": pad_value must be (", three_c, ",)");
    check_device(op, qkv, {&*pad_value});
    pad = pad_value->to(qkv.scalar_type());
  }
  p.head_dim = static_cast<int>(D);
  p.B = static_cast<int>(B);
  p.heads = static_cast<int>(num_heads);
  p.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(D)));
  p.out = out.data_ptr();
  p.qkv = qkv.data_ptr();
  for (int i = 0; i < 4; ++i) p.s_qkv[i] = qkv.stride(i);
  p.cos = cosf.data_ptr<float>();
  p.sin = sinf.data_ptr<float>();
  for (int i = 0; i < 2; ++i) {
    p.s_cos[i] = cosf.stride(i);
    p.s_sin[i] = sinf.stride(i);
  }
  p.pad = pad.defined() ? pad.data_ptr() : nullptr;
  p.s_pad = pad.defined() ? pad.stride(0) : 0;
  p.H = static_cast<int>(H); p.W = static_cast<int>(W); p.C = static_cast<int>(C);
  p.win_h = static_cast<int>(win_h); p.win_w = static_cast<int>(win_w);
  p.n_win_w = static_cast<int>((W + win_w - 1) / win_w);
  p.n_win = static_cast<int>((H + win_h - 1) / win_h) * p.n_win_w;
  p.T = static_cast<int>(T);
  p.vec_qkv = vec_ok(qkv, 3);
  p.vec_pad = pad.defined() && vec_ok(pad, 0);
  p.vec_rope = vec_ok(cosf, 1) && vec_ok(sinf, 1);
  check_int(op, (B * H * W + T) * 2 * C / 8, "rotated q/k chunks");
  // the RoPE pass's outputs (scratch): rotated q/k of the grid, and of pad_value per window position
  const at::Tensor qk = at::empty({B, H, W, 2 * C}, qkv.options());
  const at::Tensor qk_pad = pad.defined() ? at::empty({T, 2 * C}, qkv.options()) : at::Tensor();
  p.qk = qk.data_ptr();
  p.qk_pad = qk_pad.defined() ? qk_pad.data_ptr() : nullptr;
  check_launch(op, launch_window_attention(p, stream));
  return out;
}

inline at::Tensor window_attention_meta(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin, int64_t num_heads,
                                        int64_t window_size, const std::optional<at::Tensor>& pad_value) {
  TORCH_CHECK(qkv.dim() == 4, "sam3lt_C::window_attention: expects qkv (B, H, W, 3C)");
  return at::empty_symint({qkv.sym_size(0), qkv.sym_size(1), qkv.sym_size(2), qkv.sym_size(3) / 3}, qkv.options());
}

}  // namespace host
}  // namespace sam3lt
