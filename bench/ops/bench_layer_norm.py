"""Residual add + LayerNorm (``sam3lt.ops.add_layer_norm``): the ViT block's ``x + attn`` → ``layer_norm2`` (and
``x + mlp`` → the next ``layer_norm1``) on the 72×72 grid, C = 1024, and the same pattern at the DETR width
(5184 tokens × 256). Reduced grids on the CPU (36², 16²), same widths.

Eager (the reference) is ``x + residual`` then ``F.layer_norm``: it writes the sum and reads it back. FLOPs:
about 8 per element (add, mean, centre, square, sum, scale, weight, bias). Bytes: read x and residual, write the
sum and the normalised output once, plus weight and bias. Baseline: ``F.layer_norm`` alone on the precomputed
sum (no add): the single LayerNorm kernel the fusion competes with.
"""
from __future__ import annotations

import torch.nn.functional as F

from ._case import Baseline, Case, nbytes, randn

VIT_C, DETR_C = 1024, 256
GRIDS = {"full": 72, "cpu": 36, "tiny": 16}  # size class -> token grid side (ViT and DETR alike)


def _make(shape):
    def make(device, dtype, gen):
        channels = shape[-1]
        return (randn(gen, *shape, device=device, dtype=dtype), randn(gen, *shape, device=device, dtype=dtype),
                1 + randn(gen, channels, device=device, dtype=dtype, scale=0.1),
                randn(gen, channels, device=device, dtype=dtype, scale=0.1), 1e-6)
    return make


def _layer_norm_only(args):
    x, residual, weight, bias, eps = args
    total = x + residual  # prepared once, not timed
    return (lambda t, w, b: F.layer_norm(t, (t.shape[-1],), w, b, eps)), (total, weight, bias)


def _flops(args):
    return 8 * args[0].numel()


def _bytes(args):
    x, residual, weight, bias, _ = args
    return 2 * nbytes(x, residual) + nbytes(weight, bias)


BASELINES = [Baseline("layer_norm", _layer_norm_only, "F.layer_norm alone on the precomputed sum (no add)")]


def cases(size: str) -> list[Case]:
    grid = GRIDS[size]
    return [
        Case("layer_norm", "add_layer_norm", "ViT residual add + layer norm", f"1×{grid}×{grid}×{VIT_C}",
             _make((1, grid, grid, VIT_C)), _flops, _bytes, BASELINES),
        Case("layer_norm", "add_layer_norm", "residual add + layer norm at the DETR width",
             f"1×{grid * grid}×{DETR_C}", _make((1, grid * grid, DETR_C)), _flops, _bytes, BASELINES),
    ]
