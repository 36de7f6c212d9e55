"""The DETR decoder's box refinement + sine encoding (``sam3lt.ops.box_refine``), computed after each of the 6
decoder layers: ``boxes = sigmoid(delta + inverse_sigmoid(boxes))`` and the next layer's ``encode_boxes_sine(boxes,
128)`` for 200 queries, one prompt (the fast path's smallest bucket) and 16 prompts. The CPU size is the same
(the op is tiny); tiny: 20 queries, num_feats 16.

``eager`` (the reference) is ~16 small torch ops (clamps, log, add, sigmoid, scale, divide, sin, cos, stack, cat),
each a kernel launch on a GPU; ``triton`` is one launch. FLOPs: elementwise, a transcendental counted as one:
8 per refined coordinate (clamps, log, ratio, add, exp, sigmoid), 3 per encoding value (scale, divide, sin/cos);
read the time. Bytes: delta and boxes read, new boxes and encoding written once.
Baseline: the encoding alone (``encode_boxes_sine`` on the given boxes): the unfused path's larger half.
"""
from __future__ import annotations

import torch

from ._case import Baseline, Case, nbytes, randn

# size class -> (queries, num_feats)
SIZES = {"full": (200, 128), "cpu": (200, 128), "tiny": (20, 16)}


def _make(batch, queries, num_feats):
    def make(device, dtype, gen):
        delta = randn(gen, batch, queries, 4, device=device, dtype=dtype, scale=0.5)  # box-head output
        boxes = torch.rand(batch, queries, 4, generator=gen, device=device).to(dtype)  # sigmoid outputs: (0, 1)
        return (delta, boxes, num_feats)
    return make


def _flops(args):
    delta, _, num_feats = args
    rows = delta.shape[0] * delta.shape[1]
    return rows * 4 * (8 + 3 * num_feats)  # 8 per refined coordinate, 3 per encoding value (each sin/cos as one)


def _bytes(args):
    delta, boxes, num_feats = args
    rows = delta.shape[0] * delta.shape[1]
    return nbytes(delta, boxes) + rows * (4 + 4 * num_feats) * delta.element_size()


def _encode_only(args):
    from sam3lt.model.common import encode_boxes_sine

    _, boxes, num_feats = args
    return (lambda b: encode_boxes_sine(b, num_feats)), (boxes,)


BASELINES = [Baseline("encode_boxes_sine", _encode_only, "the eager sine encoding of the boxes alone (no refinement)")]


def cases(size: str) -> list[Case]:
    queries, num_feats = SIZES[size]

    def case(batch, quick=True):
        name = f"DETR decoder box refine + encoding, {batch} prompt{'s' * (batch > 1)}"
        return Case("box_refine", "box_refine", name,
                    f"{batch}×{queries} boxes, num_feats {num_feats}", _make(batch, queries, num_feats), _flops,
                    _bytes, BASELINES, quick=quick)

    return [case(1), case(16, quick=False)]
