"""Windowed / global ViT self-attention with 2-D RoPE, read straight from the fused QKV grid, in two passes.

1. RoPE, once per token (``kernels/rope.py``: ``rope_qk_grid``): the q and k heads of the (B, H, W, 3·C) grid are
   rotated into a (B, H, W, 2·C) buffer, token (y, x) taking the table row of its place in its window. v is not
   copied. Before, the attention kernel rotated every key tile again for every query block of its window (a
   576-token window with 128-row query blocks rotated each key 5 times, a 5184-token global layer 41 times),
   streaming fp32 cos/sin tiles and holding the partner channels in registers (142 registers, one CTA per SM).
2. Attention. Windowed: ``_window_attn_kernel``, one program per BLOCK_M query tokens of one window of one
   (batch, head), online softmax over the window's keys (flash-attention forward). Tokens are addressed by index
   arithmetic in the unpartitioned grid layout, so there is no window partition / unpartition copy:

       window w = (wy, wx), token t of the window (row-major, t < WIN_H·WIN_W)
       -> grid position (wy·WIN_H + t // WIN_W, wx·WIN_W + t % WIN_W)

   Global (one window covering the grid): the plain flash-attention kernel of kernels/cross_attention.py over the
   (B, heads, H·W, D) views of the rotated q / k and of v in qkv.

A window that runs past the bottom/right edge of the grid holds padded tokens: their q/k/v are ``pad_value``
(the QKV bias, HF pads the projection *input* with zeros) and they are attended to as keys like any token, their
k rotated at their place in the window (a (window_size², 2·C) table, one more small RoPE launch); their outputs
are not written.

RoPE follows the reference: in fp32, ``x·cos + rotate_pairwise(x)·sin``, then rounded to the input dtype before
the dot products (the rotated buffer is in the input dtype).
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
def _window_attn_kernel(qk_ptr, qkv_ptr, pad_qk_ptr, pad_ptr, out_ptr,
                        s_b, s_h, s_w, s_c, s_pad,
                        H, W, C, WIN_H, WIN_W, n_win_w, T, num_heads, n_mblk, qk_scale,
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
    qk_base = qk_ptr + b.to(tl.int64) * H * W * 2 * C  # rotated q | k, (B, H, W, 2·C) contiguous
    v_base = qkv_ptr + b.to(tl.int64) * s_b + (2 * C + head * HEAD_DIM + offs_d)[None, :] * s_c
    ch_q = head * HEAD_DIM + offs_d
    ch_k = C + head * HEAD_DIM + offs_d

    # ---- queries (already rotated); padded queries read 0: their outputs are not written
    offs_m = mblk * BLOCK_M + tl.arange(0, BLOCK_M)
    y_m = wy * WIN_H + offs_m // WIN_W
    x_m = wx * WIN_W + offs_m % WIN_W
    in_grid_m = (offs_m < T) & (y_m < H) & (x_m < W)
    q = tl.load(qk_base + (y_m * W + x_m)[:, None] * (2 * C) + ch_q[None, :],
                mask=in_grid_m[:, None] & dmask[None, :], other=0.0)

    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)

    for start_n in range(0, T, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        y_n = wy * WIN_H + offs_n // WIN_W
        x_n = wx * WIN_W + offs_n % WIN_W
        in_win_n = offs_n < T
        in_grid_n = in_win_n & (y_n < H) & (x_n < W)
        ld_n = in_grid_n[:, None] & dmask[None, :]
        k = tl.load(qk_base + (y_n * W + x_n)[:, None] * (2 * C) + ch_k[None, :], mask=ld_n, other=0.0)
        v = tl.load(v_base + (y_n * s_h + x_n * s_w)[:, None], mask=ld_n, other=0.0)
        if HAS_PAD:  # a padded key: pad_value's k rotated at its place in the window, pad_value's v
            ld_p = (in_win_n & ~in_grid_n)[:, None] & dmask[None, :]
            pk = tl.load(pad_qk_ptr + offs_n[:, None] * (2 * C) + ch_k[None, :], mask=ld_p, other=0.0)
            pv = tl.load(pad_ptr + (2 * C + head * HEAD_DIM + offs_d) * s_pad, mask=dmask, other=0.0)
            k = tl.where(in_grid_n[:, None], k, pk)
            v = tl.where(in_grid_n[:, None], v, pv[None, :])

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
    """(BLOCK_M, BLOCK_N, num_warps, num_stages); untuned starting points (no GPU was at hand), from the static
    audit at the model's 576-token windows, bf16 (bench/results/static): 64 x 64, 4 warps, 3 stages has no spills
    and 3 CTAs per SM on sm_90 (130 registers, 56 KB of shared memory) and sm_80 (159, 40 KB; 2 with padding:
    180), and 9 query blocks fill a window exactly; 128 x 64 at 8 warps is 2 CTAs per SM on sm_90 but 1 on sm_80
    (145 registers) and computes a half-empty fifth block per window."""
    if interpreted:  # few, large programs
        blk = max(16, min(64, next_pow2(tokens)))
        return blk, blk, 4, 1
    if dtype == torch.float32:
        return 64, 32, 4, 2
    if head_dim > 128:
        return 64, 32, 8, 2
    return 64, 64, 4, 3


def window_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, window_size: int,
                     pad_value: torch.Tensor | None) -> torch.Tensor:
    """Launcher. qkv (B, H, W, 3·C) any strides; cos/sin (T, D) fp32; pad_value (3·C,) or None.
    Returns (B, H, W, C) contiguous in qkv's dtype. See :func:`sam3lt.ops.window_attention`."""
    batch, height, width, three_c = qkv.shape
    channels = three_c // 3
    head_dim = channels // num_heads
    out_shape = (batch, height, width, channels)
    if qkv.numel() == 0:
        return torch.empty(out_shape, device=qkv.device, dtype=qkv.dtype)
    qk = rope.rope_qk_grid(qkv, cos, sin, num_heads, window_size)  # (B, H, W, 2·C): each q / k rotated once
    if window_size == 0:  # global: plain flash attention over the (B, heads, H·W, D) views
        q, k = qk.view(batch, height * width, 2, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        v = qkv[..., 2 * channels:].unflatten(-1, (num_heads, head_dim)).flatten(1, 2).transpose(1, 2)
        return cross_attention.masked_attention(q, k, v, None).view(out_shape)
    win = window_size
    n_win_h, n_win_w = triton.cdiv(height, win), triton.cdiv(width, win)
    tokens = win * win
    out = torch.empty(out_shape, device=qkv.device, dtype=qkv.dtype)
    block_m, block_n, warps, stages = _config(tokens, head_dim, qkv.dtype, is_interpreted(_window_attn_kernel))
    n_mblk = triton.cdiv(tokens, block_m)
    has_pad = pad_value is not None and (height % win != 0 or width % win != 0)
    if has_pad:  # pad_value's q / k rotated at every place of a window: (1, ws, ws, 2·C)
        pad = pad_value.to(qkv.dtype)
        pad_qk = rope.rope_qk_grid(pad.expand(1, win, win, three_c), cos, sin, num_heads, win)
    else:
        pad = pad_qk = qkv  # dummy pointers when unused
    grid = (n_win_h * n_win_w * n_mblk, batch * num_heads)
    launch(_window_attn_kernel, grid, qk, qkv, pad_qk, pad, out,
           qkv.stride(0), qkv.stride(1), qkv.stride(2), qkv.stride(3), pad.stride(0) if has_pad else 0,
           height, width, channels, win, win, n_win_w, tokens, num_heads, n_mblk, _LOG2E / math.sqrt(head_dim),
           HEAD_DIM=head_dim, BLOCK_D=max(16, next_pow2(head_dim)), BLOCK_M=block_m, BLOCK_N=block_n,
           HAS_PAD=has_pad, DOT_PRECISION=dot_precision(qkv.dtype), num_warps=warps, num_stages=stages)
    return out


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_window_attention(qkv, cos, sin, num_heads, window_size, pad_value=None) -> str | None:
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if head_dim % 2:
        return f"odd head dim {head_dim} (RoPE rotates channel pairs)"
    if head_dim > MAX_HEAD_DIM:
        return f"head dim {head_dim} > {MAX_HEAD_DIM}"
    if qkv.shape[0] * num_heads > 65535:
        return f"batch × heads = {qkv.shape[0] * num_heads} > 65535 (grid axis 1)"
    return launch_reason((qkv, cos, sin, pad_value), qkv.numel() // 3 * 2)  # the rotated q | k buffer
