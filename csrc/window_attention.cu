// window_attention: the flash-attention forward (flash_attention.cuh) in window mode: q/k/v read from the fused
// (B, H, W, 3C) QKV grid by index arithmetic, RoPE applied to q and k in-kernel, padded tokens filled with
// pad_value. Global attention is one window covering the grid. Host side: window_attention.h.
#include "flash_attention.cuh"

namespace sam3lt {

cudaError_t launch_window_attention(const AttnParams& p, cudaStream_t stream) {
  return launch_flash_attention<AttnMode::kWindow>(p, stream);
}

}  // namespace sam3lt
