"""The DETR decoder's box relative-position bias (``sam3lt.ops.box_bias``), computed in each of the 6 decoder layers
from the current reference boxes: 200 queries over the 72×72 grid, MLPs 2 → 256 → 8 heads along y and x, one prompt
(the fast path's smallest bucket) and 16 prompts. Reduced grid and queries on the CPU (36², 200 queries; tiny:
16², 20 queries, the tiny config's 32-wide MLP with 4 heads).

``eager`` (the reference) is ~35 small torch ops per axis (log-scaled deltas, two GEMMs with a ReLU, pad, permute),
each a kernel launch on a GPU; ``triton`` is one launch for both axes. FLOPs: 2·hidden·(2 + heads) per (query, grid
line) row (the two layers; the log transform is not counted). Bytes: boxes, weights and the two outputs once.
Baseline: the two GEMMs + ReLU alone (``F.linear``) on precomputed log-deltas, both axes: the unfused path's core.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._case import Baseline, Case, nbytes, randn

# size class -> (queries, grid side, hidden, heads)
SIZES = {"full": (200, 72, 256, 8), "cpu": (200, 36, 256, 8), "tiny": (20, 16, 32, 4)}


def _make(batch, queries, grid, hidden, heads):
    def make(device, dtype, gen):
        boxes = torch.rand(batch, queries, 4, generator=gen, device=device).to(dtype)  # sigmoid outputs: (0, 1)
        weights = []
        for _ in "yx":
            weights += [randn(gen, hidden, 2, device=device, dtype=dtype),
                        randn(gen, hidden, device=device, dtype=dtype, scale=0.5),
                        randn(gen, heads, hidden, device=device, dtype=dtype, scale=hidden ** -0.5),
                        randn(gen, heads, device=device, dtype=dtype, scale=0.1)]
        return (boxes, grid, grid, *weights)
    return make


def _rows(args):
    boxes, height, width = args[:3]
    return boxes.shape[0] * boxes.shape[1] * (height + width)


def _flops(args):
    hidden, heads = args[3].shape[0], args[5].shape[0]
    return 2 * _rows(args) * hidden * (2 + heads)


def _bytes(args):
    boxes, height, width = args[:3]
    heads = args[5].shape[0]
    out = boxes.shape[0] * heads * (boxes.shape[1] + 1) * (height + width) * boxes.element_size()
    return nbytes(boxes, *args[3:]) + out


def _mlp_only(args):
    boxes, height, width, wy1, by1, wy2, by2, wx1, bx1, wx2, bx2 = args
    shape = boxes.shape[:2]
    dy = torch.rand(*shape, height, 2, device=boxes.device).to(boxes.dtype)  # stand-in log-deltas, not timed
    dx = torch.rand(*shape, width, 2, device=boxes.device).to(boxes.dtype)

    def mlps(dy, dx):
        return (F.linear(F.relu(F.linear(dy, wy1, by1)), wy2, by2), F.linear(F.relu(F.linear(dx, wx1, bx1)), wx2, bx2))
    return mlps, (dy, dx)


BASELINES = [Baseline("mlp GEMMs", _mlp_only, "the two F.linear + ReLU per axis on precomputed deltas (no log, "
                      "pad or permute)")]


def cases(size: str) -> list[Case]:
    queries, grid, hidden, heads = SIZES[size]

    def case(batch, quick=True):
        return Case("box_bias", "box_bias", f"DETR decoder box bias, {batch} prompt{'s' * (batch > 1)}",
                    f"{batch}×{queries} boxes, {grid}×{grid}, 2 → {hidden} → {heads}",
                    _make(batch, queries, grid, hidden, heads), _flops, _bytes, BASELINES, quick=quick)

    return [case(1), case(16, quick=False)]
