// Plain parameter structs shared by the host code (ops.cpp / host.h, compiled by the C++ compiler) and the
// kernels (*.cu, compiled by nvcc). No torch and no CUDA device headers here: the .cu files stay cheap to
// compile and the host code never sees device code.
#pragma once

#include <cstdint>

#ifdef SAM3LT_EMULATE
#include "emu/cuda_emu.h"
#else
#include <cuda_runtime_api.h>  // cudaStream_t, cudaError_t
#endif

namespace sam3lt {

// Element type of the floating tensors of one call (all of them share it, except cos/sin/bias tables: fp32).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Depthwise 1xK token convolution: out[b, l, c] = [x[b, l, c] +] bias[c] + sum_k x[b, l + k - K/2, c] w[c, k].
struct RepmixerParams {
  DType dtype;
  const void* x;       // (B, L, C), strides in elements
  int64_t s_xb, s_xl, s_xc;
  const void* weight;  // (C, K)
  int64_t s_wc, s_wk;
  const void* bias;    // (C,)
  int64_t s_bias;
  void* out;           // (B, L, C) contiguous
  int64_t B;
  int L, C, K;
  bool residual;
};

// out = nearest_upsample(x, (H, W)) + skip, NCHW. Source index: min(floor(dst * scale), in - 1) with
// scale = float(in) / float(out), exactly torch's "nearest".
struct UpsampleParams {
  DType dtype;
  const void* x;     // (B, C, h, w)
  int64_t s_x[4];
  const void* skip;  // (B, C, H, W)
  int64_t s_skip[4];
  void* out;         // (B, C, H, W) contiguous
  int64_t B, C;
  int h, w, H, W;
  float scale_h, scale_w;
};

// out = bilinear(sigmoid(logits), (H, W), align_corners=False) > threshold, as bool.
struct BinaryParams {
  DType dtype;
  const void* x;  // (N, h, w)
  int64_t s_x[3];
  void* out;      // (N, H, W) bool contiguous
  int64_t N;
  int h, w, H, W;
  float scale_h, scale_w;
  float threshold;  // already rounded to the input dtype
};

// Flash-attention forward (flash_attention.cuh) shared by the attention families; the mode is a template
// parameter of the kernel, chosen by the launcher:
//   mode kWindow : window_attention, v read from the fused (B, H, W, 3C) grid by index arithmetic, q and k from
//                  the RoPE pass's rotated copies (p.qk; p.qk_pad for padded tokens, which take pad_value or
//                  zeros); out (B, H, W, C) contiguous.
//   mode kGeneric: masked_attention, q (B, heads, Lq, D), k/v (B, heads, Lk, D) with any strides, optional
//                  key-padding mask; out (B, Lq, heads*D) contiguous.
//   mode kBoxBias: box_bias_attention, as kGeneric with the separable bias and no mask (its own instantiation:
//                  the bias costs registers the masked calls would otherwise carry).
enum class AttnMode : int { kWindow = 0, kGeneric = 1, kBoxBias = 2 };

struct AttnParams {
  DType dtype;
  int head_dim;  // D (a multiple of 8, <= 128); the kernel runs at the next instantiated width, zero-padded
  int B, heads;
  float scale_log2;  // log2(e) / sqrt(D)
  void* out;

  // kGeneric, kBoxBias
  const void* q; int64_t s_q[4];  // (b, head, l, d)
  const void* k; int64_t s_k[4];
  const void* v; int64_t s_v[4];
  int Lq, Lk;
  const void* bias_y; int64_t s_by[4];  // (B, heads, Lq, Hg) in bias_dtype, or null
  const void* bias_x; int64_t s_bx[4];  // (B, heads, Lq, Wg) in bias_dtype
  int Wg;
  DType bias_dtype;                      // dtype of the bias tables given: by + bx is rounded to it, then to the
                                         // input dtype (the reference sums in the bias dtype, then casts to q's)
  const uint8_t* mask; int64_t s_mb, s_mn;  // (B, Lk) 0/1, or null
  // keys split across grid.y (flash-decoding, when the grid would leave SMs idle): split s attends to keys
  // [s·split_keys, (s+1)·split_keys) and writes its normalised output to part (splits, B·heads, Lq, head_dim)
  // and its log2-sum-exp2 to lse (splits, B·heads, Lq), fp32; launch_cross_attention merges them into out.
  int splits, split_keys;
  float* part; float* lse;

  // kWindow
  const void* qkv; int64_t s_qkv[4];  // (b, y, x, channel)
  const float* cos; int64_t s_cos[2];  // (T, D) fp32
  const float* sin; int64_t s_sin[2];
  const void* pad; int64_t s_pad;     // (3C,) in the input dtype, or null (zeros)
  // written by launch_window_attention's RoPE pass, read by the attention instead of q/k of qkv / pad:
  void* qk;      // (B, H, W, 2C) contiguous: q and k of the grid's tokens, rotated once
  void* qk_pad;  // (T, 2C) contiguous: q and k of pad_value rotated for each window position, or null (no pad)
  int H, W, C, win_h, win_w, n_win_w, n_win, T;

  // 16-byte vector loads allowed (unit stride along d, 16-byte aligned rows): set by the host
  bool vec_q, vec_k, vec_v, vec_qkv, vec_pad, vec_rope;
};

// Kernel launchers (csrc/*.cu). They launch on `stream` and return the launch status.
cudaError_t launch_repmixer_dwconv(const RepmixerParams& p, cudaStream_t stream);
cudaError_t launch_upsample_nearest_add(const UpsampleParams& p, cudaStream_t stream);
cudaError_t launch_masks_to_binary(const BinaryParams& p, cudaStream_t stream);
cudaError_t launch_window_attention(const AttnParams& p, cudaStream_t stream);  // mode kWindow
cudaError_t launch_cross_attention(const AttnParams& p, cudaStream_t stream);   // kBoxBias with a bias, else kGeneric

// The padded head width the attention kernel runs for head dim d (16, 32, 64, 128), or 0 when unsupported.
inline int attention_kernel_head_dim(int d) {
  if (d <= 0 || d % 8 != 0 || d > 128) return 0;
  return d <= 16 ? 16 : d <= 32 ? 32 : d <= 64 ? 64 : 128;
}

}  // namespace sam3lt
