"""Flash-attention forward for the DETR heads, with the separable box bias or a key-padding mask in-kernel.

One program computes BLOCK_M queries of one (batch, head) with an online softmax over all keys, or over one
share of them when the grid would leave SMs idle (flash-decoding: the decoder's 201 queries × 8 heads at one
prompt are 104 programs of 81 key tiles on 132 SMs): then each split writes its normalised partial output and
log-sum-exp in fp32 and ``_combine_kernel`` merges them.

- Box bias (decoder cross-attention over the Hg×Wg grid): the score of key ``j = y·Wg + x`` gets
  ``bias_y[.., i, y] + bias_x[.., i, x]`` added, read per tile from the two small tables, so the
  (B, heads, Lq, Hg·Wg) bias is never materialised. A key tile is a TILE_Y × TILE_X block of the grid (the
  softmax does not care about key order), so its bias is bias_y[:, y0:y0+TILE_Y] ⊕ bias_x[:, x0:x0+TILE_X]: two
  small contiguous loads per tile instead of two (BLOCK_M, BLOCK_N) gathers, whose 64-bit address tensors
  spilled registers from 64-query blocks up (static audit, sm_90: 255 registers, 328 B spilled). 8 × 8 tiles
  cover the model's 72 × 72 grid exactly.
- Key-padding mask (text cross-attention, self-attention): keys with mask 0 get −inf. A query row with no
  valid key outputs zeros, as the reference (torch SDPA on the CPU) does.

q/k/v are (B, heads, L, D) with any strides; the output is written as (B, Lq, heads·D) (heads merged).
Scores are fp32 (exp2 domain), the dot products run in the input dtype with fp32 accumulation.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._utils import dot_precision, is_interpreted, launch, launch_reason, next_pow2

MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634


@triton.jit
def _attn_kernel(q_ptr, k_ptr, v_ptr, by_ptr, bx_ptr, mask_ptr, out_ptr, part_ptr, lse_ptr, tiles_per_split,
                 s_qb, s_qh, s_qm, s_qd, s_kb, s_kh, s_kn, s_kd, s_vb, s_vh, s_vn, s_vd,
                 s_byb, s_byh, s_bym, s_byy, s_bxb, s_bxh, s_bxm, s_bxx, s_mb, s_mn,
                 Lq, Lk, Wg, num_heads, qk_scale,
                 HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 HAS_BIAS: tl.constexpr, TILE_X: tl.constexpr, HAS_MASK: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, SPLIT: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    b = pid_bh // num_heads
    head = pid_bh % num_heads
    dtype = q_ptr.dtype.element_ty
    b64 = b.to(tl.int64)

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < Lq
    dmask = offs_d < HEAD_DIM
    q = tl.load(q_ptr + b64 * s_qb + head * s_qh + offs_m[:, None] * s_qm + offs_d[None, :] * s_qd,
                mask=mmask[:, None] & dmask[None, :], other=0.0)
    k_base = k_ptr + b64 * s_kb + head * s_kh
    v_base = v_ptr + b64 * s_vb + head * s_vh
    if HAS_BIAS:
        by_rows = by_ptr + b64 * s_byb + head * s_byh + offs_m[:, None] * s_bym
        bx_rows = bx_ptr + b64 * s_bxb + head * s_bxh + offs_m[:, None] * s_bxm

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    TILE_Y: tl.constexpr = BLOCK_N // TILE_X
    offs_t = tl.arange(0, BLOCK_N)
    if HAS_BIAS:
        Hg = Lk // Wg
        tiles_x = tl.cdiv(Wg, TILE_X)
        num_tiles = tl.cdiv(Hg, TILE_Y) * tiles_x
    else:
        num_tiles = tl.cdiv(Lk, BLOCK_N)
    t_begin = pid_s * tiles_per_split
    for t in range(t_begin, tl.minimum(num_tiles, t_begin + tiles_per_split)):
        if HAS_BIAS:  # key t·BLOCK_N + i is grid cell (y0 + i // TILE_X, x0 + i % TILE_X)
            y0 = (t // tiles_x) * TILE_Y
            x0 = (t % tiles_x) * TILE_X
            gy = y0 + tl.arange(0, TILE_Y)
            gx = x0 + tl.arange(0, TILE_X)
            ys = y0 + offs_t // TILE_X
            xs = x0 + offs_t % TILE_X
            offs_n = ys * Wg + xs
            nmask = (ys < Hg) & (xs < Wg)
        else:
            offs_n = t * BLOCK_N + offs_t
            nmask = offs_n < Lk
        kv_mask = nmask[:, None] & dmask[None, :]
        k = tl.load(k_base + offs_n[:, None] * s_kn + offs_d[None, :] * s_kd, mask=kv_mask, other=0.0)
        v = tl.load(v_base + offs_n[:, None] * s_vn + offs_d[None, :] * s_vd, mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
        valid = nmask
        if HAS_MASK:
            key_ok = tl.load(mask_ptr + b64 * s_mb + offs_n * s_mn, mask=nmask, other=0)
            valid = valid & (key_ok != 0)
        if HAS_BIAS:
            by = tl.load(by_rows + gy[None, :] * s_byy, mask=mmask[:, None] & (gy < Hg)[None, :], other=0.0)
            bx = tl.load(bx_rows + gx[None, :] * s_bxx, mask=mmask[:, None] & (gx < Wg)[None, :], other=0.0)
            bias = tl.reshape(by.to(tl.float32)[:, :, None] + bx.to(tl.float32)[:, None, :], (BLOCK_M, BLOCK_N))
            s += bias * 1.4426950408889634
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no valid key so far
        p = tl.exp2(s - m_ref[:, None])
        alpha = tl.exp2(m_i - m_ref)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(dtype), v.to(dtype), input_precision=DOT_PRECISION)
        m_i = m_new

    has_key = l_i > 0.0
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    out = tl.where(has_key[:, None], out, 0.0)
    if SPLIT:  # (splits, B·heads, Lq, BLOCK_D) outputs and (splits, B·heads, Lq) log2-sum-exp2, fp32
        rows = (pid_s * tl.num_programs(1) + pid_bh).to(tl.int64) * Lq + offs_m
        tl.store(part_ptr + rows[:, None] * BLOCK_D + offs_d[None, :], out, mask=mmask[:, None])
        tl.store(lse_ptr + rows, tl.where(has_key, m_i + tl.log2(tl.where(has_key, l_i, 1.0)), float("-inf")),
                 mask=mmask)
        return
    row = num_heads * HEAD_DIM
    out_ptrs = out_ptr + b64 * Lq * row + offs_m[:, None] * row + (head * HEAD_DIM + offs_d)[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & dmask[None, :])


@triton.jit
def _combine_kernel(part_ptr, lse_ptr, out_ptr, Lq, num_heads, splits,
                    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """out = Σ_s 2^(lse_s − M)·o_s / Σ_s 2^(lse_s − M) over the key splits (0 for a row without a valid key)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    bh = tl.num_programs(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < Lq
    top = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    for s in range(0, splits):
        top = tl.maximum(top, tl.load(lse_ptr + (s * bh + pid_bh).to(tl.int64) * Lq + offs_m, mask=mmask,
                                      other=float("-inf")))
    ref = tl.where(top == float("-inf"), 0.0, top)
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
    for s in range(0, splits):
        rows = (s * bh + pid_bh).to(tl.int64) * Lq + offs_m
        w = tl.exp2(tl.load(lse_ptr + rows, mask=mmask, other=float("-inf")) - ref)
        total += w
        acc += w[:, None] * tl.load(part_ptr + rows[:, None] * BLOCK_D + offs_d[None, :], mask=mmask[:, None],
                                    other=0.0)
    out = acc / tl.where(total > 0.0, total, 1.0)[:, None]
    b = (pid_bh // num_heads).to(tl.int64)
    head = pid_bh % num_heads
    row = num_heads * HEAD_DIM
    out_ptrs = out_ptr + b * Lq * row + offs_m[:, None] * row + (head * HEAD_DIM + offs_d)[None, :]
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=mmask[:, None] & (offs_d < HEAD_DIM)[None, :])


def _wave_fill(programs: int, slots: int) -> float:
    """Share of the CTA slots busy over all waves (1.0: the last wave is full); ties keep the first candidate."""
    return programs / (triton.cdiv(programs, slots) * slots)


def _sm_count(t: torch.Tensor) -> int | None:
    if not t.is_cuda or is_interpreted(_attn_kernel):
        return None
    try:
        return torch.cuda.get_device_properties(t.device).multi_processor_count
    except (RuntimeError, AssertionError):  # fake CUDA tensors without a driver (tracing, launch counts)
        return None


def _splits(programs: int, tiles: int, sms: int | None) -> int:
    """Key splits for a grid of ``programs`` that would leave SMs idle: about two programs per SM, each split
    keeping at least 8 key tiles (the merge costs one more launch and an fp32 round trip of the outputs)."""
    return 1 if sms is None else max(1, min(triton.cdiv(2 * sms, programs), tiles // 8, 16))


def _config(lq: int, programs_per_block: int, head_dim: int, dtype: torch.dtype,
            interpreted: bool, sms: int | None = None) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages); untuned starting points (no GPU was at hand). Long query
    sequences (5184 tokens: DETR encoder self-attention, ViT global attention) take 128- or 64-row blocks,
    whichever fills the last wave of ``sms`` SMs better; short ones (201 decoder queries, text cross-attention)
    take the tallest block that still gives ~128 programs, since one (batch, head) has only a few query blocks."""
    if interpreted:
        return max(16, min(64, next_pow2(lq))), 64, 4, 1
    if dtype == torch.float32:
        return (64 if lq > 256 else 32), 32, 4, 2
    if lq >= 2048 and head_dim <= 64:
        # CTAs per SM from the sm_90 audit (bench/results/static): 128 rows x 8 warps: 2; 64 x 4: 4 (D=64), 5 (D<=32)
        tall, short = (128, 64, 8, 3, 2), (64, 64, 4, 3, 4 if head_dim > 32 else 5)
        if sms is None:
            return tall[:4]
        return max((tall, short), key=lambda c: _wave_fill(triton.cdiv(lq, c[0]) * programs_per_block, sms * c[4]))[:4]
    for block_m in (64, 32):
        if triton.cdiv(lq, block_m) * programs_per_block >= 128:
            return block_m, 64, 4, 3
    return 16, 64, 4, 3


def _attention(q, k, v, bias_y, bias_x, key_padding_mask):
    batch, heads, lq, head_dim = q.shape
    lk = k.shape[2]
    out = torch.empty((batch, lq, heads * head_dim), device=q.device, dtype=q.dtype)
    if out.numel() == 0:
        return out
    if lk == 0:
        return out.zero_()
    interpreted = is_interpreted(_attn_kernel)
    sms = _sm_count(q)  # asked once per call: the block shape and the key split both depend on it
    block_m, block_n, warps, stages = _config(lq, batch * heads, head_dim, q.dtype, interpreted, sms)
    has_bias = bias_y is not None
    has_mask = key_padding_mask is not None
    if has_bias:
        by, bx, wg = bias_y, bias_x, bias_x.shape[-1]
        bias_strides = (*by.stride(), *bx.stride())
    else:
        by = bx = q  # dummy pointers, never read
        wg, bias_strides = 1, (0,) * 8
    if has_mask:
        m = key_padding_mask if key_padding_mask.dtype == torch.bool else key_padding_mask != 0
        mask_strides = m.stride()
    else:
        m, mask_strides = q, (0, 0)
    tile_x = min(8, next_pow2(wg))
    tiles = (triton.cdiv(lk // wg, block_n // tile_x) * triton.cdiv(wg, tile_x) if has_bias else
             triton.cdiv(lk, block_n))
    grid = (triton.cdiv(lq, block_m), batch * heads)
    splits = _splits(grid[0] * grid[1], tiles, sms)
    per_split = triton.cdiv(tiles, splits)
    splits = triton.cdiv(tiles, per_split)  # no empty split
    block_d = max(16, next_pow2(head_dim))
    if splits > 1:
        part = torch.empty((splits, batch * heads, lq, block_d), device=q.device, dtype=torch.float32)
        lse = torch.empty((splits, batch * heads, lq), device=q.device, dtype=torch.float32)
    else:
        part = lse = out  # never written
    launch(_attn_kernel, (*grid, splits), q, k, v, by, bx, m, out, part, lse, per_split,
           *q.stride(), *k.stride(), *v.stride(), *bias_strides, *mask_strides,
           lq, lk, wg, heads, _LOG2E / math.sqrt(head_dim),
           HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=block_m, BLOCK_N=block_n,
           HAS_BIAS=has_bias, TILE_X=tile_x, HAS_MASK=has_mask, DOT_PRECISION=dot_precision(q.dtype),
           SPLIT=splits > 1, num_warps=warps, num_stages=stages)
    if splits > 1:
        launch(_combine_kernel, grid, part, lse, out, lq, heads, splits, HEAD_DIM=head_dim, BLOCK_D=block_d,
               BLOCK_M=block_m, num_warps=4)
    return out


def box_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_y: torch.Tensor,
                       bias_x: torch.Tensor) -> torch.Tensor:
    """Launcher. q (B, heads, Lq, D), k/v (B, heads, Hg·Wg, D), bias_y (B, heads, Lq, Hg), bias_x (B, heads, Lq, Wg),
    any strides. Returns (B, Lq, heads·D) contiguous in q's dtype. See :func:`sam3lt.ops.box_bias_attention`."""
    return _attention(q, k, v, bias_y, bias_x, None)


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Launcher. q (B, heads, Lq, D), k/v (B, heads, Lk, D), key_padding_mask (B, Lk) (nonzero = valid) or None.
    Returns (B, Lq, heads·D) contiguous in q's dtype. See :func:`sam3lt.ops.masked_attention`."""
    return _attention(q, k, v, None, None, key_padding_mask)


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def _head_dim_reason(q) -> str | None:
    return f"head dim {q.shape[-1]} > {MAX_HEAD_DIM}" if q.shape[-1] > MAX_HEAD_DIM else None


def supports_box_bias_attention(q, k, v, bias_y, bias_x) -> str | None:
    return _head_dim_reason(q) or launch_reason((q, k, v, bias_y, bias_x), q.numel())


def supports_masked_attention(q, k, v, key_padding_mask=None) -> str | None:
    return _head_dim_reason(q) or launch_reason((q, k, v), q.numel())
