"""The DETR decoder's separable box relative-position bias (HF ``Sam3LiteTextDetrDecoder``'s ``box_rpb``), from a
layer's reference boxes: per query and grid row (column), the log-scaled signed distances of the row (column)
coordinate to the box's two y (x) edges, through a 2-layer ReLU MLP (2 → hidden → heads), plus a zero row for
the presence token. Eager it is ~35 small torch ops per axis and layer; the Triton kernel is one launch for both.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import _checks, _cuda, _triton
from ._backend import define, dispatch, register
from .linear import linear_reference

_WEIGHTS = ("wy1", "by1", "wy2", "by2", "wx1", "bx1", "wx2", "bx2")


def _log_deltas(coords: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(B, Q) box edges, (G,) grid coordinates -> (B, Q, G, 2) sign·log2(8|Δ| + 1)/3."""
    deltas = coords.view(1, 1, -1, 1) - torch.stack([lo, hi], dim=-1).unsqueeze(2)
    deltas = deltas * 8
    return torch.sign(deltas) * torch.log2(torch.abs(deltas) + 1.0) / math.log2(8)


def _mlp(x, w1, b1, w2, b2):
    # DecoderMLP(num_layers=2).forward: F.linear is nn.Linear's forward, so the values are the module's bitwise
    # (linear_reference: F.linear, then the ReLU in place on its fresh (B, Q, G, hidden) output)
    return F.linear(linear_reference(x, w1, b1, activation="relu"), w2, b2)


def box_bias_reference(boxes: torch.Tensor, height: int, width: int, wy1: torch.Tensor, by1: torch.Tensor,
                       wy2: torch.Tensor, by2: torch.Tensor, wx1: torch.Tensor, bx1: torch.Tensor, wx2: torch.Tensor,
                       bx2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference (the spec; the decoder's original code, in the boxes' dtype with torch's rounding after
    each step). See :func:`box_bias`. Returns views of (B, 1+Q, G, heads) tensors (heads innermost)."""
    cx, cy, w, h = boxes.unbind(-1)
    x0, y0, x1, y1 = cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h  # box_cxcywh_to_xyxy
    coords_h = torch.arange(0, height, device=boxes.device, dtype=boxes.dtype) / height
    coords_w = torch.arange(0, width, device=boxes.device, dtype=boxes.dtype) / width
    by = _mlp(_log_deltas(coords_h, y0, y1), wy1, by1, wy2, by2)  # (B, Q, H, heads)
    bx = _mlp(_log_deltas(coords_w, x0, x1), wx1, bx1, wx2, bx2)  # (B, Q, W, heads)
    pad = (0, 0, 0, 0, 1, 0)  # prepend the presence token's zero row along Q
    return F.pad(by, pad).permute(0, 3, 1, 2), F.pad(bx, pad).permute(0, 3, 1, 2)


def check_args(boxes, height, width, wy1, by1, wy2, by2, wx1, bx1, wx2, bx2) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`box_bias`."""
    op = "box_bias"
    _checks.tensor(op, "boxes", boxes)
    _checks.integer(op, "height", height, 1)
    _checks.integer(op, "width", width, 1)
    weights = dict(zip(_WEIGHTS, (wy1, by1, wy2, by2, wx1, bx1, wx2, bx2)))
    _checks.like(op, "boxes", boxes, (("boxes", boxes), *weights.items()))
    if boxes.dim() != 3 or boxes.shape[-1] != 4:
        raise ValueError(f"{op}: boxes must be (B, Q, 4) cxcywh, got {tuple(boxes.shape)}")
    heads = None
    for axis in "yx":
        w1, b1, w2, b2 = (weights[f"{k}{axis}{i}"] for k, i in (("w", 1), ("b", 1), ("w", 2), ("b", 2)))
        if w1.dim() != 2 or w1.shape[1] != 2:
            raise ValueError(f"{op}: w{axis}1 must be (hidden, 2), got {tuple(w1.shape)}")
        hidden = w1.shape[0]
        if tuple(b1.shape) != (hidden,):
            raise ValueError(f"{op}: b{axis}1 must be (hidden,) = ({hidden},), got {tuple(b1.shape)}")
        if w2.dim() != 2 or w2.shape[1] != hidden:
            raise ValueError(f"{op}: w{axis}2 must be (heads, hidden) with hidden = {hidden}, got {tuple(w2.shape)}")
        if heads is not None and w2.shape[0] != heads:
            raise ValueError(f"{op}: w{axis}2 has {w2.shape[0]} heads, wy2 has {heads}")
        heads = w2.shape[0]
        if tuple(b2.shape) != (heads,):
            raise ValueError(f"{op}: b{axis}2 must be (heads,) = ({heads},), got {tuple(b2.shape)}")


def box_bias(boxes: torch.Tensor, height: int, width: int, wy1: torch.Tensor, by1: torch.Tensor, wy2: torch.Tensor,
             by2: torch.Tensor, wx1: torch.Tensor, bx1: torch.Tensor, wx2: torch.Tensor, bx2: torch.Tensor,
             backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The separable box bias of the DETR decoder's image cross-attention (input of :func:`box_bias_attention`).

    For query q with box edges y0, y1 (x0, x1) = cy ∓ h/2 (cx ∓ w/2) and grid row g of H (column of W):
    ``d = 8·(g/H − edge)`` for the two edges, ``f(d) = sign(d)·log2(|d| + 1)/3``, and
    ``bias_y[b, :, 1+q, g] = wy2 · relu(wy1 · (f(d0), f(d1)) + by1) + by2`` (likewise x); row 0 (the presence
    token) is zero.

    Args:
        boxes: (B, Q, 4) reference boxes, cxcywh (any strides).
        height, width: the grid (H, W).
        wy1 (hidden, 2), by1 (hidden,), wy2 (heads, hidden), by2 (heads,): ``box_rpb_embed_y``'s layer1/layer2;
        wx1, bx1, wx2, bx2: ``box_rpb_embed_x``'s. All tensors share boxes' floating dtype and device.
    Returns:
        bias_y (B, heads, 1+Q, H) and bias_x (B, heads, 1+Q, W) in boxes' dtype. Strides differ by backend:
        eager returns permuted views of (B, 1+Q, G, heads) tensors, triton contiguous tensors;
        :func:`box_bias_attention` takes any strides. Under ``auto`` the triton kernel runs for CUDA inputs
        (eager computes in the boxes' dtype step by step; the kernel computes in fp32 and rounds the hidden
        layer to that dtype once, before the second layer, and the output once).
    """
    check_args(boxes, height, width, wy1, by1, wy2, by2, wx1, bx1, wx2, bx2)
    return dispatch("box_bias", backend, boxes, height, width, wy1, by1, wy2, by2, wx1, bx1, wx2, bx2)


define("box_bias", check_args)
register("box_bias", "eager", box_bias_reference)
register("box_bias", "triton", *_triton.backend("box_bias", "box_bias"))
register("box_bias", "cuda", *_cuda.torch_backend(box_bias_reference), auto=False)
