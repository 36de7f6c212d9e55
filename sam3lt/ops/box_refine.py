"""The DETR decoder's reference-box refinement and the next layer's box sine encoding, in one op: after each decoder
layer ``boxes = sigmoid(delta + inverse_sigmoid(boxes))`` (delta: the box head's output), and at the next layer's
start ``encode_boxes_sine(boxes, num_feats)`` (HF ``encode_boxes``). Eager it is ~16 small torch ops per layer
(clamps, log, add, sigmoid, scale, divide, sin/cos, stack, cat); the Triton kernel is one launch.
"""
from __future__ import annotations

import functools
import math

import torch

from . import _checks, _cuda, _triton
from ._backend import define, dispatch, register


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


@functools.lru_cache(maxsize=None)  # never evicted: CUDA graphs of the fast path read these tensors
def _dim_t_cached(num_feats: int, temperature: float, dtype, device) -> torch.Tensor:
    with torch.inference_mode(False), torch.no_grad():
        divisors = torch.arange(num_feats, dtype=torch.int64, device=device).to(dtype)
        return temperature ** (2 * torch.div(divisors, 2, rounding_mode="floor") / num_feats)


def dim_t(num_feats: int, temperature: float, dtype, device) -> torch.Tensor:
    """The sine encodings' frequency divisors (a constant per size, dtype and device: computed once)."""
    if torch.compiler.is_compiling():  # traced: the compiler folds the constant itself
        return _dim_t_cached.__wrapped__(num_feats, temperature, dtype, device)
    return _dim_t_cached(int(num_feats), float(temperature), dtype, torch.device(device))


def clear_divisors() -> None:
    _dim_t_cached.cache_clear()


def interleave_sin_cos(pos: torch.Tensor) -> torch.Tensor:
    return torch.stack((pos[..., 0::2].sin(), pos[..., 1::2].cos()), dim=-1).flatten(-2)


def encode_boxes_sine(boxes: torch.Tensor, num_feats: int) -> torch.Tensor:
    """HF ``encode_boxes``: (B, Q, 4) cxcywh -> (B, Q, 4·num_feats) ordered (y, x, w, h)."""
    divisors = dim_t(num_feats, 10000, boxes.dtype, boxes.device)
    scaled = boxes * (2 * math.pi)
    pos = interleave_sin_cos(scaled[..., :, None] / divisors)  # (B, Q, 4, num_feats)
    return torch.cat((pos[..., 1, :], pos[..., 0, :], pos[..., 2, :], pos[..., 3, :]), dim=-1)


def box_refine_reference(delta: torch.Tensor, boxes: torch.Tensor, num_feats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference (the spec: the decoder's own expressions, in the inputs' dtype with torch's rounding after
    each step, bitwise what the model computes). See :func:`box_refine`."""

    new_boxes = (delta + inverse_sigmoid(boxes)).sigmoid()
    return new_boxes, encode_boxes_sine(new_boxes, num_feats)


def check_args(delta, boxes, num_feats) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`box_refine`."""
    op = "box_refine"
    _checks.tensor(op, "delta", delta)
    _checks.like(op, "delta", delta, (("delta", delta), ("boxes", boxes)))
    _checks.integer(op, "num_feats", num_feats)
    if num_feats < 2 or num_feats % 2:
        raise ValueError(f"{op}: num_feats must be even and >= 2 (sin/cos pairs), got {num_feats}")
    if delta.dim() != 3 or delta.shape[-1] != 4:
        raise ValueError(f"{op}: delta must be (B, Q, 4), got {tuple(delta.shape)}")
    if boxes.shape != delta.shape:
        raise ValueError(f"{op}: boxes must be (B, Q, 4) like delta {tuple(delta.shape)}, got {tuple(boxes.shape)}")


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
        new_boxes (B, Q, 4) and encoding (B, Q, 4·num_feats) in delta's dtype (contiguous from the triton
        kernel; eager, as the model code it replaces, may follow delta's strides). Under ``auto`` the
        triton kernel runs for CUDA inputs (eager computes in the input dtype step by step; the kernel computes
        in fp32, rounds the new box to the input dtype once and encodes that rounded box, as the eager code
        encodes the stored box).
    """
    check_args(delta, boxes, num_feats)
    return dispatch("box_refine", backend, delta, boxes, num_feats)


define("box_refine", check_args)
register("box_refine", "eager", box_refine_reference)
register("box_refine", "triton", *_triton.backend("box_refine", "box_refine"))
register("box_refine", "cuda", *_cuda.torch_backend(box_refine_reference), auto=False)
