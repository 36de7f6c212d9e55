"""RepMixer depthwise convolution (``sam3lt.ops.repmixer_dwconv``): the MobileCLIP-S0 text encoder's folded
token mixer (with residual) and conv-FFN depthwise conv, B×L×512 tokens, K = 11, L = 32; B = 1 prompt and
B = 64 prompts; and the fused pair of a folded RepMixer block (``sam3lt.ops.repmixer_block_dwconv``: the token
mixer, then the conv FFN's depthwise conv on its output, both K = 11) at 1 and 64 prompts, 4 prompts for the CPU.

Baseline: bare ``F.conv1d`` (groups = C) on the input already in channels-first layout (no transposes, no
residual add): the cuDNN / ATen depthwise kernel alone (for the pair: two such calls, the second on the first's
output).
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


def _make_block(batch):
    def make(device, dtype, gen):
        x = randn(gen, batch, LENGTH, CHANNELS, device=device, dtype=dtype)
        w1, w2 = (randn(gen, CHANNELS, TAPS, device=device, dtype=dtype, scale=0.1) for _ in range(2))
        b1, b2 = (randn(gen, CHANNELS, device=device, dtype=dtype, scale=0.1) for _ in range(2))
        return x, w1, b1, w2, b2
    return make


def _conv1d_pair(args):
    x, w1, b1, w2, b2 = args
    xc = x.transpose(1, 2).contiguous()
    ws = [w.unsqueeze(1).contiguous() for w in (w1, w2)]

    def pair(xc, w1, b1, w2, b2):
        mixed = F.conv1d(xc, w1, b1, padding=TAPS // 2, groups=CHANNELS)
        return mixed, F.conv1d(mixed, w2, b2, padding=TAPS // 2, groups=CHANNELS)
    return pair, (xc, ws[0], b1, ws[1], b2)


def _block_flops(args):
    x, w1, _, w2, _ = args
    return x.numel() * (2 * w1.shape[-1] + 2 + 2 * w2.shape[-1] + 1)  # mixer with residual, then the FFN conv


def _block_bytes(args):
    x, w1, b1, w2, b2 = args
    return 3 * nbytes(x) + nbytes(w1, b1, w2, b2)  # x read once, mixed and ffn_in written


BLOCK_BASELINES = [Baseline("conv1d_pair", _conv1d_pair,
                            "two F.conv1d depthwise calls on channels-first input (no transposes/residual)")]


def cases(size: str) -> list[Case]:
    shape = f"×{LENGTH}×{CHANNELS}, K={TAPS}"
    return [
        Case("repmixer", "repmixer_dwconv", "RepMixer token mixer (residual), 1 prompt", f"1{shape}",
             _make(1, True), _flops, _bytes, BASELINES),
        Case("repmixer", "repmixer_dwconv", "RepMixer token mixer (residual), 64 prompts", f"64{shape}",
             _make(64, True), _flops, _bytes, BASELINES),
        Case("repmixer", "repmixer_dwconv", "conv-FFN depthwise conv (no residual), 64 prompts", f"64{shape}",
             _make(64, False), _flops, _bytes, BASELINES, quick=False),
        *(Case("repmixer", "repmixer_block_dwconv", f"RepMixer block: token mixer + conv-FFN dwconv, {n} prompt"
               f"{'s' * (n > 1)}", f"{n}{shape}", _make_block(n), _block_flops, _block_bytes, BLOCK_BASELINES,
               sizes=sizes) for n, sizes in ((1, ("full", "cpu", "tiny")), (64, ("full",)), (4, ("cpu", "tiny")))),
    ]
