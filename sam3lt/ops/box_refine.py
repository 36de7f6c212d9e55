"""The DETR decoder's reference-box refinement and the next layer's box sine encoding, in one op: after each decoder
layer ``boxes = sigmoid(delta + inverse_sigmoid(boxes))`` (delta: the box head's output), and at the next layer's
start ``encode_boxes_sine(boxes, num_feats)`` (HF ``encode_boxes``). Eager it is ~16 small torch ops per layer
(clamps, log, add, sigmoid, scale, divide, sin/cos, stack, cat); the Triton kernel is one launch.
"""
from __future__ import annotations

import torch

from . import _contracts as contract
from ._backend import dispatch


def box_refine_reference(delta: torch.Tensor, boxes: torch.Tensor, num_feats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference (the spec: the decoder's own expressions, in the inputs' dtype with torch's rounding after
    each step, bitwise what the model computes). See :func:`box_refine`."""
    from ..model.common import encode_boxes_sine, inverse_sigmoid  # sam3lt.model imports sam3lt.ops

    new_boxes = (delta + inverse_sigmoid(boxes)).sigmoid()
    return new_boxes, encode_boxes_sine(new_boxes, num_feats)


def check_args(delta, boxes, num_feats) -> tuple[type, str] | None:
    """None when the arguments fit :func:`box_refine`, else (exception type, message naming the argument)."""
    if not isinstance(delta, torch.Tensor):
        return TypeError, f"delta must be a tensor, got {type(delta).__name__}"
    problem = contract.tensors_like("delta", delta, (("delta", delta), ("boxes", boxes)))
    if problem is not None:
        return problem
    if isinstance(num_feats, bool) or not isinstance(num_feats, int):
        return TypeError, f"num_feats must be an int, got {type(num_feats).__name__}"
    if num_feats < 2 or num_feats % 2:
        return ValueError, f"num_feats must be even and >= 2 (sin/cos pairs), got {num_feats}"
    if delta.dim() != 3 or delta.shape[-1] != 4:
        return ValueError, f"delta must be (B, Q, 4), got {tuple(delta.shape)}"
    if boxes.shape != delta.shape:
        return ValueError, f"boxes must be (B, Q, 4) like delta {tuple(delta.shape)}, got {tuple(boxes.shape)}"
    return None


def box_refine(delta: torch.Tensor, boxes: torch.Tensor, num_feats: int,
               backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Refine the decoder's reference boxes and sine-encode the result.

    ``new_boxes = sigmoid(delta + inverse_sigmoid(boxes))`` with ``inverse_sigmoid(x) =
    log(max(x', 1e-3) / max(1 − x', 1e-3))``, x' = x clamped to [0, 1]; ``encoding = encode_boxes_sine(new_boxes,
    num_feats)``: per coordinate c (blocks ordered cy, cx, w, h) and feature j < num_feats,
    ``sin(2π·c / dim_t[j])`` for even j, ``cos`` for odd j, ``dim_t[j] = 10000^(2·⌊j/2⌋/num_feats)``.

    Args:
        delta: (B, Q, 4) the box head's output (any strides).
        boxes: (B, Q, 4) the current reference boxes, cxcywh in (0, 1) (any strides; an expanded batch is fine).
            Same floating dtype and device as delta.
        num_feats: features per coordinate (even; 128 in the model, half the model width).
    Returns:
        new_boxes (B, Q, 4) and encoding (B, Q, 4·num_feats), contiguous, in delta's dtype. Under ``auto`` the
        triton kernel runs for CUDA inputs (eager computes in the input dtype step by step; the kernel computes
        in fp32, rounds the new box to the input dtype once and encodes that rounded box, as the eager code
        encodes the stored box).
    """
    problem = check_args(delta, boxes, num_feats)
    if problem is not None:
        raise problem[0](f"box_refine: {problem[1]}")
    return dispatch("box_refine", backend, delta, boxes, num_feats)
