"""Residual add fused with the LayerNorm that follows it (pre-norm transformer blocks: the ViT's
``x + attn`` → ``layer_norm2`` and ``x + mlp`` → the next layer's ``layer_norm1``)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _checks, _cuda, _triton
from ._backend import define, dispatch, register


def add_layer_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference (the spec). See :func:`add_layer_norm`."""
    total = x + residual
    return total, F.layer_norm(total, (total.shape[-1],), weight, bias, eps)


def check_args(x, residual, weight, bias, eps=1e-5) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`add_layer_norm`: x and residual (..., C) of one
    shape and one floating dtype; weight and bias (C,) floating, of one dtype; all on x's device."""
    op = "add_layer_norm"
    named = (("x", x), ("residual", residual), ("weight", weight), ("bias", bias))
    for name, t in named:
        _checks.floating(op, name, t)
    if x.dim() == 0:
        raise ValueError(f"{op}: x must have at least one dimension (the normalised channels)")
    if residual.shape != x.shape:
        raise ValueError(f"{op}: residual shape {tuple(residual.shape)} differs from x shape {tuple(x.shape)}")
    if residual.dtype != x.dtype:
        raise TypeError(f"{op}: residual dtype {residual.dtype} differs from x dtype {x.dtype}")
    channels = x.shape[-1]
    for name, t in named[2:]:
        if t.dim() != 1 or t.shape[0] != channels:
            raise ValueError(f"{op}: {name} must be ({channels},) (x's last dim), got {tuple(t.shape)}")
    if weight.dtype != bias.dtype:
        raise TypeError(f"{op}: bias dtype {bias.dtype} differs from weight dtype {weight.dtype}")
    for name, t in named[1:]:
        if t.device != x.device:
            raise ValueError(f"{op}: {name} is on {t.device} but x is on {x.device}")


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float = 1e-5, backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``s = x + residual`` and ``layer_norm(s, (C,), weight, bias, eps)``, returned as ``(s, normed)``.

    Args:
        x, residual: (..., C), same shape and floating dtype. weight, bias: (C,). All on one device.
    Returns:
        (sum, normed), both of x's shape and dtype; ``normed`` is the LayerNorm of the sum as stored
        (rounded to the input dtype), exactly what ``F.layer_norm(x + residual, ...)`` computes.
    Raises:
        TypeError / ValueError naming the offending argument.
    """
    check_args(x, residual, weight, bias)
    return dispatch("add_layer_norm", backend, x, residual, weight, bias, float(eps))


def add_layer_norm_module(x: torch.Tensor, residual: torch.Tensor, ln: nn.LayerNorm,
                          backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`add_layer_norm` with the parameters of ``ln`` (an affine ``nn.LayerNorm`` over the last dim)."""
    if len(ln.normalized_shape) != 1 or ln.weight is None or ln.bias is None:
        raise ValueError("add_layer_norm_module: ln must be an nn.LayerNorm over one dim with weight and bias")
    return add_layer_norm(x, residual, ln.weight, ln.bias, ln.eps, backend)


define("add_layer_norm", check_args)
register("add_layer_norm", "eager", add_layer_norm_reference)
register("add_layer_norm", "triton", *_triton.backend("add_layer_norm", "layer_norm"))
register("add_layer_norm", "cuda", *_cuda.torch_backend(add_layer_norm_reference), auto=False)
