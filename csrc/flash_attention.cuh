// Flash-attention forward shared by the attention families: window_attention.cu instantiates it for the window
// mode, cross_attention.cu for the generic mode (box_bias_attention, masked_attention). The mode is a template
// parameter, so each instantiation carries only its own addressing (fewer registers than one kernel for both).
//
// One CTA of 4 warps (128 threads) computes a 64-query tile of one (batch, head[, window]) with an online softmax
// over 64-key tiles (FA2 forward). Warp w owns query rows [16w, 16w + 16) of the tile; inside a warp, the lane
// pair (2r, 2r + 1) owns row r: lane half h = lane & 1 handles score columns and output channels 2j + h.
//
// Per key tile:
//   1. all threads load K and V (rows n0 .. n0 + 63) into shared memory, converting on the way (RoPE for the
//      window op, pad values for padded window tokens, zeros past the sequence or past the head dim);
//   2. S = Q K^T (fp32): 16-bit inputs with tensor cores (nvcuda::wmma 16x16x16, fp32 accumulate) stored to a
//      per-warp shared tile; fp32 inputs with plain FMAs straight into registers (exact fp32, no TF32);
//   3. the lane pair turns its row of S into exp2-domain scores (scale, bias, masks), updates the running max
//      m and sum l (pair reductions with one shuffle), rescales its output accumulator and writes
//      P = exp2(s - m) rounded to the input dtype to shared memory;
//   4. O += P V: wmma into a per-warp fp32 scratch (aliasing the consumed S tile), then added to the lanes'
//      register accumulators; fp32 inputs again with FMAs.
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

#ifndef SAM3LT_EMULATE
#include <mma.h>
#endif

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

namespace wmma = nvcuda::wmma;

constexpr int kBM = 64;   // queries per CTA
constexpr int kBN = 64;   // keys per tile
constexpr int kAttnThreads = 128;
constexpr float kLog2e = 1.4426950408889634f;

// Shared-memory layout of one CTA (byte offsets; every region is a multiple of 128 bytes, every wmma tile
// pointer 32-byte aligned and every leading dimension a multiple of 16 bytes, as wmma requires).
template <typename T, int D>
struct AttnSmem {
  static constexpr bool k16 = sizeof(T) == 2;
  static constexpr int kPadE = k16 ? 8 : 4;                            // row padding against bank conflicts
  static constexpr int LD = D + kPadE;                                 // Q/K/V rows (elements)
  static constexpr int SLD = (k16 ? (D > kBN ? D : kBN) : kBN) + 4;   // S / PV scratch rows (floats)
  static constexpr int PLD = kBN + kPadE;                              // P rows (elements)
  static constexpr size_t q_off = 0;
  static constexpr size_t k_off = q_off + sizeof(T) * kBM * LD;
  static constexpr size_t v_off = k_off + sizeof(T) * kBN * LD;
  static constexpr size_t s_off = v_off + sizeof(T) * kBN * LD;
  static constexpr size_t p_off = s_off + (k16 ? sizeof(float) * kBM * SLD : 0);
  static constexpr size_t bytes = p_off + sizeof(T) * kBM * PLD;
};

// Channels [d0, d0 + 8) of row `row` of q (role 0), k (1) or v (2), as fp32 (RoPE applied for window q/k);
// zeros for rows past the sequence and for channels past the head dim.
template <typename T, AttnMode M>
SAM3LT_DEVICE void load_chunk(const AttnParams& p, int role, int b, int head, int wy0, int wx0, int row, int d0,
                              float (&v)[8]) {
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = 0.0f;
  if (d0 >= p.head_dim) return;  // head_dim is a multiple of 8: a chunk is all inside or all outside
  if constexpr (M == AttnMode::kWindow) {
    if (row >= p.T) return;
    const int ty = row / p.win_w;
    const int y = wy0 + ty, x = wx0 + (row - ty * p.win_w);
    const int64_t ch = static_cast<int64_t>(role) * p.C + static_cast<int64_t>(head) * p.head_dim + d0;
    if (y < p.H && x < p.W) {
      const T* src = static_cast<const T*>(p.qkv) + b * p.s_qkv[0] + y * p.s_qkv[1] + x * p.s_qkv[2] +
                     ch * p.s_qkv[3];
      load8(src, p.s_qkv[3], p.vec_qkv, v);
    } else if (p.pad != nullptr) {
      load8(static_cast<const T*>(p.pad) + ch * p.s_pad, p.s_pad, p.vec_pad, v);
    }
    if (role < 2) {
      // rotate_pairwise: (x0, x1) -> (-x1, x0); out = x * cos + rot(x) * sin, in fp32
      float c[8], s[8];
      load8(p.cos + row * p.s_cos[0] + d0 * p.s_cos[1], p.s_cos[1], p.vec_rope, c);
      load8(p.sin + row * p.s_sin[0] + d0 * p.s_sin[1], p.s_sin[1], p.vec_rope, s);
#pragma unroll
      for (int i = 0; i < 8; i += 2) {
        const float x0 = v[i], x1 = v[i + 1];
        v[i] = x0 * c[i] - x1 * s[i];
        v[i + 1] = x1 * c[i + 1] + x0 * s[i + 1];
      }
    }
  } else {
    const T* base;
    const int64_t* st;
    bool vec;
    if (role == 0) {
      if (row >= p.Lq) return;
      base = static_cast<const T*>(p.q); st = p.s_q; vec = p.vec_q;
    } else if (role == 1) {
      if (row >= p.Lk) return;
      base = static_cast<const T*>(p.k); st = p.s_k; vec = p.vec_k;
    } else {
      if (row >= p.Lk) return;
      base = static_cast<const T*>(p.v); st = p.s_v; vec = p.vec_v;
    }
    load8(base + b * st[0] + head * st[1] + row * st[2] + d0 * st[3], st[3], vec, v);
  }
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
// a separate instantiation, so the unsplit kernel carries none of it.
template <typename T, int D, AttnMode M, bool kSplit>
__global__ void __launch_bounds__(kAttnThreads) attention_kernel(AttnParams p) {
  using L = AttnSmem<T, D>;
  constexpr bool k16 = L::k16;
  constexpr int kChunks = D / 8;
  // wmma element type (only used when T is 16-bit; keeps the fp32 instantiation free of fp32 wmma fragments)
  using FragT = typename std::conditional<k16, T, half_t>::type;

  SAM3LT_DECLARE_SMEM(smem);
  T* Qs = reinterpret_cast<T*>(smem + L::q_off);
  T* Ks = reinterpret_cast<T*>(smem + L::k_off);
  T* Vs = reinterpret_cast<T*>(smem + L::v_off);
  float* Ss = reinterpret_cast<float*>(smem + L::s_off);
  T* Ps = reinterpret_cast<T*>(smem + L::p_off);

  const int tid = threadIdx.x;
  const int warp = tid / 32, lane = tid % 32;
  const int r = lane >> 1, hf = lane & 1;
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

  // ---- Q tile
  for (int it = tid; it < kBM * kChunks; it += kAttnThreads) {
    const int i = it / kChunks, d0 = (it % kChunks) * 8;
    float v[8];
    load_chunk<T, M>(p, 0, b, head, wy0, wx0, m0 + i, d0, v);
    store8(Qs + i * L::LD + d0, v);
  }
  __syncthreads();

  const int qrow = warp * 16 + r;  // this lane pair's row of the tile
  const int qi = m0 + qrow;        // its query / token index
  const bool q_valid = qi < rows;
  const char* by_row = nullptr;  // the bias tables in their stored dtype (p.bias_dtype), addressed in bytes
  const char* bx_row = nullptr;
  const int64_t bias_elem = p.bias_dtype == DType::kFloat32 ? 4 : 2;
  if (!window && p.bias_y != nullptr && q_valid) {
    by_row = static_cast<const char*>(p.bias_y) + bias_elem * (b * p.s_by[0] + head * p.s_by[1] + qi * p.s_by[2]);
    bx_row = static_cast<const char*>(p.bias_x) + bias_elem * (b * p.s_bx[0] + head * p.s_bx[1] + qi * p.s_bx[2]);
  }
  const uint8_t* mask_row = (!window && p.mask != nullptr) ? p.mask + b * p.s_mb : nullptr;

  wmma::fragment<wmma::matrix_a, 16, 16, 16, FragT, wmma::row_major> qf[k16 ? D / 16 : 1];
  if constexpr (k16) {
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk)
      wmma::load_matrix_sync(qf[kk], Qs + warp * 16 * L::LD + kk * 16, L::LD);
  }

  float o[D / 2];
#pragma unroll
  for (int j = 0; j < D / 2; ++j) o[j] = 0.0f;
  float m_i = -INFINITY, l_i = 0.0f;

  const int key_begin = kSplit ? static_cast<int>(blockIdx.y) * p.split_keys : 0;
  const int key_end = kSplit ? (key_begin + p.split_keys < n_keys ? key_begin + p.split_keys : n_keys) : n_keys;
  for (int n0 = key_begin; n0 < key_end; n0 += kBN) {  // split_keys is a multiple of kBN
    __syncthreads();  // every warp is done with the previous K/V/P tiles
    for (int it = tid; it < kBN * kChunks; it += kAttnThreads) {
      const int i = it / kChunks, d0 = (it % kChunks) * 8;
      float v[8];
      load_chunk<T, M>(p, 1, b, head, wy0, wx0, n0 + i, d0, v);
      store8(Ks + i * L::LD + d0, v);
      load_chunk<T, M>(p, 2, b, head, wy0, wx0, n0 + i, d0, v);
      store8(Vs + i * L::LD + d0, v);
    }
    __syncthreads();

    // ---- S = Q K^T for this warp's 16 rows: s[j] = S[r][2j + hf]
    float s[kBN / 2];
    if constexpr (k16) {
      float* Sw = Ss + warp * 16 * L::SLD;
#pragma unroll
      for (int nb = 0; nb < kBN / 16; ++nb) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
          // K^T block (d, key) = Ks[key * LD + d]: column-major with leading dimension LD
          wmma::fragment<wmma::matrix_b, 16, 16, 16, FragT, wmma::col_major> kf;
          wmma::load_matrix_sync(kf, Ks + nb * 16 * L::LD + kk * 16, L::LD);
          wmma::mma_sync(acc, qf[kk], kf, acc);
        }
        wmma::store_matrix_sync(Sw + nb * 16, acc, L::SLD, wmma::mem_row_major);
      }
      __syncwarp();
#pragma unroll
      for (int j = 0; j < kBN / 2; ++j) s[j] = Sw[r * L::SLD + 2 * j + hf];
    } else {
#pragma unroll
      for (int j = 0; j < kBN / 2; ++j) s[j] = 0.0f;
      const T* qp = Qs + qrow * L::LD;
      for (int d = 0; d < D; ++d) {
        const float qd = to_float(qp[d]);
#pragma unroll
        for (int j = 0; j < kBN / 2; ++j) s[j] = fmaf(qd, to_float(Ks[(2 * j + hf) * L::LD + d]), s[j]);
      }
    }

    // ---- online softmax (log2 domain) for row r, columns 2j + hf
    float tile_max = -INFINITY;
#pragma unroll
    for (int j = 0; j < kBN / 2; ++j) {
      const int key = n0 + 2 * j + hf;
      bool valid = key < n_keys;
      float x = s[j] * p.scale_log2;
      if (valid && mask_row != nullptr) valid = mask_row[key * p.s_mn] != 0;
      if (valid && by_row != nullptr) {
        const int gy = key / p.Wg, gx = key - gy * p.Wg;
        const float bias = round_bias(load_bias(by_row, bias_elem * gy * p.s_by[3], p.bias_dtype) +
                                          load_bias(bx_row, bias_elem * gx * p.s_bx[3], p.bias_dtype),
                                      p.bias_dtype, p.dtype);
        x += bias * kLog2e;
      }
      s[j] = valid ? x : -INFINITY;
      tile_max = fmaxf(tile_max, s[j]);
    }
    tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
    const float m_new = fmaxf(m_i, tile_max);
    const float m_ref = m_new == -INFINITY ? 0.0f : m_new;  // no valid key yet: keep every weight 0
    const float alpha = fast_exp2(m_i - m_ref);
    float row_sum = 0.0f;
    T* prow = Ps + qrow * L::PLD;
#pragma unroll
    for (int j = 0; j < kBN / 2; ++j) {
      const float pj = fast_exp2(s[j] - m_ref);
      row_sum += pj;
      prow[2 * j + hf] = from_float<T>(pj);
    }
    row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
    l_i = l_i * alpha + row_sum;
    m_i = m_new;
#pragma unroll
    for (int j = 0; j < D / 2; ++j) o[j] *= alpha;
    __syncwarp();  // P row complete (both lanes), and every lane is done reading its S values

    // ---- O += P V
    if constexpr (k16) {
      float* Sw = Ss + warp * 16 * L::SLD;  // scratch for P V (this warp's S tile is consumed)
      wmma::fragment<wmma::matrix_a, 16, 16, 16, FragT, wmma::row_major> pf[kBN / 16];
#pragma unroll
      for (int kb = 0; kb < kBN / 16; ++kb)
        wmma::load_matrix_sync(pf[kb], reinterpret_cast<const FragT*>(Ps) + warp * 16 * L::PLD + kb * 16, L::PLD);
#pragma unroll
      for (int db = 0; db < D / 16; ++db) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
#pragma unroll
        for (int kb = 0; kb < kBN / 16; ++kb) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, FragT, wmma::row_major> vf;
          wmma::load_matrix_sync(vf, reinterpret_cast<const FragT*>(Vs) + kb * 16 * L::LD + db * 16, L::LD);
          wmma::mma_sync(acc, pf[kb], vf, acc);
        }
        wmma::store_matrix_sync(Sw + db * 16, acc, L::SLD, wmma::mem_row_major);
      }
      __syncwarp();
#pragma unroll
      for (int j = 0; j < D / 2; ++j) o[j] += Sw[r * L::SLD + 2 * j + hf];
    } else {
      const T* pr = Ps + qrow * L::PLD;
      for (int c = 0; c < kBN; ++c) {
        const float pc = to_float(pr[c]);
        const T* vr = Vs + c * L::LD;
#pragma unroll
        for (int j = 0; j < D / 2; ++j) o[j] = fmaf(pc, to_float(vr[2 * j + hf]), o[j]);
      }
    }
  }

  // ---- epilogue: out = O / l (0 for rows without a valid key)
  if (!q_valid) return;
  const float inv_l = l_i > 0.0f ? 1.0f / l_i : 0.0f;
  if constexpr (kSplit) {  // this split's normalised output and log2-sum-exp2 (-inf: no valid key)
    const int64_t row = (static_cast<int64_t>(blockIdx.y) * p.B * p.heads + static_cast<int64_t>(b) * p.heads + head) * p.Lq + qi;
    float* part = p.part + row * p.head_dim;
#pragma unroll
    for (int j = 0; j < D / 2; ++j)
      if (2 * j + hf < p.head_dim) part[2 * j + hf] = o[j] * inv_l;
    if (hf == 0) p.lse[row] = l_i > 0.0f ? m_i + log2f(l_i) : -INFINITY;
    return;
  }
  T* dst = nullptr;
  if (window) {
    const int ty = qi / p.win_w;
    const int y = wy0 + ty, x = wx0 + (qi - ty * p.win_w);
    if (y < p.H && x < p.W)
      dst = static_cast<T*>(p.out) + ((static_cast<int64_t>(b) * p.H + y) * p.W + x) * p.C +
            static_cast<int64_t>(head) * p.head_dim;
  } else {
    dst = static_cast<T*>(p.out) + (static_cast<int64_t>(b) * p.Lq + qi) * (static_cast<int64_t>(p.heads) * p.head_dim) +
          static_cast<int64_t>(head) * p.head_dim;
  }
  if (dst == nullptr) return;
#pragma unroll
  for (int j = 0; j < D / 2; ++j) {
    const int d = 2 * j + hf;
    if (d < p.head_dim) dst[d] = from_float<T>(o[j] * inv_l);
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
  auto kernel = split ? &attention_kernel<T, D, M, true> : &attention_kernel<T, D, M, false>;
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
