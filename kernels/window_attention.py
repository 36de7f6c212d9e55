"""Windowed / global ViT self-attention with in-kernel 2-D RoPE, read straight from the fused QKV grid.

One program computes BLOCK_M query tokens of one window of one (batch, head) with an online softmax over the
window's keys (flash-attention forward). Tokens are addressed by index arithmetic in the unpartitioned
(B, H, W, 3·C) layout, so there is no window partition / unpartition copy:

    window w = (wy, wx), token t of the window (row-major, t < WIN_H·WIN_W)
    -> grid position (wy·WIN_H + t // WIN_W, wx·WIN_W + t % WIN_W)

A window that runs past the bottom/right edge of the grid holds padded tokens: their q/k/v are ``pad_value``
(the QKV bias, HF pads the projection *input* with zeros), they are attended to as keys like any token, and
their outputs are not written.

Global attention (one window covering the grid) does not use this kernel: in it every query block would rotate
every key tile again (41 times per key at 72×72, with fp32 cos/sin tiles four times the size of the keys), so
the launcher rotates q and k once (kernels/rope.py) and runs the plain flash-attention kernel of
kernels/cross_attention.py over the rotated tokens. A window (576 tokens, ~5 query blocks) keeps RoPE in-kernel.

RoPE follows the reference: in fp32, ``x·cos + rotate_pairwise(x)·sin`` with ``rotate_pairwise`` pairing
channels (2i, 2i+1) -> (-x[2i+1], x[2i]), then cast back to the input dtype before the dot products. The
partner channel is read with a second (cache-hit) load at channel ``d ^ 1``.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from . import cross_attention, rope
from ._utils import dot_precision, is_interpreted, launch, launch_reason, next_pow2

MAX_HEAD_DIM = 256
_LOG2E = 1.4426950408889634


@triton.jit
def _window_attn_kernel(qkv_ptr, cos_ptr, sin_ptr, pad_ptr, out_ptr,
                        s_b, s_h, s_w, s_c, s_cos_t, s_cos_d, s_sin_t, s_sin_d, s_pad,
                        H, W, C, WIN_H, WIN_W, n_win_w, n_win, T, num_heads, n_mblk, qk_scale,
                        HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, HAS_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)  # (window, query block), query block fastest: neighbours share K/V in L2
    pid_bh = tl.program_id(1)
    mblk = pid % n_mblk
    win = pid // n_mblk
    wy = win // n_win_w
    wx = win % n_win_w
    b = pid_bh // num_heads
    head = pid_bh % num_heads
    dtype = qkv_ptr.dtype.element_ty

    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < HEAD_DIM
    partner_d = offs_d + 1 - 2 * (offs_d % 2)  # d ^ 1
    sign = tl.where(offs_d % 2 == 0, -1.0, 1.0)
    base = qkv_ptr + b.to(tl.int64) * s_b
    ch_q = head * HEAD_DIM
    ch_k = C + head * HEAD_DIM
    ch_v = 2 * C + head * HEAD_DIM

    # ---- queries: load, pad, RoPE (fp32), cast to the input dtype
    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    y_m = wy * WIN_H + offs_m // WIN_W
    x_m = wx * WIN_W + offs_m % WIN_W
    in_win_m = offs_m < T
    in_grid_m = in_win_m & (y_m < H) & (x_m < W)
    tok_m = base + y_m[:, None] * s_h + x_m[:, None] * s_w
    ld_m = in_grid_m[:, None] & dmask[None, :]
    q = tl.load(tok_m + (ch_q + offs_d)[None, :] * s_c, mask=ld_m, other=0.0).to(tl.float32)
    qp = tl.load(tok_m + (ch_q + partner_d)[None, :] * s_c, mask=ld_m, other=0.0).to(tl.float32)
    if HAS_PAD:
        pq = tl.load(pad_ptr + (ch_q + offs_d) * s_pad, mask=dmask, other=0.0).to(tl.float32)
        pqp = tl.load(pad_ptr + (ch_q + partner_d) * s_pad, mask=dmask, other=0.0).to(tl.float32)
        q = tl.where(in_grid_m[:, None], q, pq[None, :])
        qp = tl.where(in_grid_m[:, None], qp, pqp[None, :])
    rope_m = in_win_m[:, None] & dmask[None, :]
    cos_m = tl.load(cos_ptr + offs_m[:, None] * s_cos_t + offs_d[None, :] * s_cos_d, mask=rope_m, other=0.0).to(tl.float32)
    sin_m = tl.load(sin_ptr + offs_m[:, None] * s_sin_t + offs_d[None, :] * s_sin_d, mask=rope_m, other=0.0).to(tl.float32)
    q = (q * cos_m + qp * sign[None, :] * sin_m).to(dtype)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        y_n = wy * WIN_H + offs_n // WIN_W
        x_n = wx * WIN_W + offs_n % WIN_W
        in_win_n = offs_n < T
        in_grid_n = in_win_n & (y_n < H) & (x_n < W)
        tok_n = base + y_n[:, None] * s_h + x_n[:, None] * s_w
        ld_n = in_grid_n[:, None] & dmask[None, :]
        k = tl.load(tok_n + (ch_k + offs_d)[None, :] * s_c, mask=ld_n, other=0.0).to(tl.float32)
        kp = tl.load(tok_n + (ch_k + partner_d)[None, :] * s_c, mask=ld_n, other=0.0).to(tl.float32)
        v = tl.load(tok_n + (ch_v + offs_d)[None, :] * s_c, mask=ld_n, other=0.0)
        if HAS_PAD:
            pk = tl.load(pad_ptr + (ch_k + offs_d) * s_pad, mask=dmask, other=0.0).to(tl.float32)
            pkp = tl.load(pad_ptr + (ch_k + partner_d) * s_pad, mask=dmask, other=0.0).to(tl.float32)
            pv = tl.load(pad_ptr + (ch_v + offs_d) * s_pad, mask=dmask, other=0.0)
            k = tl.where(in_grid_n[:, None], k, pk[None, :])
            kp = tl.where(in_grid_n[:, None], kp, pkp[None, :])
            v = tl.where(in_grid_n[:, None], v, pv[None, :])
        rope_n = in_win_n[:, None] & dmask[None, :]
        cos_n = tl.load(cos_ptr + offs_n[:, None] * s_cos_t + offs_d[None, :] * s_cos_d, mask=rope_n, other=0.0).to(tl.float32)
        sin_n = tl.load(sin_ptr + offs_n[:, None] * s_sin_t + offs_d[None, :] * s_sin_d, mask=rope_n, other=0.0).to(tl.float32)
        k = (k * cos_n + kp * sign[None, :] * sin_n).to(dtype)

        s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # log2 domain
        s = tl.where(in_win_n[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(dtype), v.to(dtype), input_precision=DOT_PRECISION)
        m_i = m_new

    out = acc / l_i[:, None]
    out_ptrs = (out_ptr + b.to(tl.int64) * H * W * C + (y_m[:, None] * W + x_m[:, None]) * C
                + (head * HEAD_DIM + offs_d)[None, :])
    tl.store(out_ptrs, out.to(out_ptr.dtype.element_ty), mask=in_grid_m[:, None] & dmask[None, :])


def _config(tokens: int, head_dim: int, dtype: torch.dtype, interpreted: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages). Untuned starting points (no GPU was at hand): every query block
    re-applies RoPE to all keys of its window and streams fp32 cos/sin tiles, so tall query blocks (fewer passes
    over the keys) and two pipeline stages (the K side is ~56 KB of shared memory per stage at hd 64) are
    favoured; the 576-token windows take 5 blocks of 128."""
    if interpreted:  # few, large programs
        blk = max(16, min(64, next_pow2(tokens)))
        return blk, blk, 4, 1
    if dtype == torch.float32:
        return 64, 32, 4, 2
    if head_dim > 128:
        return 64, 32, 8, 2
    if tokens >= 256:
        return 128, 64, 8, 2
    return 64, 64, 4, 2


def window_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, window_size: int,
                     pad_value: torch.Tensor | None) -> torch.Tensor:
    """Launcher. qkv (B, H, W, 3·C) any strides; cos/sin (T, D) fp32; pad_value (3·C,) or None.
    Returns (B, H, W, C) contiguous in qkv's dtype. See :func:`sam3lt.ops.window_attention`."""
    batch, height, width, three_c = qkv.shape
    tokens_qkv = qkv.flatten(1, 2) if window_size == 0 else None  # (B, H·W, 3·C): a view of a contiguous grid
    if tokens_qkv is not None and rope.supports_rope_qkv(tokens_qkv, cos, sin, num_heads) is None:
        return _global_attention(tokens_qkv, cos, sin, num_heads, height, width)
    channels = three_c // 3
    head_dim = channels // num_heads
    if window_size > 0:
        win_h = win_w = window_size
    else:
        win_h, win_w = height, width
    n_win_h, n_win_w = triton.cdiv(height, win_h), triton.cdiv(width, win_w)
    tokens = win_h * win_w
    out = torch.empty((batch, height, width, channels), device=qkv.device, dtype=qkv.dtype)
    if out.numel() == 0:
        return out
    interpreted = is_interpreted(_window_attn_kernel)
    block_m, block_n, warps, stages = _config(tokens, head_dim, qkv.dtype, interpreted)
    n_mblk = triton.cdiv(tokens, block_m)
    has_pad = pad_value is not None and (height % win_h != 0 or width % win_w != 0)
    pad = pad_value.to(qkv.dtype) if has_pad else qkv  # dummy pointer when unused
    grid = (n_win_h * n_win_w * n_mblk, batch * num_heads)
    launch(_window_attn_kernel, grid, qkv, cos, sin, pad, out,
           qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3),
           cos.stride(0), cos.stride(1), sin.stride(0), sin.stride(1), pad.stride(0) if has_pad else 0,
           height, width, channels, win_h, win_w, n_win_w, n_win_h * n_win_w, tokens, num_heads, n_mblk,
           _LOG2E / math.sqrt(head_dim),
           HEAD_DIM=head_dim, BLOCK_D=max(16, next_pow2(head_dim)), BLOCK_M=block_m, BLOCK_N=block_n,
           HAS_PAD=has_pad, DOT_PRECISION=dot_precision(qkv.dtype), num_warps=warps, num_stages=stages)
    return out


def _global_attention(tokens_qkv, cos, sin, num_heads, height, width):
    """Each token rotated once, then attention over the (B, heads, H·W, D) views of the rotated tokens."""
    batch, _, three_c = tokens_qkv.shape
    rotated = rope.rope_qkv(tokens_qkv, cos, sin, num_heads)  # (B, H·W, 3·C) contiguous
    q, k, v = rotated.unflatten(-1, (3, num_heads, -1)).permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, H·W, D)
    out = cross_attention.masked_attention(q, k, v, None)  # (B, H·W, C)
    return out.view(batch, height, width, three_c // 3)


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_window_attention(qkv, cos, sin, num_heads, window_size, pad_value=None) -> str | None:
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if head_dim % 2:
        return f"odd head dim {head_dim} (RoPE rotates channel pairs)"
    if head_dim > MAX_HEAD_DIM:
        return f"head dim {head_dim} > {MAX_HEAD_DIM}"
    return launch_reason((qkv, cos, sin, pad_value), qkv.numel() // 3)
