"""ViT self-attention (``sam3lt.ops.window_attention``): windowed (9 windows of 24×24 = 576 tokens per 1008²
image) and global (72×72 = 5184 tokens), 16 heads of 64, RoPE, from the fused QKV tensor.

Baselines do only the attention core on q, k, v already laid out as (windows, heads, tokens, 64) (no window
partition, no RoPE, no un-partition): bare ``F.scaled_dot_product_attention`` and xformers'
``memory_efficient_attention`` (only when xformers imports and runs here).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._case import Baseline, Case, nbytes, randn

HEADS, HEAD_DIM = 16, 64
# size class -> (grid side, window side): full = the real 1008² model; cpu/tiny = reduced for the CPU
GRIDS = {"full": (72, 24), "cpu": (48, 24), "tiny": (16, 8)}  # cpu: the 672² model


def _make(batch: int, grid: int, window: int):
    channels = HEADS * HEAD_DIM

    def make(device, dtype, gen):
        tokens = window * window if window else grid * grid
        qkv = randn(gen, batch, grid, grid, 3 * channels, device=device, dtype=dtype)
        angles = torch.rand(tokens, HEAD_DIM, generator=gen, device=device) * (2 * math.pi)
        pad_value = randn(gen, 3 * channels, device=device, dtype=dtype, scale=0.02)
        return qkv, angles.cos(), angles.sin(), HEADS, window, pad_value
    return make


def _layout(args):
    """(N, H, T, D) q, k, v of the windows (or the whole grid), contiguous, as SDPA wants them."""
    qkv, _, _, heads, window, _ = args
    batch, grid, _, three_c = qkv.shape
    dim = three_c // 3 // heads
    if window:
        n = grid // window
        qkv = qkv.view(batch, n, window, n, window, three_c).permute(0, 1, 3, 2, 4, 5).reshape(-1, window * window,
                                                                                            three_c)
    else:
        qkv = qkv.reshape(batch, grid * grid, three_c)
    q, k, v = qkv.view(qkv.shape[0], qkv.shape[1], 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
    return q.contiguous(), k.contiguous(), v.contiguous()


def _sdpa(args):
    return F.scaled_dot_product_attention, _layout(args)


def _xformers(args):
    import xformers.ops as xops
    q, k, v = (t.transpose(1, 2).contiguous() for t in _layout(args))  # BMHK
    return xops.memory_efficient_attention, (q, k, v)


def _flops(args):
    qkv, _, _, heads, window, _ = args
    batch, grid = qkv.shape[0], qkv.shape[1]
    dim = qkv.shape[-1] // 3 // heads
    tokens = window * window if window else grid * grid
    windows = batch * (grid // window) ** 2 if window else batch
    return 4 * windows * heads * tokens * tokens * dim


def _bytes(args):
    qkv, cos, sin, _, _, pad = args
    return nbytes(qkv, cos, sin, pad) + qkv.numel() // 3 * qkv.element_size()


BASELINES = [Baseline("sdpa", _sdpa, "bare SDPA on pre-laid-out q/k/v (no partition, no RoPE)"),
             Baseline("xformers", _xformers, "xformers memory_efficient_attention, BMHK, no RoPE")]


def cases(size: str) -> list[Case]:
    grid, window = GRIDS[size]
    tokens_w, tokens_g = window * window, grid * grid
    n_win = (grid // window) ** 2
    out = [
        Case("window_attention", "window_attention", "ViT windowed attention",
             f"1×{grid}²×3·{HEADS}·{HEAD_DIM} → {n_win} windows × {tokens_w} tokens, {HEADS}×d{HEAD_DIM}",
             _make(1, grid, window), _flops, _bytes, BASELINES),
        Case("window_attention", "window_attention", "ViT windowed attention, 8 images",
             f"8×{grid}²×3·{HEADS}·{HEAD_DIM} → {8 * n_win} windows × {tokens_w} tokens, {HEADS}×d{HEAD_DIM}",
             _make(8, grid, window), _flops, _bytes, BASELINES, sizes=("full",), quick=False),
        Case("window_attention", "window_attention", "ViT global attention",
             f"1×{grid}²×3·{HEADS}·{HEAD_DIM} → {tokens_g} tokens, {HEADS}×d{HEAD_DIM}",
             _make(1, grid, 0), _flops, _bytes, BASELINES),
    ]
    return [c for c in out if size in c.sizes]
