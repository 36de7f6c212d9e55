// cross_attention: the flash-attention forward (flash_attention.cuh) in generic mode, for box_bias_attention
// (the DETR decoder's separable box bias by[y] + bx[x], added in-kernel) and masked_attention (key-padding mask).
// Host side: cross_attention.h.
#include "flash_attention.cuh"

namespace sam3lt {

cudaError_t launch_cross_attention(const AttnParams& p, cudaStream_t stream) {
  return launch_flash_attention<AttnMode::kGeneric>(p, stream);
}

}  // namespace sam3lt
