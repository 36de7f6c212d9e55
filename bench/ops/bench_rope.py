"""RoPE on the fused QKV of a ViT layer (``sam3lt.ops.rope_qkv``), 16 heads of 64 (1024 channels): global attention
(one 1008² image: the 72×72 grid, 5184 tokens) and windowed attention (nine 24×24 windows of 576 tokens), one image
and a batch of 8 images. CPU sizes: 36×36 grid with 12×12 windows; tiny: 16×16 with 8×8 windows.

FLOPs: 3 per rotated value (two products and a sum; the tables are read, not computed). Bytes: qkv read and the
output written once (v included: the op returns the whole QKV), the two fp32 tables read once.
Baseline: HF's unfused RoPE (``apply_rotary_pos_emb_2d``: q and k in fp32, ``x·cos + rotate_pairwise(x)·sin``,
cast back) on q and k already laid out as (N, heads, T, 64); it writes q and k only.
"""
from __future__ import annotations

import math

import torch

from ._case import Baseline, Case, nbytes, randn
from .bench_window_attention import GRIDS, HEAD_DIM, HEADS  # the ViT's shapes, stated once


def _make(batch: int, grid: int, window: int):
    channels = HEADS * HEAD_DIM

    def make(device, dtype, gen):
        tokens = window * window if window else grid * grid
        seqs = batch * (grid // window) ** 2 if window else batch
        qkv = randn(gen, seqs, tokens, 3 * channels, device=device, dtype=dtype)
        angles = (torch.rand(tokens, HEAD_DIM // 2, generator=gen, device=device) * (2 * math.pi))
        angles = angles.repeat_interleave(2, -1)  # HF's tables: one angle per channel pair
        return qkv, angles.cos(), angles.sin(), HEADS
    return make


def _hf_rope(args):
    from sam3lt.ops import rotate_pairwise

    qkv, cos, sin, heads = args
    seqs, tokens, three_c = qkv.shape
    q, k, _ = (t.contiguous() for t in qkv.view(seqs, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0))

    def rope(q, k, cos, sin):
        return tuple((x.float() * cos + rotate_pairwise(x.float()) * sin).to(x.dtype) for x in (q, k))
    return rope, (q, k, cos, sin)


def _flops(args):
    qkv = args[0]
    return 3 * (2 * qkv.numel() // 3)  # q and k: two thirds of the channels


def _bytes(args):
    qkv, cos, sin, _ = args
    return 2 * nbytes(qkv) + nbytes(cos, sin)


BASELINES = [Baseline("hf_rope", _hf_rope, "HF's eager RoPE on q and k in (N, heads, T, D) layout (no v copy)")]


def cases(size: str) -> list[Case]:
    grid, window = GRIDS[size]
    windows = (grid // window) ** 2

    def case(batch, win, quick=True):
        what = f"{windows} windows of {window}×{window}" if win else f"global {grid}×{grid}"
        seqs = batch * windows if win else batch
        tokens = win * win if win else grid * grid
        return Case("rope", "rope_qkv", f"ViT RoPE on fused QKV, {what}, {batch} image{'s' * (batch > 1)}",
                    f"{seqs}×{tokens}×{3 * HEADS * HEAD_DIM}, {HEADS} heads of {HEAD_DIM}",
                    _make(batch, grid, win), _flops, _bytes, BASELINES, quick=quick)

    return [case(1, 0), case(1, window), case(8, 0, quick=False), case(8, window, quick=False)]
