// Compile-time switches over runtime values (as causal-conv1d / flash-attention's static_switch.h): the body is
// instantiated once per listed value, with the value available as a constexpr inside it.
#pragma once

#include "params.h"

// DTYPE_SWITCH(p.dtype, T, ...): T is float, sam3lt::half_t or sam3lt::bf16_t.
#define SAM3LT_DTYPE_SWITCH(DTYPE, T, ...)                        \
  [&] {                                                           \
    switch (DTYPE) {                                              \
      case ::sam3lt::DType::kFloat16: {                           \
        using T = ::sam3lt::half_t;                               \
        return __VA_ARGS__();                                     \
      }                                                           \
      case ::sam3lt::DType::kBFloat16: {                          \
        using T = ::sam3lt::bf16_t;                               \
        return __VA_ARGS__();                                     \
      }                                                           \
      default: {                                                  \
        using T = float;                                          \
        return __VA_ARGS__();                                     \
      }                                                           \
    }                                                             \
  }()

// Depthwise conv taps: the model's 3, 7 and 11 (and 5, 9) unrolled; any other odd K runs the generic loop (0).
#define SAM3LT_TAPS_SWITCH(K, CONST_K, ...)                       \
  [&] {                                                           \
    switch (K) {                                                  \
      case 3: { constexpr int CONST_K = 3; return __VA_ARGS__(); }   \
      case 5: { constexpr int CONST_K = 5; return __VA_ARGS__(); }   \
      case 7: { constexpr int CONST_K = 7; return __VA_ARGS__(); }   \
      case 9: { constexpr int CONST_K = 9; return __VA_ARGS__(); }   \
      case 11: { constexpr int CONST_K = 11; return __VA_ARGS__(); } \
      default: { constexpr int CONST_K = 0; return __VA_ARGS__(); }  \
    }                                                             \
  }()

// Attention head width of the kernel instantiation (head dims in between are zero-padded up to it).
#define SAM3LT_HEADDIM_SWITCH(D, CONST_D, ...)                    \
  [&] {                                                           \
    if ((D) <= 16) { constexpr int CONST_D = 16; return __VA_ARGS__(); }  \
    else if ((D) <= 32) { constexpr int CONST_D = 32; return __VA_ARGS__(); } \
    else if ((D) <= 64) { constexpr int CONST_D = 64; return __VA_ARGS__(); } \
    else { constexpr int CONST_D = 128; return __VA_ARGS__(); }  \
  }()
