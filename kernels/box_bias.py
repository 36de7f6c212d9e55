"""The DETR decoder's separable box bias (``sam3lt.ops.box_bias``) in one launch for both axes.

Output rows: bias_y (B, heads, 1+Q, H) is written contiguous, so for one (batch, head) the (1+Q)·H values are one
run indexed by ``r = (1+q')·H + g`` with q' = −1 the presence token's zero row (likewise bias_x with W). A
program takes BLOCK_R consecutive r of one batch entry and one axis — grid (blocks of y + blocks of x, B), the
axis picked by the block index — and for each row: the box edges ``c ∓ s/2`` (cy, h along y; cx, w along x),
``d = 8·(g/G − edge)``, ``f = sign(d)·log2(|d| + 1)/3``, then the MLP
``relu(f0·W1[:, 0] + f1·W1[:, 1] + b1)·W2ᵀ + b2``, all in fp32, stored as BLOCK_R contiguous values per head (row 0
written as zeros: no separate memset).

The second layer (hidden → heads = 8) is a ``tl.dot`` over hidden chunks of BLOCK_H with the head dim zero-padded to
HEADS_P ≥ 16 (masked W2 loads; the padded columns are never stored). Why a dot rather than an FMA loop: an FMA
reduction over hidden needs a (rows, chunk, heads) broadcast product in registers, or one accumulator per head
(not expressible for a runtime head count); tl.dot keeps the accumulator a plain (BLOCK_R, HEADS_P) tile, runs on
the tensor cores for 16-bit weights (sm_80 / sm_90 mma with N = 16; half of N is padding, which is free next to
the launch cost) and is numpy's matmul in the interpreter. The hidden chunk is rounded to the weights' dtype before
the dot, as the eager reference rounds the first layer's output; fp32 weights use torch's matmul precision
(IEEE unless TF32 is allowed).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import dot_precision, is_interpreted, launch, launch_reason, next_pow2


@triton.jit
def _axis_rows(boxes_ptr, s_bb, s_bq, s_bc, CENTER: tl.constexpr, SIZE: tl.constexpr, b, blk, Q, G, HEADS, HIDDEN,
               w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
               BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, HEADS_P: tl.constexpr, DOT_PRECISION: tl.constexpr):
    rows = (Q + 1) * G
    offs_r = blk * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = offs_r < rows
    q1 = offs_r // G  # 1 + query index; 0 = the presence token
    g = offs_r - q1 * G
    is_query = row_ok & (q1 > 0)
    box = boxes_ptr + b.to(tl.int64) * s_bb + (q1 - 1) * s_bq
    center = tl.load(box + CENTER * s_bc, mask=is_query, other=0.0).to(tl.float32)
    size = tl.load(box + SIZE * s_bc, mask=is_query, other=0.0).to(tl.float32)
    coord = g.to(tl.float32) / G
    # same association as the reference: (coord - edge) * 8, edges c - 0.5·s and c + 0.5·s
    d0 = (coord - (center - 0.5 * size)) * 8.0
    d1 = (coord - (center + 0.5 * size)) * 8.0
    l0 = tl.log2(tl.abs(d0) + 1.0) / 3.0  # log2(8) = 3; sign(0)·0 = 0 either way, so where(d < 0) is sign()
    l1 = tl.log2(tl.abs(d1) + 1.0) / 3.0
    f0 = tl.where(d0 < 0, -l0, l0)
    f1 = tl.where(d1 < 0, -l1, l1)

    offs_n = tl.arange(0, HEADS_P)
    head_ok = offs_n < HEADS
    acc = tl.zeros((BLOCK_R, HEADS_P), dtype=tl.float32)
    for k0 in range(0, HIDDEN, BLOCK_H):
        offs_h = k0 + tl.arange(0, BLOCK_H)
        h_ok = offs_h < HIDDEN  # padded hidden units: W1, b1 and W2 read as 0, so they add nothing
        wa = tl.load(w1_ptr + offs_h * 2, mask=h_ok, other=0.0).to(tl.float32)
        wb = tl.load(w1_ptr + offs_h * 2 + 1, mask=h_ok, other=0.0).to(tl.float32)
        bias1 = tl.load(b1_ptr + offs_h, mask=h_ok, other=0.0).to(tl.float32)
        hidden = tl.maximum(f0[:, None] * wa[None, :] + f1[:, None] * wb[None, :] + bias1[None, :], 0.0)
        w2t = tl.load(w2_ptr + offs_n[None, :] * HIDDEN + offs_h[:, None], mask=h_ok[:, None] & head_ok[None, :],
                      other=0.0)  # (BLOCK_H, HEADS_P) tile of W2ᵀ, in the weights' dtype
        acc = tl.dot(hidden.to(w2t.dtype), w2t, acc, input_precision=DOT_PRECISION)
    acc += tl.load(b2_ptr + offs_n, mask=head_ok, other=0.0).to(tl.float32)[None, :]
    acc = tl.where(is_query[:, None], acc, 0.0)
    out = out_ptr + b.to(tl.int64) * HEADS * rows + offs_n[None, :] * rows + offs_r[:, None]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & head_ok[None, :])


@triton.jit
def _box_bias_kernel(boxes_ptr, wy1_ptr, by1_ptr, wy2_ptr, by2_ptr, wx1_ptr, bx1_ptr, wx2_ptr, bx2_ptr,
                     out_y_ptr, out_x_ptr, Q, H, W, HEADS, HIDDEN_Y, HIDDEN_X, s_bb, s_bq, s_bc, NBLK_Y,
                     BLOCK_R: tl.constexpr, BLOCK_H: tl.constexpr, HEADS_P: tl.constexpr,
                     DOT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    b = tl.program_id(1)
    if pid < NBLK_Y:  # y: edges cy ∓ h/2 over the H rows
        _axis_rows(boxes_ptr, s_bb, s_bq, s_bc, 1, 3, b, pid, Q, H, HEADS, HIDDEN_Y,
                   wy1_ptr, by1_ptr, wy2_ptr, by2_ptr, out_y_ptr, BLOCK_R, BLOCK_H, HEADS_P, DOT_PRECISION)
    else:  # x: edges cx ∓ w/2 over the W columns
        _axis_rows(boxes_ptr, s_bb, s_bq, s_bc, 0, 2, b, pid - NBLK_Y, Q, W, HEADS, HIDDEN_X,
                   wx1_ptr, bx1_ptr, wx2_ptr, bx2_ptr, out_x_ptr, BLOCK_R, BLOCK_H, HEADS_P, DOT_PRECISION)


def _config(rows: int, hidden: int, heads: int, interpreted: bool) -> dict:
    """Block sizes. GPU: 64 rows × 64 hidden units per step, 4 warps (the real shape, 201·72 rows per axis, gives
    ~450 programs, a few waves on 108-132 SMs; the (64, 64) fp32 hidden tile is 32 registers a thread). Interpreter:
    the largest tiles (numpy runs a tile per step; the program count dominates). tl.dot needs every dim >= 16."""
    if interpreted:
        block_r, block_h = min(1024, next_pow2(rows)), min(256, next_pow2(hidden))
    else:
        block_r, block_h = 64, min(64, next_pow2(hidden))
    return dict(BLOCK_R=max(16, block_r), BLOCK_H=max(16, block_h), HEADS_P=max(16, next_pow2(heads)),
                num_warps=4)


def box_bias(boxes: torch.Tensor, height: int, width: int, wy1: torch.Tensor, by1: torch.Tensor, wy2: torch.Tensor,
             by2: torch.Tensor, wx1: torch.Tensor, bx1: torch.Tensor, wx2: torch.Tensor,
             bx2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher. boxes (B, Q, 4) any strides; weights as :func:`sam3lt.ops.box_bias` (made contiguous: a no-op for
    parameters). Returns bias_y (B, heads, 1+Q, H) and bias_x (B, heads, 1+Q, W), contiguous, boxes' dtype."""
    batch, queries = boxes.shape[0], boxes.shape[1]
    heads = wy2.shape[0]
    out_y = torch.empty((batch, heads, queries + 1, height), device=boxes.device, dtype=boxes.dtype)
    out_x = torch.empty((batch, heads, queries + 1, width), device=boxes.device, dtype=boxes.dtype)
    if batch == 0 or heads == 0:
        return out_y, out_x
    weights = [t.contiguous() for t in (wy1, by1, wy2, by2, wx1, bx1, wx2, bx2)]
    rows_y, rows_x = (queries + 1) * height, (queries + 1) * width
    cfg = _config(max(rows_y, rows_x), max(wy1.shape[0], wx1.shape[0]), heads, is_interpreted(_box_bias_kernel))
    nblk_y = triton.cdiv(rows_y, cfg["BLOCK_R"])
    grid = (nblk_y + triton.cdiv(rows_x, cfg["BLOCK_R"]), batch)
    launch(_box_bias_kernel, grid, boxes, *weights, out_y, out_x, queries, height, width, heads, wy1.shape[0],
           wx1.shape[0], *boxes.stride(), nblk_y, DOT_PRECISION=dot_precision(boxes.dtype), **cfg)
    return out_y, out_x


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_box_bias(boxes, height, width, *weights) -> str | None:
    out_numel = boxes.shape[0] * weights[2].shape[0] * (boxes.shape[1] + 1) * max(height, width)
    return launch_reason((boxes, *weights), out_numel)
