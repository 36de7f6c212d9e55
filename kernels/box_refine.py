"""The DETR decoder's box refinement + sine encoding (``sam3lt.ops.box_refine``) in one launch.

Rows: the B·Q boxes, row ``r = b·Q + q``. A program takes BLOCK_R rows; per row it loads the 4 box coordinates and
the 4 deltas (any strides), computes ``sigmoid(delta + log(max(x, eps) / max(1 − x, eps)))`` (x clamped to [0, 1])
in fp32, stores the new box rounded to the output dtype, and encodes that rounded box: for each coordinate (output
blocks in the order cy, cx, w, h) a (BLOCK_R, HALF_P) tile of arguments ``c·2π / dim_t[2i]`` for the num_feats/2
sin/cos pairs i, with ``dim_t[2i] = 10000^(2i/num_feats)`` computed in-kernel, written as sin to feature 2i and
cos to feature 2i + 1 (two interleaved stores; each argument's sin and cos are computed once). Arguments are at
most 2π (coordinates in [0, 1]): fp32 sin/cos are accurate there.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._utils import is_interpreted, launch, launch_reason, next_pow2

_LOG2_TEMPERATURE = math.log2(10000.0)
_TWO_PI = 2.0 * math.pi


@triton.jit
def _encode(out_row, c, inv_dim_t, offs_i, store_ok, TWO_PI: tl.constexpr):
    """One coordinate block: sin to the even features, cos to the odd ones."""
    arg = (c * TWO_PI)[:, None] * inv_dim_t[None, :]
    ptr = out_row[:, None] + 2 * offs_i[None, :]
    tl.store(ptr, tl.sin(arg).to(ptr.dtype.element_ty), mask=store_ok)
    tl.store(ptr + 1, tl.cos(arg).to(ptr.dtype.element_ty), mask=store_ok)


@triton.jit
def _refine(delta_ptr, boxes_ptr, d_off, b_off, s_dc, s_bc, C: tl.constexpr, row_ok, new_ptr,
            EPS: tl.constexpr):
    x = tl.load(boxes_ptr + b_off + C * s_bc, mask=row_ok, other=0.5).to(tl.float32)
    d = tl.load(delta_ptr + d_off + C * s_dc, mask=row_ok, other=0.0).to(tl.float32)
    x = tl.minimum(tl.maximum(x, 0.0), 1.0)
    z = d + tl.log(tl.maximum(x, EPS) / tl.maximum(1.0 - x, EPS))  # delta + inverse_sigmoid(boxes)
    new = (1.0 / (1.0 + tl.exp(-z))).to(new_ptr.dtype.element_ty)
    tl.store(new_ptr + C, new, mask=row_ok)
    return new.to(tl.float32)  # the stored (rounded) box is the one encoded


@triton.jit
def _box_refine_kernel(delta_ptr, boxes_ptr, new_ptr, enc_ptr, ROWS, Q, HALF, s_db, s_dq, s_dc, s_bb, s_bq, s_bc,
                       BLOCK_R: tl.constexpr, HALF_P: tl.constexpr, LOG2_T: tl.constexpr, TWO_PI: tl.constexpr,
                       EPS: tl.constexpr):
    offs_r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = offs_r < ROWS
    rows = offs_r.to(tl.int64)
    b = rows // Q
    q = rows - b * Q
    d_off = b * s_db + q * s_dq
    b_off = b * s_bb + q * s_bq
    new_row = new_ptr + rows * 4
    cx = _refine(delta_ptr, boxes_ptr, d_off, b_off, s_dc, s_bc, 0, row_ok, new_row, EPS)
    cy = _refine(delta_ptr, boxes_ptr, d_off, b_off, s_dc, s_bc, 1, row_ok, new_row, EPS)
    w = _refine(delta_ptr, boxes_ptr, d_off, b_off, s_dc, s_bc, 2, row_ok, new_row, EPS)
    h = _refine(delta_ptr, boxes_ptr, d_off, b_off, s_dc, s_bc, 3, row_ok, new_row, EPS)

    offs_i = tl.arange(0, HALF_P)  # sin/cos pair i: features 2i (sin) and 2i + 1 (cos), dim_t = 10000^(2i/nf)
    pair_ok = offs_i < HALF
    inv_dim_t = tl.exp2(-(offs_i.to(tl.float32) / HALF) * LOG2_T)  # 2i/nf = i/HALF
    store_ok = row_ok[:, None] & pair_ok[None, :]
    feats = 2 * HALF
    enc_row = enc_ptr + rows * (4 * feats)
    _encode(enc_row, cy, inv_dim_t, offs_i, store_ok, TWO_PI)  # HF encode_boxes order: y, x, w, h
    _encode(enc_row + feats, cx, inv_dim_t, offs_i, store_ok, TWO_PI)
    _encode(enc_row + 2 * feats, w, inv_dim_t, offs_i, store_ok, TWO_PI)
    _encode(enc_row + 3 * feats, h, inv_dim_t, offs_i, store_ok, TWO_PI)


def _config(rows: int, num_feats: int, interpreted: bool) -> dict:
    """Block sizes. GPU: a (BLOCK_R, num_feats/2) argument tile of ~1024 values (16 rows for num_feats = 128: 13
    programs for one prompt's 200 queries, 4 warps). Interpreter: as many rows as fit a 64Ki tile (the program
    count dominates there)."""
    half_p = next_pow2(num_feats // 2)
    if interpreted:
        block_r = min(next_pow2(rows), max(1, 65536 // half_p))
    else:
        block_r = min(64, max(1, 1024 // half_p), next_pow2(rows))
    return dict(BLOCK_R=block_r, HALF_P=half_p, num_warps=4)


def box_refine(delta: torch.Tensor, boxes: torch.Tensor, num_feats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher. delta, boxes (B, Q, 4) any strides, one dtype; num_feats even. Returns new_boxes (B, Q, 4) and
    encoding (B, Q, 4·num_feats), contiguous, delta's dtype."""
    batch, queries = delta.shape[0], delta.shape[1]
    new_boxes = torch.empty((batch, queries, 4), device=delta.device, dtype=delta.dtype)
    encoding = torch.empty((batch, queries, 4 * num_feats), device=delta.device, dtype=delta.dtype)
    rows = batch * queries
    if rows == 0:
        return new_boxes, encoding
    cfg = _config(rows, num_feats, is_interpreted(_box_refine_kernel))
    grid = (triton.cdiv(rows, cfg["BLOCK_R"]),)
    launch(_box_refine_kernel, grid, delta, boxes, new_boxes, encoding, rows, queries, num_feats // 2,
           *delta.stride(), *boxes.stride(), LOG2_T=_LOG2_TEMPERATURE, TWO_PI=_TWO_PI, EPS=1e-3, **cfg)
    return new_boxes, encoding


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_box_refine(delta, boxes, num_feats) -> str | None:
    return launch_reason((delta, boxes), delta.shape[0] * delta.shape[1] * 4 * num_feats)
