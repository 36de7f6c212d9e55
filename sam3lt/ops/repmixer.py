"""RepMixer depthwise convolution (text encoder, MobileCLIP RepMixer blocks).

After BatchNorm and layer-scale folding (``sam3lt.model.text.fold_*``) both the RepMixer token mixer and
the depthwise half of the conv FFN are one depthwise 1×K convolution along the token axis with a bias;
the token mixer also adds its input back (the residual).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks, _cuda, _triton
from ._backend import backend_reason as reason
from ._backend import define, dispatch, register


def repmixer_dwconv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: bool) -> torch.Tensor:
    """Eager reference (the spec). See :func:`repmixer_dwconv`."""
    kernel = weight.shape[-1]
    y = F.conv1d(x.transpose(1, 2), weight.unsqueeze(1), bias, padding=kernel // 2, groups=x.shape[-1])
    y = y.transpose(1, 2)
    if residual:
        y = y + x
    return y.contiguous()


def _check_conv(op, x, weight, bias, names=("weight", "bias")) -> None:
    for name, t in (("x", x), (names[0], weight), (names[1], bias)):
        _checks.floating(op, name, t)
    if x.dim() != 3 or weight.dim() != 2 or bias.dim() != 1:
        raise ValueError(f"{op}: expects x (B, L, C), {names[0]} (C, K), {names[1]} (C,), got {tuple(x.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(bias.shape)}")
    channels, taps = weight.shape
    if x.shape[-1] != channels or bias.shape[0] != channels:
        raise ValueError(f"{op}: x, {names[0]} and {names[1]} disagree on the channel count")
    if taps % 2 == 0:
        raise ValueError(f"{op}: even kernel size {taps} (only odd K has symmetric 'same' padding)")
    _checks.same_device(op, (("x", x), (names[0], weight), (names[1], bias)))


def check_args(x, weight, bias, residual=True) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`repmixer_dwconv`."""
    _check_conv("repmixer_dwconv", x, weight, bias)


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
    check_args(x, weight, bias, residual)
    return dispatch("repmixer_dwconv", backend, x, weight, bias, residual)


def repmixer_block_dwconv_reference(x: torch.Tensor, mixer_weight: torch.Tensor, mixer_bias: torch.Tensor,
                                    ffn_weight: torch.Tensor, ffn_bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager reference (the spec). See :func:`repmixer_block_dwconv`."""
    mixed = repmixer_dwconv_reference(x, mixer_weight, mixer_bias, True)
    return mixed, repmixer_dwconv_reference(mixed, ffn_weight, ffn_bias, False)


def check_block_args(x, mixer_weight, mixer_bias, ffn_weight, ffn_bias) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`repmixer_block_dwconv`."""
    _check_conv("repmixer_block_dwconv", x, mixer_weight, mixer_bias, ("mixer_weight", "mixer_bias"))
    _check_conv("repmixer_block_dwconv", x, ffn_weight, ffn_bias, ("ffn_weight", "ffn_bias"))


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
    check_block_args(x, mixer_weight, mixer_bias, ffn_weight, ffn_bias)
    return dispatch("repmixer_block_dwconv", backend, x, mixer_weight, mixer_bias, ffn_weight, ffn_bias)


def _cuda_supports(x, weight, bias, residual=True):
    if not (x.dtype == weight.dtype == bias.dtype):
        return f"x, weight and bias dtypes differ ({x.dtype}, {weight.dtype}, {bias.dtype})"
    return _cuda.launch_reason((x, weight, bias)) or _cuda.fits_int32(x.shape[1], x.shape[2])


def _cuda_block(x, w1, b1, w2, b2):
    """No fused CUDA kernel yet: the pair as two launches of whatever serves ``repmixer_dwconv`` for cuda."""
    mixed = dispatch("repmixer_dwconv", "cuda", x, w1, b1, True)
    return mixed, dispatch("repmixer_dwconv", "cuda", mixed, w2, b2, False)


def _cuda_block_supports(x, w1, b1, w2, b2):
    return reason("repmixer_dwconv", "cuda", (x, w1, b1, True)) or reason("repmixer_dwconv", "cuda", (x, w2, b2, False))


define("repmixer_dwconv", check_args)
register("repmixer_dwconv", "eager", repmixer_dwconv_reference)
register("repmixer_dwconv", "triton", *_triton.backend("repmixer_dwconv", "repmixer"))
register("repmixer_dwconv", "cuda", *_cuda.backend("repmixer_dwconv", _cuda_supports))
define("repmixer_block_dwconv", check_block_args)
register("repmixer_block_dwconv", "eager", repmixer_block_dwconv_reference)
register("repmixer_block_dwconv", "triton", *_triton.backend("repmixer_block_dwconv", "repmixer"))
register("repmixer_block_dwconv", "cuda", _cuda_block, _cuda_block_supports)
