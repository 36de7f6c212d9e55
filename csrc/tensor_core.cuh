// Warp-level tensor-core and async-copy primitives (sm_80+): ldmatrix, mma.sync m16n8k16 with fp32 accumulation,
// cp.async with zero fill. Inline PTX on the GPU; under SAM3LT_EMULATE the emulator's versions
// (csrc/emu/cuda_emu.h), which follow the PTX ISA's fragment layouts and defer copies to the wait.
#pragma once

#include "common.h"

namespace sam3lt {

// Lane l gives the shared-memory address of row l % 8 of 8x8 matrix l / 8 (16-byte aligned rows of 8 x 16 bits);
// r[j] gets matrix j's elements (l / 4, 2 (l % 4) + {0, 1}); with kTrans (2 (l % 4) + {0, 1}, l / 4).
template <bool kTrans = false>
SAM3LT_DEVICE void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#ifdef SAM3LT_EMULATE
  ::sam3lt_emu::ldmatrix_x4<kTrans>(r, row);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#endif
}

// d += A B for a 16x16 A (row) and a 16x8 B (col) of T (bf16 or fp16), fp32 accumulators; fragment layouts as
// in the PTX ISA (g = lane / 4, t = lane % 4): a = {A[g][2t..], A[g+8][2t..], A[g][2t+8..], A[g+8][2t+8..]},
// b = {B[2t..][g], B[2t+8..][g]}, d = {D[g][2t], D[g][2t+1], D[g+8][2t], D[g+8][2t+1]}.
template <typename T>
SAM3LT_DEVICE void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef SAM3LT_EMULATE
  ::sam3lt_emu::mma_m16n8k16<T>(d, a, b);
#else
  if constexpr (std::is_same<T, bf16_t>::value)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// (lo, hi) rounded to T and packed into one 32-bit register, lo in the low half (an mma operand pair).
template <typename T>
SAM3LT_DEVICE uint32_t pack2(float lo, float hi) {
  const T l = from_float<T>(lo), h = from_float<T>(hi);
  uint16_t lb, hb;
  std::memcpy(&lb, &l, 2);
  std::memcpy(&hb, &h, 2);
  return static_cast<uint32_t>(lb) | static_cast<uint32_t>(hb) << 16;
}

// 16 bytes from global src to shared dst, both 16-byte aligned, without going through registers; with
// valid == false, 16 zero bytes (src is not read).
SAM3LT_DEVICE void cp_async16(void* dst, const void* src, bool valid) {
#ifdef SAM3LT_EMULATE
  ::sam3lt_emu::cp_async16(dst, src, valid ? 16 : 0);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src), "r"(valid ? 16 : 0));
#endif
}

SAM3LT_DEVICE void cp_async_commit() {
#ifdef SAM3LT_EMULATE
  ::sam3lt_emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most N committed groups of this thread's copies are pending; the completed copies are then
// visible to this thread (other threads need a barrier).
template <int N>
SAM3LT_DEVICE void cp_async_wait() {
#ifdef SAM3LT_EMULATE
  ::sam3lt_emu::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

}  // namespace sam3lt
