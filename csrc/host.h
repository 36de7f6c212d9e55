// Host side of the ops: argument checks, output allocation, kernel parameters, launch.
//
// Shared by the extension (ops.cpp: CUDA tensors, the current CUDA stream) and by the CPU emulation build used
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

// ------------------------------------------------------------------ repmixer_dwconv

inline at::Tensor repmixer_dwconv(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                                  bool residual, cudaStream_t stream) {
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

// ------------------------------------------------------------------ upsample_nearest_add / masks_to_binary

inline at::Tensor upsample_nearest_add(const at::Tensor& x, const at::Tensor& skip, cudaStream_t stream) {
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

inline at::Tensor masks_to_binary(const at::Tensor& logits, at::IntArrayRef size, double threshold, cudaStream_t stream) {
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

// ------------------------------------------------------------------ attention

inline void check_head_dim(const char* op, int64_t d) {
  TORCH_CHECK(d > 0 && d <= 128 && d % 8 == 0 && attention_kernel_head_dim(static_cast<int>(d)) != 0, op,
              ": head dim ", d, " is not supported (multiples of 8 up to 128)");
}

inline at::Tensor window_attention(const at::Tensor& qkv, const at::Tensor& cos, const at::Tensor& sin,
                                   int64_t num_heads, int64_t window_size, const std::optional<at::Tensor>& pad_value,
                                   cudaStream_t stream) {
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
  p.mode = AttnMode::kWindow;
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
  check_launch(op, launch_attention(p, stream));
  return out;
}

inline void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": expects q, k, v of shape (B, heads, L, D)");
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              op, ": q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(), " do not match");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), op, ": q, k, v dtypes differ");
  check_device(op, q, {&k, &v});
  check_head_dim(op, q.size(3));
}

inline void fill_generic(AttnParams& p, const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& out) {
  p.mode = AttnMode::kGeneric;
  p.dtype = dtype_code(op, q.scalar_type());
  check_int(op, q.size(2), "Lq");
  check_int(op, k.size(2), "Lk");
  check_int(op, q.size(0) * q.size(1), "batch x heads");
  p.head_dim = static_cast<int>(q.size(3));
  p.B = static_cast<int>(q.size(0));
  p.heads = static_cast<int>(q.size(1));
  p.Lq = static_cast<int>(q.size(2));
  p.Lk = static_cast<int>(k.size(2));
  p.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(p.head_dim)));
  p.out = out.data_ptr();
  p.q = q.data_ptr(); p.k = k.data_ptr(); p.v = v.data_ptr();
  for (int i = 0; i < 4; ++i) {
    p.s_q[i] = q.stride(i);
    p.s_k[i] = k.stride(i);
    p.s_v[i] = v.stride(i);
  }
  p.vec_q = vec_ok(q, 3);
  p.vec_k = vec_ok(k, 3);
  p.vec_v = vec_ok(v, 3);
}

inline at::Tensor box_bias_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& bias_y, const at::Tensor& bias_x, cudaStream_t stream) {
  const char* op = "sam3lt_C::box_bias_attention";
  check_qkv(op, q, k, v);
  TORCH_CHECK(bias_y.dim() == 4 && bias_x.dim() == 4, op, ": expects bias_y (B, heads, Lq, Hg) and bias_x (B, heads, Lq, Wg)");
  check_device(op, q, {&bias_y, &bias_x});
  for (int i = 0; i < 3; ++i)
    TORCH_CHECK(bias_y.size(i) == q.size(i) && bias_x.size(i) == q.size(i), op, ": bias_y / bias_x leading dims must be (B, heads, Lq)");
  TORCH_CHECK(bias_y.size(3) * bias_x.size(3) == k.size(2), op, ": keys (", k.size(2), ") != Hg * Wg (", bias_y.size(3),
              " * ", bias_x.size(3), ")");
  TORCH_CHECK(bias_y.scalar_type() == bias_x.scalar_type(), op, ": bias_y and bias_x dtypes differ");
  const DType bias_dtype = dtype_code(op, bias_y.scalar_type());
  at::Tensor out = alloc({q.size(0), q.size(2), q.size(1) * q.size(3)}, q.options());
  if (out.numel() == 0) return out;
  if (k.size(2) == 0) return out.zero_();
  AttnParams p{};
  fill_generic(p, op, q, k, v, out);
  const at::Tensor by = bias_y.to(at::kFloat), bx = bias_x.to(at::kFloat);
  p.bias_y = by.data_ptr<float>();
  p.bias_x = bx.data_ptr<float>();
  for (int i = 0; i < 4; ++i) {
    p.s_by[i] = by.stride(i);
    p.s_bx[i] = bx.stride(i);
  }
  p.Wg = static_cast<int>(bias_x.size(3));
  p.bias_dtype = bias_dtype;
  check_launch(op, launch_attention(p, stream));
  return out;
}

inline at::Tensor masked_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::optional<at::Tensor>& key_padding_mask, cudaStream_t stream) {
  const char* op = "sam3lt_C::masked_attention";
  check_qkv(op, q, k, v);
  at::Tensor mask;
  if (key_padding_mask.has_value()) {
    const at::Tensor& m = *key_padding_mask;
    TORCH_CHECK(m.dim() == 2 && m.size(0) == k.size(0) && m.size(1) == k.size(2), op, ": key_padding_mask must be (B, Lk) = (",
                k.size(0), ", ", k.size(2), ")");
    check_device(op, q, {&m});
    TORCH_CHECK(!m.is_complex(), op, ": unsupported key_padding_mask dtype ", m.scalar_type());
    mask = m.scalar_type() == at::kBool ? m : m.ne(0);
  }
  at::Tensor out = alloc({q.size(0), q.size(2), q.size(1) * q.size(3)}, q.options());
  if (out.numel() == 0) return out;
  if (k.size(2) == 0) return out.zero_();
  AttnParams p{};
  fill_generic(p, op, q, k, v, out);
  if (mask.defined()) {
    p.mask = reinterpret_cast<const uint8_t*>(mask.data_ptr());
    p.s_mb = mask.stride(0);
    p.s_mn = mask.stride(1);
  }
  check_launch(op, launch_attention(p, stream));
  return out;
}

}  // namespace host
}  // namespace sam3lt
