"""The conv family: ``sam3lt.ops.conv3x3`` (the FPN neck's and the pixel decoder's, 256 → 256 channels, padding 1)
at the neck's levels: 288², 144², 72² at 1008² (full), 96², 48², 24² at 336² (cpu), 24² and 12² (tiny);
``conv1x1`` (the finest level's projection, 256 → 256) and ``conv_transpose2x2`` (the neck's first 2× upsampling,
1024 → 512 channels, from the ViT grid: 72², 24², 12²) and ``conv_patch`` (the ViT's patch embedding, 14×14 stride 14,
3 → 1024 channels, at 1008², 336², 168²).

FLOP convention: the direct convolution's 2·K·C·(taps) per output pixel, for every backend (Winograd's ``cpu``
backend does ~4x fewer multiplies: its TFLOP/s is "direct-equivalent"). Bytes: input, weight, bias and output
once. Baseline for conv3x3: NNPACK's Winograd F(6×6, 3×3) convolution (``torch._nnpack_spatial_convolution``), CPU.
"""
from __future__ import annotations

import torch

from ._case import Baseline, Case, nbytes, randn

CHANNELS = 256
SIZES = {"full": (288, 144, 72), "cpu": (96, 48, 24), "tiny": (24, 12)}


def _make(grid):
    def make(device, dtype, gen):
        x = randn(gen, 1, CHANNELS, grid, grid, device=device, dtype=dtype).contiguous(
            memory_format=torch.channels_last)  # as the model's: the neck's inputs come channels-last
        w = randn(gen, CHANNELS, CHANNELS, 3, 3, device=device, dtype=dtype, scale=(9 * CHANNELS) ** -0.5)
        return x, w, randn(gen, CHANNELS, device=device, dtype=dtype), 1
    return make


def _nnpack(args):
    x, w, b, padding = args
    return (lambda *a: torch._nnpack_spatial_convolution(*a)), (x.contiguous(), w, b, [padding, padding])


def _nnpack_reason(device, dtype):
    if device.type != "cpu" or dtype != torch.float32:
        return "NNPACK runs fp32 on the CPU only"
    return None if torch._nnpack_available() else "this torch has no NNPACK"


def _make_other(c, k, taps, grid):
    def make(device, dtype, gen):
        x = randn(gen, 1, c, grid, grid, device=device, dtype=dtype).contiguous(memory_format=torch.channels_last)
        shape = (k, c, 1, 1) if taps == 1 else (c, k, 2, 2)
        w = randn(gen, *shape, device=device, dtype=dtype, scale=c ** -0.5)
        return x, w, randn(gen, k, device=device, dtype=dtype)
    return make


VIT_GRID = {"full": 72, "cpu": 24, "tiny": 12}
PATCH = 14


def _make_patch(grid):
    def make(device, dtype, gen):
        x = randn(gen, 1, 3, grid * PATCH, grid * PATCH, device=device, dtype=dtype)
        return x, randn(gen, 1024, 3, PATCH, PATCH, device=device, dtype=dtype, scale=(3 * PATCH * PATCH) ** -0.5), None
    return make


def _direct_flops(taps):
    # 2·(C·K·taps) per input pixel (transposed, 4 taps) or per output pixel (1×1, 3×3: same size as the input)
    return lambda a: 2 * a[1].shape[0] * a[1].shape[1] * taps * a[0].shape[-1] * a[0].shape[-2]


def _output_bytes(per_input_pixel):
    # inputs once plus the output: K·(taps per input pixel: 1, or 4 for the transposed) values per input pixel
    return lambda a: nbytes(*a[:3]) + per_input_pixel(a) * a[0].shape[-1] * a[0].shape[-2] * a[0].element_size()


def cases(size: str) -> list[Case]:
    fine, vit = SIZES[size][0], VIT_GRID[size]
    return [Case("conv", "conv1x1", "FPN finest level's projection (1×1)", f"1×{CHANNELS}×{fine}², {CHANNELS}→{CHANNELS}",
                 _make_other(CHANNELS, CHANNELS, 1, fine), _direct_flops(1), _output_bytes(lambda a: a[1].shape[0]),
                 sizes=(size,)),
            Case("conv", "conv_transpose2x2", "FPN 2× upsampling (2×2 transposed, stride 2)", f"1×1024×{vit}² → 512",
                 _make_other(1024, 512, 4, vit), _direct_flops(4), _output_bytes(lambda a: 4 * a[1].shape[1]),
                 sizes=(size,)),
            Case("conv", "conv_patch", "ViT patch embedding (14×14, stride 14)",
                 f"1×3×{vit * PATCH}² → 1024×{vit}²", _make_patch(vit),
                 lambda a: 2 * a[1].numel() * (a[0].shape[-1] // PATCH) ** 2,
                 lambda a: nbytes(*a[:2]) + a[1].shape[0] * (a[0].shape[-1] // PATCH) ** 2 * a[0].element_size(),
                 sizes=(size,)),
            *(Case("conv", "conv3x3", f"FPN / pixel decoder 3×3 convolution, level {i}",
                   f"1×{CHANNELS}×{grid}², {CHANNELS}×{CHANNELS}×3×3", _make(grid), _direct_flops(9),
                   _output_bytes(lambda a: a[1].shape[0]),
                   [Baseline("nnpack", _nnpack, "NNPACK's Winograd F(6x6, 3x3)", _nnpack_reason)], sizes=(size,))
              for i, grid in enumerate(SIZES[size]))]
