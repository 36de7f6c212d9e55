"""Residual add fused with the LayerNorm that follows it (pre-norm transformer blocks: the ViT's
``x + attn`` → ``layer_norm2`` and ``x + mlp`` → the next layer's ``layer_norm1``)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _contracts as contract
from ._backend import dispatch


def add_layer_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference (the spec). See :func:`add_layer_norm`."""
    total = x + residual
    return total, F.layer_norm(total, (total.shape[-1],), weight, bias, eps)


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
    problem = contract.add_layer_norm_problem(x, residual, weight, bias)
    if problem is not None:
        raise problem[0](f"add_layer_norm: {problem[1]}")
    return dispatch("add_layer_norm", backend, x, residual, weight, bias, float(eps))


def add_layer_norm_module(x: torch.Tensor, residual: torch.Tensor, ln: nn.LayerNorm,
                          backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`add_layer_norm` with the parameters of ``ln`` (an affine ``nn.LayerNorm`` over the last dim)."""
    if len(ln.normalized_shape) != 1 or ln.weight is None or ln.bias is None:
        raise ValueError("add_layer_norm_module: ln must be an nn.LayerNorm over one dim with weight and bias")
    return add_layer_norm(x, residual, ln.weight, ln.bias, ln.eps, backend)
