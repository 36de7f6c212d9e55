// Flash-attention forward shared by the attention families: window_attention.cu instantiates it for the window
// mode, cross_attention.cu for the generic mode (box_bias_attention, masked_attention). The mode is a template
// parameter, so each instantiation carries only its own addressing (fewer registers than one kernel for both).
//
// One CTA of 4 warps (128 threads) computes a 64-query tile of one (batch, head[, window]) with an online softmax
// over 64-key tiles (FA2 forward). Warp w owns query rows [16w, 16w + 16) of the tile; with g = lane / 4 and
// t = lane % 4, a lane holds rows g and g + 8 of the warp's rows, and of each 8-column block the columns 2t, 2t + 1
// (the accumulator layout of mma.sync m16n8k16), for the scores as for the output channels.
//
// K and V tiles are double-buffered: tile j + 1 is copied with cp.async (zero fill past the sequence or head dim;
// padded window tokens copy the (rotated) pad vector) while tile j is used, so each tile costs one barrier. Per
// key tile:
//   1. wait for the tile's copies; one __syncthreads; issue the next tile's copies (window q/k come rotated
//      from the RoPE pass of window_attention.cu);
//   2. S = Q K^T (fp32): 16-bit inputs with mma.sync m16n8k16 on fragments loaded with ldmatrix (Q once per CTA);
//      fp32 inputs with plain FMAs (exact fp32, no TF32);
//   3. exp2-domain scores (scale, bias, masks), running max m and sum l per row (reductions over the 4 lanes of a
//      row with two shuffles), the output rescaled;
//   4. O += P V: P = exp2(s - m) rounded to the input dtype goes straight from the S accumulators into A
//      fragments (the m16n8 accumulator layout of two key blocks is the m16k16 A layout), V through
//      ldmatrix.trans; fp32 inputs through a per-warp P tile in shared memory.
// Finally out = O / l (0 where no key was valid, as the reference's masked rows give 0).
//
// The head dim runs at the next instantiated width (16, 32, 64, 128): channels past the real head dim are
// loaded as zeros (they add nothing to q.k) and never stored, so any head dim that is a multiple of 8 works.
//
// Numerics follow the eager references: RoPE in fp32 from the input-dtype values, rounded back to the input
// dtype before the products (as apply_rope's .to(x.dtype)); the box bias by[y] + bx[x] rounded to the bias
// dtype and then to the input dtype (the reference materialises it and casts it to q.dtype); P rounded to the
// input dtype for P V while l sums the fp32 weights (as Triton / FA2).
//
// Window addressing (kWindow): window (wy, wx), token t of the window in row-major order ->
// grid position (wy * win_h + t / win_w, wx * win_w + t % win_w). Tokens with t < T outside the H x W grid are
// padding: their q/k/v are pad_value (or zeros), they are attended to as keys, and their outputs are dropped.
// Global attention is one window covering the grid.
#pragma once

#include "common.h"
#include "static_switch.h"
#include "tensor_core.cuh"

#include <atomic>
#include <climits>

#ifdef SAM3LT_EMULATE
#define SAM3LT_DECLARE_SMEM(NAME) char* NAME = ::sam3lt_emu::dynamic_smem()
#else
#define SAM3LT_DECLARE_SMEM(NAME)                              \
  extern __shared__ __align__(128) char NAME##_storage[];      \
  char* NAME = NAME##_storage
#endif

namespace sam3lt {

constexpr int kBM = 64;   // queries per CTA
constexpr int kBN = 64;   // keys per tile
constexpr int kAttnThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

// Shared memory of one CTA: the Q tile, two K and two V tiles (double buffer) and, for fp32, a P tile. Rows are
// padded by 16 bytes, so the 8 row addresses of an ldmatrix hit distinct banks; every row starts 16-byte aligned
// (cp.async, ldmatrix).
template <typename T, int D>
struct AttnSmem {
  static_assert(kBM == kBN, "one tile size for Q, K and V rows");
  static constexpr bool k16 = sizeof(T) == 2;
  static constexpr int LD = D + 16 / static_cast<int>(sizeof(T));  // Q/K/V rows (elements)
  static constexpr int PLD = kBN + 4;                               // fp32 P rows (floats)
  static constexpr size_t tile = sizeof(T) * kBN * LD;
  static constexpr size_t q_off = 0;
  static constexpr size_t k_off = q_off + tile;      // K buffers 0 and 1
  static constexpr size_t v_off = k_off + 2 * tile;  // V buffers 0 and 1
  static constexpr size_t p_off = v_off + 2 * tile;
  static constexpr size_t bytes = p_off + (k16 ? 0 : sizeof(float) * kBM * PLD);
};

// The source of channels [d0, d0 + 8) of row `row` of q (role 0), k (1) or v (2) and its stride (window q and k
// rotated: p.qk for the grid's tokens, p.qk_pad for padding); null for zeros: rows past the sequence, channels
// past the head dim, padding without a pad vector. vec: the source allows 16-byte loads.
template <typename T, AttnMode M>
SAM3LT_DEVICE const T* chunk_source(const AttnParams& p, int role, int b, int head, int wy0, int wx0, int row,
                                    int d0, int64_t& stride, bool& vec) {
  stride = 1;
  vec = true;
  if (d0 >= p.head_dim) return nullptr;  // head_dim is a multiple of 8: a chunk is all inside or all outside
  if constexpr (M == AttnMode::kWindow) {
    if (row >= p.T) return nullptr;
    const int ty = row / p.win_w;
    const int y = wy0 + ty, x = wx0 + (row - ty * p.win_w);
    const int64_t ch = static_cast<int64_t>(role) * p.C + static_cast<int64_t>(head) * p.head_dim + d0;
    if (y < p.H && x < p.W) {
      if (role < 2) return static_cast<const T*>(p.qk) + ((static_cast<int64_t>(b) * p.H + y) * p.W + x) * 2 * p.C + ch;
      stride = p.s_qkv[3];
      vec = p.vec_qkv;
      return static_cast<const T*>(p.qkv) + b * p.s_qkv[0] + y * p.s_qkv[1] + x * p.s_qkv[2] + ch * p.s_qkv[3];
    }
    if (p.pad == nullptr) return nullptr;
    if (role < 2) return static_cast<const T*>(p.qk_pad) + static_cast<int64_t>(row) * 2 * p.C + ch;
    stride = p.s_pad;
    vec = p.vec_pad;
    return static_cast<const T*>(p.pad) + ch * p.s_pad;
  } else {
    if (row >= (role == 0 ? p.Lq : p.Lk)) return nullptr;
    const int64_t* st = role == 0 ? p.s_q : role == 1 ? p.s_k : p.s_v;
    stride = st[3];
    vec = role == 0 ? p.vec_q : role == 1 ? p.vec_k : p.vec_v;
    return static_cast<const T*>(role == 0 ? p.q : role == 1 ? p.k : p.v) + b * st[0] + head * st[1] + row * st[2] +
           d0 * st[3];
  }
}

// Channels [d0, d0 + 8) of row `row` of q (role 0), k (1) or v (2) as fp32 (zeros where there is no source).
template <typename T, AttnMode M>
SAM3LT_DEVICE void load_chunk(const AttnParams& p, int role, int b, int head, int wy0, int wx0, int row, int d0,
                              float (&v)[8]) {
  int64_t stride;
  bool vec;
  const T* src = chunk_source<T, M>(p, role, b, head, wy0, wx0, row, d0, stride, vec);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = 0.0f;
  if (src != nullptr) load8(src, stride, vec, v);
}

// Starts the copy of channels [d0, d0 + 8) of key row `row` of k (role 1) or v (role 2) to the shared chunk dst:
// cp.async from its source, zero fill where there is none; strided sources go through registers instead.
template <typename T, AttnMode M>
SAM3LT_DEVICE void copy_chunk(const AttnParams& p, int role, int b, int head, int wy0, int wx0, int row, int d0,
                              T* dst) {
  int64_t stride;
  bool vec;
  const T* src = chunk_source<T, M>(p, role, b, head, wy0, wx0, row, d0, stride, vec);
  if (src != nullptr && !vec) {
    float v[8];
    load8(src, stride, false, v);
    store8(dst, v);
    return;
  }
  constexpr int kStep = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte copy
  // zero fill reads nothing, but keeps a valid global address in the instruction
  const T* any = static_cast<const T*>(M == AttnMode::kWindow ? p.qkv : p.k);
#pragma unroll
  for (int c = 0; c < 8; c += kStep) cp_async16(dst + c, src != nullptr ? src + c : any, src != nullptr);
}

// One bias value at byte offset `off` of a table in its stored dtype (uniform branch: one dtype per call).
SAM3LT_DEVICE float load_bias(const char* row, int64_t off, DType dt) {
  if (dt == DType::kBFloat16) return to_float(*reinterpret_cast<const bf16_t*>(row + off));
  if (dt == DType::kFloat16) return to_float(*reinterpret_cast<const half_t*>(row + off));
  return *reinterpret_cast<const float*>(row + off);
}

SAM3LT_DEVICE float round_bias(float x, DType bias_dtype, DType dtype) {
  if (bias_dtype == DType::kFloat16) x = round_to<half_t>(x);
  else if (bias_dtype == DType::kBFloat16) x = round_to<bf16_t>(x);
  if (dtype == DType::kFloat16) x = round_to<half_t>(x);
  else if (dtype == DType::kBFloat16) x = round_to<bf16_t>(x);
  return x;
}

// kSplit: this CTA attends to one share of the keys (blockIdx.y) and writes a partial result (p.part, p.lse);
// a separate instantiation, so the unsplit kernel carries none of it. The explicit minimum of 1 CTA per SM keeps
// ptxas from trimming registers to the next occupancy step with spills (it did for fp32 D=64 at 128 registers).
// Forcing more CTAs spills: 4 at D=64 (8-64 B), 5 at D=32 (40-92 B), so window D=64 runs 3 and DETR D=32 4.
template <typename T, int D, AttnMode M, bool kSplit>
__global__ void __launch_bounds__(kAttnThreads, 1) attention_kernel(AttnParams p) {
  using L = AttnSmem<T, D>;
  constexpr bool k16 = L::k16;
  constexpr int kChunks = D / 8;  // 8-channel chunks of a row
  constexpr int kNB = kBN / 8;    // 8-key blocks of a tile (score accumulators)
  constexpr int kDB = D / 8;      // 8-channel blocks of the output (output accumulators)

  SAM3LT_DECLARE_SMEM(smem);
  T* Qs = reinterpret_cast<T*>(smem + L::q_off);
  T* Ks = reinterpret_cast<T*>(smem + L::k_off);
  T* Vs = reinterpret_cast<T*>(smem + L::v_off);
  float* Ps = reinterpret_cast<float*>(smem + L::p_off);  // fp32 only

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int g = lane >> 2, t4 = lane & 3;
  constexpr bool window = M == AttnMode::kWindow;

  // CTA -> (b, head, window, query block); the query block varies fastest so that CTAs running together
  // share K/V in L2.
  const int rows = window ? p.T : p.Lq;
  const int n_keys = window ? p.T : p.Lk;
  const int n_mblk = (rows + kBM - 1) / kBM;
  const int n_win = window ? p.n_win : 1;
  int64_t bid = blockIdx.x;
  const int mblk = static_cast<int>(bid % n_mblk);
  bid /= n_mblk;
  const int win = static_cast<int>(bid % n_win);
  bid /= n_win;
  const int head = static_cast<int>(bid % p.heads);
  const int b = static_cast<int>(bid / p.heads);
  const int wy0 = window ? (win / p.n_win_w) * p.win_h : 0;
  const int wx0 = window ? (win % p.n_win_w) * p.win_w : 0;
  const int m0 = mblk * kBM;

  const int key_begin = kSplit ? static_cast<int>(blockIdx.y) * p.split_keys : 0;
  const int key_end = kSplit ? (key_begin + p.split_keys < n_keys ? key_begin + p.split_keys : n_keys) : n_keys;

  // K/V tile starting at key n0 into buffer buf: one commit group per tile.
  auto issue = [&](int n0, int buf) {
    T* kd = Ks + buf * kBN * L::LD;
    T* vd = Vs + buf * kBN * L::LD;
    for (int it = tid; it < kBN * kChunks; it += kAttnThreads) {
      const int i = it / kChunks, d0 = (it % kChunks) * 8;
      copy_chunk<T, M>(p, 1, b, head, wy0, wx0, n0 + i, d0, kd + i * L::LD + d0);
      copy_chunk<T, M>(p, 2, b, head, wy0, wx0, n0 + i, d0, vd + i * L::LD + d0);
    }
    cp_async_commit();
  };
  if (key_begin < key_end) issue(key_begin, 0);

  // ---- Q tile, then Q fragments for the whole key loop
  for (int it = tid; it < kBM * kChunks; it += kAttnThreads) {
    const int i = it / kChunks, d0 = (it % kChunks) * 8;
    float v[8];
    load_chunk<T, M>(p, 0, b, head, wy0, wx0, m0 + i, d0, v);
    store8(Qs + i * L::LD + d0, v);
  }
  __syncthreads();
  uint32_t qf[k16 ? D / 16 : 1][4];
  if constexpr (k16) {
    // matrices: rows 0-7 / 8-15 of the warp's 16 (lane bit 3), channels +0 / +8 (lane bit 4)
    const T* qrow = Qs + (warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * L::LD + (lane >> 4) * 8;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) ldmatrix_x4(qf[kk], qrow + kk * 16);
  }

  // this lane's rows: warp * 16 + g (h = 0) and + 8 (h = 1)
  int qi[2];
  bool q_valid[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    qi[h] = m0 + warp * 16 + g + 8 * h;
    q_valid[h] = qi[h] < rows;
  }
  constexpr bool has_bias = M == AttnMode::kBoxBias;
  const int64_t bias_elem = p.bias_dtype == DType::kFloat32 ? 4 : 2;
  const uint8_t* mask_row = (M == AttnMode::kGeneric && p.mask != nullptr) ? p.mask + b * p.s_mb : nullptr;

  float o[kDB][4];
#pragma unroll
  for (int j = 0; j < kDB; ++j)
#pragma unroll
    for (int e = 0; e < 4; ++e) o[j][e] = 0.0f;
  float m_i[2] = {-INFINITY, -INFINITY}, l_i[2] = {0.0f, 0.0f};

  int buf = 0;
  for (int n0 = key_begin; n0 < key_end; n0 += kBN, buf ^= 1) {  // split_keys is a multiple of kBN
    const T* Kt = Ks + buf * kBN * L::LD;
    const T* Vt = Vs + buf * kBN * L::LD;
    cp_async_wait<0>();
    __syncthreads();  // this tile is visible to all; every warp is done with the other buffer
    if (n0 + kBN < key_end) issue(n0 + kBN, buf ^ 1);

    // ---- S = Q K^T for this warp's 16 rows: s[nb][e] = S[g + 8 (e / 2)][8 nb + 2 t4 + e % 2]
    float s[kNB][4];
#pragma unroll
    for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nb][e] = 0.0f;
    if constexpr (k16) {
      // matrices: keys of block nb (lane bit 4: nb + 1), channels +0 / +8 (lane bit 3)
      const T* krow = Kt + ((lane >> 4) * 8 + (lane & 7)) * L::LD + ((lane >> 3) & 1) * 8;
#pragma unroll
      for (int nb = 0; nb < kNB; nb += 2)
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          uint32_t kf[4];
          ldmatrix_x4(kf, krow + nb * 8 * L::LD + kk * 16);
          const uint32_t b0[2] = {kf[0], kf[1]}, b1[2] = {kf[2], kf[3]};
          mma_m16n8k16<T>(s[nb], qf[kk], b0);
          mma_m16n8k16<T>(s[nb + 1], qf[kk], b1);
        }
    } else {
      const T* q0 = Qs + (warp * 16 + g) * L::LD;
      const T* q1 = q0 + 8 * L::LD;
#pragma unroll 1
      for (int d = 0; d < D; ++d) {
        const float qa = to_float(q0[d]), qb = to_float(q1[d]);
#pragma unroll
        for (int nb = 0; nb < kNB; ++nb) {
          const float k0 = to_float(Kt[(nb * 8 + 2 * t4) * L::LD + d]);
          const float k1 = to_float(Kt[(nb * 8 + 2 * t4 + 1) * L::LD + d]);
          s[nb][0] = fmaf(qa, k0, s[nb][0]);
          s[nb][1] = fmaf(qa, k1, s[nb][1]);
          s[nb][2] = fmaf(qb, k0, s[nb][2]);
          s[nb][3] = fmaf(qb, k1, s[nb][3]);
        }
      }
    }

    // ---- online softmax (log2 domain) for rows g and g + 8
    float tile_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      // the bias tables' rows in their stored dtype, addressed in bytes (recomputed per tile: fewer live registers)
      const char* by_row = nullptr;
      const char* bx_row = nullptr;
      if (has_bias && q_valid[h]) {
        by_row = static_cast<const char*>(p.bias_y) + bias_elem * (b * p.s_by[0] + head * p.s_by[1] + qi[h] * p.s_by[2]);
        bx_row = static_cast<const char*>(p.bias_x) + bias_elem * (b * p.s_bx[0] + head * p.s_bx[1] + qi[h] * p.s_bx[2]);
      }
#pragma unroll
      for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int key = n0 + nb * 8 + 2 * t4 + c;
          bool valid = key < n_keys;
          float x = s[nb][2 * h + c] * p.scale_log2;
          if (valid && mask_row != nullptr) valid = mask_row[key * p.s_mn] != 0;
          if (valid && by_row != nullptr) {
            const int gy = key / p.Wg, gx = key - gy * p.Wg;
            const float bias = round_bias(load_bias(by_row, bias_elem * gy * p.s_by[3], p.bias_dtype) +
                                              load_bias(bx_row, bias_elem * gx * p.s_bx[3], p.bias_dtype),
                                          p.bias_dtype, p.dtype);
            x += bias * kLog2e;
          }
          s[nb][2 * h + c] = valid ? x : -INFINITY;
          tile_max[h] = fmaxf(tile_max[h], s[nb][2 * h + c]);
        }
    }
    float alpha[2], m_ref[2], row_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 1));
      tile_max[h] = fmaxf(tile_max[h], __shfl_xor_sync(0xffffffffu, tile_max[h], 2));
      const float m_new = fmaxf(m_i[h], tile_max[h]);
      m_ref[h] = m_new == -INFINITY ? 0.0f : m_new;  // no valid key yet: keep every weight 0
      alpha[h] = fast_exp2(m_i[h] - m_ref[h]);
      m_i[h] = m_new;
    }
#pragma unroll
    for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        s[nb][e] = fast_exp2(s[nb][e] - m_ref[e / 2]);
        row_sum[e / 2] += s[nb][e];
      }
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 1);
      row_sum[h] += __shfl_xor_sync(0xffffffffu, row_sum[h], 2);
      l_i[h] = l_i[h] * alpha[h] + row_sum[h];
    }
#pragma unroll
    for (int j = 0; j < kDB; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) o[j][e] *= alpha[e / 2];

    // ---- O += P V
    if constexpr (k16) {
      // matrices: keys +0 / +8 of the 16-key step (lane bit 3), channel blocks db / db + 1 (lane bit 4)
      const T* vrow = Vt + (((lane >> 3) & 1) * 8 + (lane & 7)) * L::LD + (lane >> 4) * 8;
#pragma unroll
      for (int kb = 0; kb < kBN / 16; ++kb) {
        const uint32_t pa[4] = {pack2<T>(s[2 * kb][0], s[2 * kb][1]), pack2<T>(s[2 * kb][2], s[2 * kb][3]),
                                pack2<T>(s[2 * kb + 1][0], s[2 * kb + 1][1]),
                                pack2<T>(s[2 * kb + 1][2], s[2 * kb + 1][3])};
#pragma unroll
        for (int db = 0; db < kDB; db += 2) {
          uint32_t vf[4];
          ldmatrix_x4<true>(vf, vrow + kb * 16 * L::LD + db * 8);
          const uint32_t b0[2] = {vf[0], vf[1]}, b1[2] = {vf[2], vf[3]};
          mma_m16n8k16<T>(o[db], pa, b0);
          mma_m16n8k16<T>(o[db + 1], pa, b1);
        }
      }
    } else {
      float* Pw = Ps + warp * 16 * L::PLD;  // written after this tile's barrier, read by this warp only
#pragma unroll
      for (int nb = 0; nb < kNB; ++nb)
#pragma unroll
        for (int e = 0; e < 4; ++e) Pw[(g + 8 * (e / 2)) * L::PLD + nb * 8 + 2 * t4 + e % 2] = s[nb][e];
      __syncwarp();
#pragma unroll 1
      for (int c = 0; c < kBN; ++c) {
        const float p0 = Pw[g * L::PLD + c], p1 = Pw[(g + 8) * L::PLD + c];
        const T* vr = Vt + c * L::LD;
#pragma unroll
        for (int j = 0; j < kDB; ++j) {
          const float v0 = to_float(vr[j * 8 + 2 * t4]), v1 = to_float(vr[j * 8 + 2 * t4 + 1]);
          o[j][0] = fmaf(p0, v0, o[j][0]);
          o[j][1] = fmaf(p0, v1, o[j][1]);
          o[j][2] = fmaf(p1, v0, o[j][2]);
          o[j][3] = fmaf(p1, v1, o[j][3]);
        }
      }
      __syncwarp();  // every lane is done with P before the next tile rewrites it
    }
  }

  // ---- epilogue: out = O / l (0 for rows without a valid key)
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    if (!q_valid[h]) continue;
    const float inv_l = l_i[h] > 0.0f ? 1.0f / l_i[h] : 0.0f;
    if constexpr (kSplit) {  // this split's normalised output and log2-sum-exp2 (-inf: no valid key)
      const int64_t row =
          (static_cast<int64_t>(blockIdx.y) * p.B * p.heads + static_cast<int64_t>(b) * p.heads + head) * p.Lq + qi[h];
      float* part = p.part + row * p.head_dim;
#pragma unroll
      for (int j = 0; j < kDB; ++j)
#pragma unroll
        for (int c = 0; c < 2; ++c)
          if (j * 8 + 2 * t4 + c < p.head_dim) part[j * 8 + 2 * t4 + c] = o[j][2 * h + c] * inv_l;
      if (t4 == 0) p.lse[row] = l_i[h] > 0.0f ? m_i[h] + log2f(l_i[h]) : -INFINITY;
      continue;
    }
    T* dst = nullptr;
    if (window) {
      const int ty = qi[h] / p.win_w;
      const int y = wy0 + ty, x = wx0 + (qi[h] - ty * p.win_w);
      if (y < p.H && x < p.W)
        dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.H + y) * p.W + x) * p.C +
              static_cast<int64_t>(head) * p.head_dim;
    } else {
      dst = static_cast<T*>(p.out) + (static_cast<int64_t>(b) * p.Lq + qi[h]) * (static_cast<int64_t>(p.heads) * p.head_dim) +
            static_cast<int64_t>(head) * p.head_dim;
    }
    if (dst == nullptr) continue;
#pragma unroll
    for (int j = 0; j < kDB; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int d = j * 8 + 2 * t4 + c;
        if (d < p.head_dim) dst[d] = from_float<T>(o[j][2 * h + c] * inv_l);
      }
  }
}

template <typename T, int D, AttnMode M>
cudaError_t launch_attention_typed(const AttnParams& p, cudaStream_t stream) {
  using L = AttnSmem<T, D>;
  constexpr bool window = M == AttnMode::kWindow;
  const int64_t rows = window ? p.T : p.Lq;
  const int64_t blocks = static_cast<int64_t>(p.B) * p.heads * (window ? p.n_win : 1) * ceil_div(rows, kBM);
  if (blocks == 0) return cudaSuccess;
  if (blocks > INT_MAX) return cudaErrorInvalidValue;
  const bool split = !window && p.splits > 1;
  auto kernel = &attention_kernel<T, D, M, false>;
  if constexpr (!window) {  // window attention never splits its keys: no split kernel is instantiated for it
    if (split) kernel = &attention_kernel<T, D, M, true>;
  }
  constexpr size_t smem = L::bytes;
  if (smem > 48 * 1024) {  // opt in to more than 48 KiB of dynamic shared memory, once per device
    static std::atomic<uint64_t> configured_per_kernel[2] = {0, 0};  // unsplit, split
    std::atomic<uint64_t>& configured = configured_per_kernel[split ? 1 : 0];
    int dev = 0;
    cudaError_t err = cudaGetDevice(&dev);
    if (err != cudaSuccess) return err;
    const uint64_t bit = dev < 64 ? (uint64_t{1} << dev) : 0;
    if (bit == 0 || !(configured.load() & bit)) {
      err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
      if (err != cudaSuccess) return err;
      configured.fetch_or(bit);
    }
  }
  const unsigned int splits = split ? static_cast<unsigned int>(p.splits) : 1u;
  SAM3LT_LAUNCH(kernel, dim3(static_cast<unsigned int>(blocks), splits), dim3(kAttnThreads), smem, stream, p);
  return cudaGetLastError();
}

template <AttnMode M>
cudaError_t launch_flash_attention(const AttnParams& p, cudaStream_t stream) {
  if (attention_kernel_head_dim(p.head_dim) == 0) return cudaErrorInvalidValue;
  return SAM3LT_DTYPE_SWITCH(p.dtype, T, [&] {
    return SAM3LT_HEADDIM_SWITCH(p.head_dim, D, [&] { return launch_attention_typed<T, D, M>(p, stream); });
  });
}

}  // namespace sam3lt
