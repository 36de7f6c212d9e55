// RepMixer depthwise 1xK token convolution + bias (+ residual), channels last.
//
// One thread per output element (b, l, c), c fastest, so a warp reads 32 consecutive channels of a token (one
// coalesced transaction when x has unit channel stride); the K shifted rows a thread reads are shared with its
// neighbours along l through L1. fp32 accumulation, one rounding at the store. K is a template parameter for
// the unrolled widths of SAM3LT_TAPS_SWITCH (the model uses 11, and 3/7 in the conv FFN); other odd K run the
// same code with the runtime width (CONST_K = 0).
#include "common.h"
#include "static_switch.h"

namespace sam3lt {

constexpr int kRepmixerThreads = 256;

template <typename T, int CONST_K>
__global__ void __launch_bounds__(kRepmixerThreads) repmixer_dwconv_kernel(RepmixerParams p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kRepmixerThreads + threadIdx.x;
  const int64_t total = p.B * p.L * p.C;
  if (idx >= total) return;
  const int c = static_cast<int>(idx % p.C);
  const int64_t row = idx / p.C;
  const int l = static_cast<int>(row % p.L);
  const int64_t b = row / p.L;
  const int taps = CONST_K > 0 ? CONST_K : p.K;
  const int half = taps / 2;

  const T* x = static_cast<const T*>(p.x) + b * p.s_xb + c * p.s_xc;
  const T* w = static_cast<const T*>(p.weight) + c * p.s_wc;
  float acc = to_float(static_cast<const T*>(p.bias)[c * p.s_bias]);
#pragma unroll
  for (int k = 0; k < taps; ++k) {
    const int src = l + k - half;
    if (src >= 0 && src < p.L) acc += to_float(x[src * p.s_xl]) * to_float(w[k * p.s_wk]);
  }
  if (p.residual) acc += to_float(x[l * p.s_xl]);
  static_cast<T*>(p.out)[idx] = from_float<T>(acc);
}

cudaError_t launch_repmixer_dwconv(const RepmixerParams& p, cudaStream_t stream) {
  const int64_t total = p.B * p.L * p.C;
  if (total == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(ceil_div(total, kRepmixerThreads)));
  SAM3LT_DTYPE_SWITCH(p.dtype, T, [&] {
    SAM3LT_TAPS_SWITCH(p.K, CONST_K, [&] {
      auto kernel = &repmixer_dwconv_kernel<T, CONST_K>;
      SAM3LT_LAUNCH(kernel, grid, dim3(kRepmixerThreads), 0, stream, p);
    });
  });
  return cudaGetLastError();
}

}  // namespace sam3lt
