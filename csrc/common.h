// Device-side helpers shared by the kernels: element types and conversions, launch macro, fast exp2.
//
// Every kernel source also compiles as plain C++ with -DSAM3LT_EMULATE against csrc/emu/cuda_emu.h, a CPU
// emulation of the small CUDA subset used here (threads as fibers, __syncthreads/__syncwarp barriers, warp
// shuffles, ldmatrix / mma.sync / cp.async), so the kernels can be tested on machines without a GPU (tests/test_cuda_backend.py).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "params.h"

#ifndef SAM3LT_EMULATE
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace sam3lt {

#ifdef SAM3LT_EMULATE
using half_t = c10::Half;
using bf16_t = c10::BFloat16;
#define SAM3LT_DEVICE inline
#define SAM3LT_LAUNCH(KERNEL, GRID, BLOCK, SMEM, STREAM, ...) \
  ::sam3lt_emu::launch((GRID), (BLOCK), (SMEM), [&] { KERNEL(__VA_ARGS__); })
#else
using half_t = __half;
using bf16_t = __nv_bfloat16;
#define SAM3LT_DEVICE __device__ __forceinline__
// KERNEL must be a plain name (a pointer to a __global__ function is fine): no template commas in macros.
#define SAM3LT_LAUNCH(KERNEL, GRID, BLOCK, SMEM, STREAM, ...) KERNEL<<<(GRID), (BLOCK), (SMEM), (STREAM)>>>(__VA_ARGS__)
#endif

template <typename T>
struct is_16bit : std::integral_constant<bool, sizeof(T) == 2> {};

SAM3LT_DEVICE float to_float(float x) { return x; }
#ifdef SAM3LT_EMULATE
inline float to_float(c10::Half x) { return static_cast<float>(x); }
inline float to_float(c10::BFloat16 x) { return static_cast<float>(x); }
#else
SAM3LT_DEVICE float to_float(__half x) { return __half2float(x); }
SAM3LT_DEVICE float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
#endif

// Round to nearest even, as torch's casts.
template <typename T>
SAM3LT_DEVICE T from_float(float x);
template <>
SAM3LT_DEVICE float from_float<float>(float x) { return x; }
#ifdef SAM3LT_EMULATE
template <>
inline c10::Half from_float<c10::Half>(float x) { return c10::Half(x); }
template <>
inline c10::BFloat16 from_float<c10::BFloat16>(float x) { return c10::BFloat16(x); }
#else
template <>
SAM3LT_DEVICE __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
SAM3LT_DEVICE __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }
#endif

// x rounded to T and back (the reference's intermediate casts).
template <typename T>
SAM3LT_DEVICE float round_to(float x) { return to_float(from_float<T>(x)); }

// 2^x with the hardware approximation (as Triton's exp2 and flash-attention's softmax; rel. error ~2^-22).
// Used only for softmax weights; the build does not use --use_fast_math.
SAM3LT_DEVICE float fast_exp2(float x) {
#ifdef SAM3LT_EMULATE
  return std::exp2(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// Eight consecutive elements p[0], p[stride], ... p[7 * stride] as floats. With `vec` the caller guarantees
// stride == 1 and a 16-byte aligned p: one 16-byte load (two for fp32).
template <typename T>
SAM3LT_DEVICE void load8(const T* p, int64_t stride, bool vec, float (&v)[8]) {
  if (vec) {
#ifdef SAM3LT_EMULATE
    if (stride != 1 || reinterpret_cast<uintptr_t>(p) % 16 != 0) ::sam3lt_emu::fail("load8: misaligned vector load");
    for (int i = 0; i < 8; ++i) v[i] = to_float(p[i]);
#else
    if constexpr (sizeof(T) == 2) {
      const uint4 u = *reinterpret_cast<const uint4*>(p);
      const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
      for (int i = 0; i < 8; ++i) v[i] = to_float(e[i]);
    } else {
      const float4 a = *reinterpret_cast<const float4*>(p);
      const float4 b = *reinterpret_cast<const float4*>(p + 4);
      v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
      v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
    }
#endif
  } else {
#pragma unroll
    for (int i = 0; i < 8; ++i) v[i] = to_float(p[i * stride]);
  }
}

// Store eight values, rounded to T, to 16-byte aligned contiguous p (shared memory tiles).
template <typename T>
SAM3LT_DEVICE void store8(T* p, const float (&v)[8]) {
#ifdef SAM3LT_EMULATE
  if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ::sam3lt_emu::fail("store8: misaligned vector store");
  for (int i = 0; i < 8; ++i) p[i] = from_float<T>(v[i]);
#else
  if constexpr (sizeof(T) == 2) {
    alignas(16) T e[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) e[i] = from_float<T>(v[i]);
    *reinterpret_cast<uint4*>(p) = *reinterpret_cast<const uint4*>(e);
  } else {
    *reinterpret_cast<float4*>(p) = make_float4(v[0], v[1], v[2], v[3]);
    *reinterpret_cast<float4*>(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
  }
#endif
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace sam3lt
