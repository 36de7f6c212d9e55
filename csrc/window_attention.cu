// window_attention: a RoPE pass, then the flash-attention forward (flash_attention.cuh) in window mode.
// The RoPE pass rotates q and k of every grid token once into a (B, H, W, 2C) buffer, and pad_value's q and k
// once per window position into a (T, 2C) table (before, every query block rotated its window's keys again:
// 9 times per key for 576-token windows). The attention reads q/k from them and v from the fused (B, H, W, 3C)
// grid by index arithmetic. Global attention is one window covering the grid. Host side: window_attention.h.
#include "flash_attention.cuh"

namespace sam3lt {

constexpr int kRopeThreads = 256;

// RoPE's rotate_pairwise on 8 channels: (x0, x1) -> (x0 c0 - x1 s0, x1 c1 + x0 s1), in fp32.
SAM3LT_DEVICE void rotate8(float (&v)[8], const float (&c)[8], const float (&s)[8]) {
#pragma unroll
  for (int i = 0; i < 8; i += 2) {
    const float x0 = v[i], x1 = v[i + 1];
    v[i] = x0 * c[i] - x1 * s[i];
    v[i + 1] = x1 * c[i + 1] + x0 * s[i + 1];
  }
}

// One thread per 8 channels of q or k: threads [0, B H W 2C / 8) rotate the grid's tokens into p.qk, with the
// window position (y mod win_h) win_w + (x mod win_w) indexing cos/sin; the next T 2C / 8 (when p.qk_pad is set)
// rotate pad_value for each window position into p.qk_pad. In fp32 from the input values, rounded to T.
template <typename T>
__global__ void __launch_bounds__(kRopeThreads) rope_qk_kernel(AttnParams p, int64_t grid_chunks) {
  const int chunks = 2 * p.C / 8;
  int64_t idx = static_cast<int64_t>(blockIdx.x) * kRopeThreads + threadIdx.x;
  const int ch = static_cast<int>(idx % chunks) * 8;
  const int d0 = (ch % p.C) % p.head_dim;
  const T* src;
  int64_t stride;
  bool vec;
  T* dst;
  int row;
  if (idx < grid_chunks) {
    const int64_t token = idx / chunks;
    const int x = static_cast<int>(token % p.W);
    const int y = static_cast<int>((token / p.W) % p.H);
    const int64_t b = token / (static_cast<int64_t>(p.W) * p.H);
    row = (y % p.win_h) * p.win_w + x % p.win_w;
    src = static_cast<const T*>(p.qkv) + b * p.s_qkv[0] + y * p.s_qkv[1] + x * p.s_qkv[2] + ch * p.s_qkv[3];
    stride = p.s_qkv[3];
    vec = p.vec_qkv;
    dst = static_cast<T*>(p.qk) + token * 2 * p.C + ch;
  } else {
    idx -= grid_chunks;
    row = static_cast<int>(idx / chunks);
    if (p.qk_pad == nullptr || row >= p.T) return;
    src = static_cast<const T*>(p.pad) + ch * p.s_pad;
    stride = p.s_pad;
    vec = p.vec_pad;
    dst = static_cast<T*>(p.qk_pad) + static_cast<int64_t>(row) * 2 * p.C + ch;
  }
  float v[8], c[8], s[8];
  load8(src, stride, vec, v);
  load8(p.cos + row * p.s_cos[0] + d0 * p.s_cos[1], p.s_cos[1], p.vec_rope, c);
  load8(p.sin + row * p.s_sin[0] + d0 * p.s_sin[1], p.s_sin[1], p.vec_rope, s);
  rotate8(v, c, s);
  store8(dst, v);
}

cudaError_t launch_window_attention(const AttnParams& p, cudaStream_t stream) {
  const int64_t chunks = 2 * p.C / 8;
  const int64_t grid_chunks = static_cast<int64_t>(p.B) * p.H * p.W * chunks;
  const int64_t threads = grid_chunks + (p.qk_pad != nullptr ? p.T * chunks : 0);
  if (threads > 0) {
    const unsigned int blocks = static_cast<unsigned int>(ceil_div(threads, kRopeThreads));
    const cudaError_t err = SAM3LT_DTYPE_SWITCH(p.dtype, T, [&] {
      auto kernel = &rope_qk_kernel<T>;
      SAM3LT_LAUNCH(kernel, dim3(blocks), dim3(kRopeThreads), 0, stream, p, grid_chunks);
      return cudaGetLastError();
    });
    if (err != cudaSuccess) return err;
  }
  return launch_flash_attention<AttnMode::kWindow>(p, stream);
}

}  // namespace sam3lt
