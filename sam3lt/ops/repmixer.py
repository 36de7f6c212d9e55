"""RepMixer depthwise convolution (text encoder, MobileCLIP RepMixer blocks).

After BatchNorm and layer-scale folding (``sam3lt.model.text.fold_*``) both the RepMixer token mixer and
the depthwise half of the conv FFN are one depthwise 1×K convolution along the token axis with a bias;
the token mixer also adds its input back (the residual).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import dispatch


def repmixer_dwconv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: bool) -> torch.Tensor:
    """Eager reference (the spec). See :func:`repmixer_dwconv`."""
    kernel = weight.shape[-1]
    y = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=kernel // 2, groups=x.shape[-1])
    y = y.transpose(1, 2)
    if residual:
        y = y + x
    return y.contiguous()


def repmixer_dwconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: bool = True,
                    backend: str | None = None) -> torch.Tensor:
    """Depthwise 1-D convolution over tokens with bias and optional residual.

    Args:
        x: (B, L, C) tokens, channels last, any strides; fp32/fp16/bf16.
        weight: (C, K) per-channel taps, K odd; "same" zero padding of K//2 on each side of the token
            axis (padded prompt tokens are convolved like any other token, as in HF).
        bias: (C,).
        residual: add ``x`` to the result (RepMixer token mixer) or not (conv-FFN depthwise conv).
    Returns:
        (B, L, C) contiguous, dtype of ``x``: ``[x +] dwconv(x) + bias``.
    """
    return dispatch("repmixer_dwconv", backend, x, weight, bias, residual)


def repmixer_block_dwconv_reference(x: torch.Tensor, mixer_weight: torch.Tensor, mixer_bias: torch.Tensor,
                                    ffn_weight: torch.Tensor, ffn_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference (the spec). See :func:`repmixer_block_dwconv`."""
    mixed = repmixer_dwconv_reference(x, mixer_weight, mixer_bias, True)
    return mixed, repmixer_dwconv_reference(mixed, ffn_weight, ffn_bias, False)


def repmixer_block_dwconv(x: torch.Tensor, mixer_weight: torch.Tensor, mixer_bias: torch.Tensor,
                          ffn_weight: torch.Tensor, ffn_bias: torch.Tensor,
                          backend: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Both depthwise convolutions of a folded RepMixer block: the token mixer and the conv FFN's depthwise conv.

    ``mixed = x + dwconv(x, mixer_weight) + mixer_bias`` and ``ffn_in = dwconv(mixed, ffn_weight) + ffn_bias``
    (each as :func:`repmixer_dwconv`; ``mixed`` is rounded to the input dtype before the second convolution).
    The Triton kernel does both in one pass over a (batch, channel block): a prompt (L ≤ 128) fits one tile.

    Args:
        x: (B, L, C) tokens, channels last, any strides; fp32/fp16/bf16.
        mixer_weight, ffn_weight: (C, K1), (C, K2), odd K; mixer_bias, ffn_bias: (C,).
    Returns:
        ``(mixed, ffn_in)``, both (B, L, C) contiguous in the dtype of ``x``.
    """
    return dispatch("repmixer_block_dwconv", backend, x, mixer_weight, mixer_bias, ffn_weight, ffn_bias)
