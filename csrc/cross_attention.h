// Host side of cross_attention.cu: box_bias_attention and masked_attention (checks, parameters, launch, Meta).
#pragma once

#include <algorithm>
#include <optional>

#include "host.h"

namespace sam3lt {
namespace host {

inline void check_qkv(const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.dim() == 4, op, ": expects q, k, v of shape (B, heads, L, D)");
  TORCH_CHECK(k.sizes() == v.sizes() && q.size(0) == k.size(0) && q.size(1) == k.size(1) && q.size(3) == k.size(3),
              op, ": q ", q.sizes(), ", k ", k.sizes(), ", v ", v.sizes(), " do not match");
  TORCH_CHECK(q.scalar_type() == k.scalar_type() && q.scalar_type() == v.scalar_type(), op, ": q, k, v dtypes differ");
  check_device(op, q, {&k, &v});
  check_head_dim(op, q.size(3));
}

// Keys split across the grid when B·heads·⌈Lq/64⌉ CTAs would leave SMs idle (one prompt: 8 heads × 4 query
// blocks = 32 CTAs on 132 SMs): about two CTAs per SM, each split keeping at least 8 key tiles. The fp32 partial
// outputs are allocated here and merged by launch_cross_attention.
inline void plan_splits(AttnParams& p, const at::Tensor& q, std::optional<at::Tensor>& part, std::optional<at::Tensor>& lse) {
  p.splits = 1;
  p.split_keys = p.Lk;
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return;
  const int64_t ctas = static_cast<int64_t>(p.B) * p.heads * ((p.Lq + 63) / 64);
  const int64_t tiles = (static_cast<int64_t>(p.Lk) + 63) / 64;
  const int64_t want = std::min<int64_t>({(2 * sms + ctas - 1) / ctas, tiles / 8, 16});
  if (want <= 1) return;
  const int64_t per_split = (tiles + want - 1) / want;
  p.split_keys = static_cast<int>(per_split * 64);
  p.splits = static_cast<int>((tiles + per_split - 1) / per_split);
  if (p.splits <= 1) return;
  const int64_t rows = static_cast<int64_t>(p.B) * p.heads * p.Lq;
  part = at::empty({p.splits, rows, p.head_dim}, q.options().dtype(at::kFloat));
  lse = at::empty({p.splits, rows}, q.options().dtype(at::kFloat));
  p.part = part->data_ptr<float>();
  p.lse = lse->data_ptr<float>();
}

inline void fill_generic(AttnParams& p, const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& out) {
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

inline at::Tensor box_bias_attention(cudaStream_t stream, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                     const at::Tensor& bias_y, const at::Tensor& bias_x) {
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
  // read in their stored dtype by the kernel: no per-call conversion (the decoder calls this in all six layers)
  p.bias_y = bias_y.data_ptr();
  p.bias_x = bias_x.data_ptr();
  for (int i = 0; i < 4; ++i) {
    p.s_by[i] = bias_y.stride(i);
    p.s_bx[i] = bias_x.stride(i);
  }
  p.Wg = static_cast<int>(bias_x.size(3));
  p.bias_dtype = bias_dtype;
  std::optional<at::Tensor> part, lse;  // alive until the launches are queued (stream-ordered allocator)
  plan_splits(p, q, part, lse);
  check_launch(op, launch_cross_attention(p, stream));
  return out;
}

inline at::Tensor masked_attention(cudaStream_t stream, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                   const std::optional<at::Tensor>& key_padding_mask) {
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
  std::optional<at::Tensor> part, lse;  // alive until the launches are queued (stream-ordered allocator)
  plan_splits(p, q, part, lse);
  check_launch(op, launch_cross_attention(p, stream));
  return out;
}

inline at::Tensor attention_out_meta(const char* op, const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 4, op, ": expects q (B, heads, Lq, D)");
  return at::empty_symint({q.sym_size(0), q.sym_size(2), q.sym_size(1) * q.sym_size(3)}, q.options());
}

inline at::Tensor box_bias_attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                          const at::Tensor& bias_y, const at::Tensor& bias_x) {
  return attention_out_meta("sam3lt_C::box_bias_attention", q);
}

inline at::Tensor masked_attention_meta(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                        const std::optional<at::Tensor>& key_padding_mask) {
  return attention_out_meta("sam3lt_C::masked_attention", q);
}

}  // namespace host
}  // namespace sam3lt
