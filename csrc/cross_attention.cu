// cross_attention: the flash-attention forward (flash_attention.cuh) for box_bias_attention (mode kBoxBias: the
// DETR decoder's separable box bias by[y] + bx[x], added in-kernel) and masked_attention (mode kGeneric:
// key-padding mask).
// With keys split across the grid (p.splits > 1, flash-decoding) a second kernel merges the splits.
// Host side: cross_attention.h.
#include "flash_attention.cuh"

namespace sam3lt {

// out[b, q, head·D + d] = Σ_s 2^(lse_s − M)·part_s / Σ_s 2^(lse_s − M), M = max_s lse_s; 0 without a valid key.
// One thread per output element.
template <typename T>
__global__ void __launch_bounds__(256) merge_splits_kernel(AttnParams p) {
  const int64_t rows = static_cast<int64_t>(p.B) * p.heads * p.Lq;
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * p.head_dim) return;
  const int d = static_cast<int>(idx % p.head_dim);
  const int64_t row = idx / p.head_dim;  // (b·heads + head)·Lq + q
  float top = -INFINITY;
  for (int s = 0; s < p.splits; ++s) top = fmaxf(top, p.lse[s * rows + row]);
  const float ref = top == -INFINITY ? 0.0f : top;
  float sum = 0.0f, acc = 0.0f;
  for (int s = 0; s < p.splits; ++s) {
    const float w = exp2f(p.lse[s * rows + row] - ref);
    sum += w;
    acc += w * p.part[(s * rows + row) * p.head_dim + d];
  }
  const int64_t q = row % p.Lq, bh = row / p.Lq;
  const int64_t b = bh / p.heads, head = bh % p.heads;
  T* dst = static_cast<T*>(p.out) + (b * p.Lq + q) * (static_cast<int64_t>(p.heads) * p.head_dim) + head * p.head_dim;
  dst[d] = from_float<T>(sum > 0.0f ? acc / sum : 0.0f);
}

cudaError_t launch_cross_attention(const AttnParams& p, cudaStream_t stream) {
  cudaError_t err = p.bias_y != nullptr ? launch_flash_attention<AttnMode::kBoxBias>(p, stream)
                                        : launch_flash_attention<AttnMode::kGeneric>(p, stream);
  if (err != cudaSuccess || p.splits <= 1) return err;
  const int64_t total = static_cast<int64_t>(p.B) * p.heads * p.Lq * p.head_dim;
  const unsigned int blocks = static_cast<unsigned int>((total + 255) / 256);
  return SAM3LT_DTYPE_SWITCH(p.dtype, T, [&] {
    auto kernel = &merge_splits_kernel<T>;
    SAM3LT_LAUNCH(kernel, dim3(blocks), dim3(256), 0, stream, p);
    return cudaGetLastError();
  });
}

}  // namespace sam3lt
