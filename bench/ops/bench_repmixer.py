"""RepMixer depthwise convolution (``sam3lt.ops.repmixer_dwconv``): the MobileCLIP-S0 text encoder's folded
token mixer (with residual) and conv-FFN depthwise conv, B×L×512 tokens, K = 11, L = 32; B = 1 prompt and
B = 64 prompts.

Baseline: bare ``F.conv1d`` (groups = C) on the input already in channels-first layout (no transposes, no
residual add): the cuDNN / ATen depthwise kernel alone.
"""
from __future__ import annotations

import torch.nn.functional as F

from ._case import Baseline, Case, nbytes, randn

CHANNELS, TAPS, LENGTH = 512, 11, 32


def _make(batch, residual):
    def make(device, dtype, gen):
        x = randn(gen, batch, LENGTH, CHANNELS, device=device, dtype=dtype)
        weight = randn(gen, CHANNELS, TAPS, device=device, dtype=dtype, scale=0.1)
        bias = randn(gen, CHANNELS, device=device, dtype=dtype, scale=0.1)
        return x, weight, bias, residual
    return make


def _conv1d(args):
    x, weight, bias, _ = args
    xc = x.transpose(1, 2).contiguous()
    w = weight.unsqueeze(1).contiguous()
    return (lambda xc, w, b: F.conv1d(xc, w, b, padding=TAPS // 2, groups=CHANNELS)), (xc, w, bias)


def _flops(args):
    x, weight, _, residual = args
    return x.numel() * (2 * weight.shape[-1] + 1 + int(residual))


def _bytes(args):
    x, weight, bias, _ = args
    return 2 * nbytes(x) + nbytes(weight, bias)


BASELINES = [Baseline("conv1d", _conv1d, "F.conv1d depthwise on channels-first input (no transposes/residual)")]


def cases(size: str) -> list[Case]:
    shape = f"×{LENGTH}×{CHANNELS}, K={TAPS}"
    return [
        Case("repmixer", "repmixer_dwconv", "RepMixer token mixer (residual), 1 prompt", f"1{shape}",
             _make(1, True), _flops, _bytes, BASELINES),
        Case("repmixer", "repmixer_dwconv", "RepMixer token mixer (residual), 64 prompts", f"64{shape}",
             _make(64, True), _flops, _bytes, BASELINES),
        Case("repmixer", "repmixer_dwconv", "conv-FFN depthwise conv (no residual), 64 prompts", f"64{shape}",
             _make(64, False), _flops, _bytes, BASELINES, quick=False),
    ]
