"""Mask upsampling: ``sam3lt.ops.upsample_nearest_add`` (the pixel decoder's nearest 2× upsample + skip add,
256 channels, 72²→144² and 144²→288²), ``sam3lt.ops.mask_product`` (200 query embeddings × the 256×288²
pixel embedding) and ``sam3lt.ops.masks_to_binary`` (post-processing: 200 kept masks, 288² logits →
bilinear to 1080×1920, sigmoid, threshold).

FLOP conventions: one add per output element (upsample-add); 2·Q·C·H·W (mask product); about 4 per input
pixel (sigmoid) + 8 per output pixel (bilinear + compare) for masks_to_binary. Bytes: inputs + outputs once
(the bool masks count 1 byte each). Baseline for the mask product: ``torch.bmm`` on the flattened pixels.
"""
from __future__ import annotations

import torch

from ._case import Baseline, Case, nbytes, randn

CHANNELS = 256
# size class -> (coarse grid, queries, mask grid, target (H, W))
SIZES = {"full": (72, 200, 288, (1080, 1920)), "cpu": (36, 200, 144, (540, 960)), "tiny": (18, 20, 72, (270, 480))}


def _up_make(src, dst):
    def make(device, dtype, gen):
        return (randn(gen, 1, CHANNELS, src, src, device=device, dtype=dtype),
                randn(gen, 1, CHANNELS, dst, dst, device=device, dtype=dtype))
    return make


def _product_make(queries, grid):
    def make(device, dtype, gen):
        return (randn(gen, 1, queries, CHANNELS, device=device, dtype=dtype),
                randn(gen, 1, CHANNELS, grid, grid, device=device, dtype=dtype))
    return make


def _binary_make(queries, grid, target):
    def make(device, dtype, gen):
        return randn(gen, queries, grid, grid, device=device, dtype=dtype, scale=3.0), target, 0.5
    return make


def _bmm(args):
    embed, pixel = args
    return (lambda e, p: torch.bmm(e, p)), (embed, pixel.flatten(2))


def cases(size: str) -> list[Case]:
    coarse, queries, grid, target = SIZES[size]
    mid = 2 * coarse
    th, tw = target
    return [
        Case("upsample", "upsample_nearest_add", "pixel decoder stage 1 (nearest 2× + skip)",
             f"1×{CHANNELS}×{coarse}² → {mid}²", _up_make(coarse, mid),
             lambda a: a[1].numel(), lambda a: nbytes(*a) + nbytes(a[1])),
        Case("upsample", "upsample_nearest_add", "pixel decoder stage 2 (nearest 2× + skip)",
             f"1×{CHANNELS}×{mid}² → {2 * mid}²", _up_make(mid, 2 * mid),
             lambda a: a[1].numel(), lambda a: nbytes(*a) + nbytes(a[1])),
        Case("upsample", "mask_product", "mask logits (queries × pixel embedding)",
             f"{queries}×{CHANNELS} · {CHANNELS}×{grid}²", _product_make(queries, grid),
             lambda a: 2 * a[0].shape[1] * CHANNELS * a[1].shape[-1] * a[1].shape[-2],
             lambda a: nbytes(*a) + a[0].shape[1] * a[1].shape[-1] * a[1].shape[-2] * a[0].element_size(),
             [Baseline("bmm", _bmm, "torch.bmm on the flattened pixel embedding")]),
        Case("upsample", "masks_to_binary", "post-processing: masks to binary at image size",
             f"{queries}×{grid}² → {queries}×{th}×{tw}", _binary_make(queries, grid, target),
             lambda a: 4 * a[0].numel() + 8 * a[0].shape[0] * th * tw,
             lambda a: nbytes(a[0]) + a[0].shape[0] * th * tw),
    ]
