// Mask-path element-wise kernels: nearest upsample + skip add, and sigmoid -> bilinear -> threshold to bool.
//
// One thread per output pixel, x fastest (coalesced stores; gathers from the small source grid hit L1/L2).
// Index maths copies torch's CUDA kernels (scales are float(in) / float(out), computed on the host):
//   nearest:  src = min(int(floorf(dst * scale)), in - 1)
//   bilinear (align_corners=False): src = max(scale * (dst + 0.5) - 0.5, 0), i0 = int(src),
//             i1 = i0 + (i0 < in - 1), l1 = src - i0, l0 = 1 - l1,
//             val = ly0 * (lx0 * p00 + lx1 * p01) + ly1 * (lx0 * p10 + lx1 * p11)   (fp32)
// masks_to_binary follows the reference's roundings: sigmoid in fp32 rounded to the input dtype, the
// interpolated value rounded to the input dtype, compared with the threshold rounded to the input dtype.
#include "common.h"
#include "static_switch.h"

namespace sam3lt {

constexpr int kUpsampleThreads = 256;

template <typename T>
__global__ void __launch_bounds__(kUpsampleThreads) upsample_nearest_add_kernel(UpsampleParams p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kUpsampleThreads + threadIdx.x;
  const int64_t total = p.B * p.C * p.H * p.W;
  if (idx >= total) return;
  const int ox = static_cast<int>(idx % p.W);
  const int oy = static_cast<int>((idx / p.W) % p.H);
  const int64_t plane = idx / (static_cast<int64_t>(p.W) * p.H);
  const int64_t c = plane % p.C;
  const int64_t b = plane / p.C;
  int sy = static_cast<int>(floorf(static_cast<float>(oy) * p.scale_h));
  int sx = static_cast<int>(floorf(static_cast<float>(ox) * p.scale_w));
  sy = sy < p.h - 1 ? sy : p.h - 1;
  sx = sx < p.w - 1 ? sx : p.w - 1;
  const T* x = static_cast<const T*>(p.x);
  const T* skip = static_cast<const T*>(p.skip);
  const float xv = to_float(x[b * p.s_x[0] + c * p.s_x[1] + sy * p.s_x[2] + sx * p.s_x[3]]);
  const float sv = to_float(skip[b * p.s_skip[0] + c * p.s_skip[1] + oy * p.s_skip[2] + ox * p.s_skip[3]]);
  static_cast<T*>(p.out)[idx] = from_float<T>(xv + sv);
}

template <typename T>
SAM3LT_DEVICE float sigmoid_as(T x) {
  return round_to<T>(1.0f / (1.0f + expf(-to_float(x))));
}

template <typename T>
__global__ void __launch_bounds__(kUpsampleThreads) masks_to_binary_kernel(BinaryParams p) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * kUpsampleThreads + threadIdx.x;
  const int64_t total = p.N * p.H * p.W;
  if (idx >= total) return;
  const int ox = static_cast<int>(idx % p.W);
  const int oy = static_cast<int>((idx / p.W) % p.H);
  const int64_t n = idx / (static_cast<int64_t>(p.W) * p.H);
  const float fy = fmaxf(p.scale_h * (static_cast<float>(oy) + 0.5f) - 0.5f, 0.0f);
  const float fx = fmaxf(p.scale_w * (static_cast<float>(ox) + 0.5f) - 0.5f, 0.0f);
  const int y0 = static_cast<int>(fy);  // fy >= 0: truncation is floor
  const int x0 = static_cast<int>(fx);
  const int y1 = y0 + (y0 < p.h - 1 ? 1 : 0);
  const int x1 = x0 + (x0 < p.w - 1 ? 1 : 0);
  const float ly1 = fy - static_cast<float>(y0), ly0 = 1.0f - ly1;
  const float lx1 = fx - static_cast<float>(x0), lx0 = 1.0f - lx1;
  const T* base = static_cast<const T*>(p.x) + n * p.s_x[0];
  const int64_t r0 = y0 * p.s_x[1], r1 = y1 * p.s_x[1], c0 = x0 * p.s_x[2], c1 = x1 * p.s_x[2];
  const float p00 = sigmoid_as(base[r0 + c0]), p01 = sigmoid_as(base[r0 + c1]);
  const float p10 = sigmoid_as(base[r1 + c0]), p11 = sigmoid_as(base[r1 + c1]);
  const float val = round_to<T>(ly0 * (lx0 * p00 + lx1 * p01) + ly1 * (lx0 * p10 + lx1 * p11));
  static_cast<bool*>(p.out)[idx] = val > p.threshold;
}

cudaError_t launch_upsample_nearest_add(const UpsampleParams& p, cudaStream_t stream) {
  const int64_t total = p.B * p.C * p.H * p.W;
  if (total == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(ceil_div(total, kUpsampleThreads)));
  SAM3LT_DTYPE_SWITCH(p.dtype, T, [&] {
    auto kernel = &upsample_nearest_add_kernel<T>;
    SAM3LT_LAUNCH(kernel, grid, dim3(kUpsampleThreads), 0, stream, p);
  });
  return cudaGetLastError();
}

cudaError_t launch_masks_to_binary(const BinaryParams& p, cudaStream_t stream) {
  const int64_t total = p.N * p.H * p.W;
  if (total == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned int>(ceil_div(total, kUpsampleThreads)));
  SAM3LT_DTYPE_SWITCH(p.dtype, T, [&] {
    auto kernel = &masks_to_binary_kernel<T>;
    SAM3LT_LAUNCH(kernel, grid, dim3(kUpsampleThreads), 0, stream, p);
  });
  return cudaGetLastError();
}

}  // namespace sam3lt
