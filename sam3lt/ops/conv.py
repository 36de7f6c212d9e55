"""The FPN neck's and the mask decoder's convolutions: ``conv3x3`` (3×3, stride 1), ``conv1x1`` (the projections)
and ``conv_transpose2x2`` (the neck's 2× upsampling: a 2×2 transposed convolution, stride 2); the ViT's patch
embedding ``conv_patch`` (p×p, stride p: non-overlapping patches).

The eager references are ``F.conv2d`` / ``F.conv_transpose2d`` (oneDNN on the CPU, cuDNN on a GPU). The ``cpu``
backends take fp32 CPU tensors:

- ``conv3x3``: Winograd F(4×4, 3×3) (csrc/cpu/winograd.cpp): 4× fewer multiplies, the 36 tile GEMMs on MKL, the
  tile transforms hand-written. Its error is ~1e-5 of the output's scale where the direct convolution's is
  ~2e-6 (Winograd's transforms add and subtract terms up to 8× the output; an fp64 reference in
  tests/test_conv.py). The transformed weight ``G g Gᵀ`` (36, C, K) is computed once per weight, in fp64.
- ``conv1x1``: ``ops.linear``'s cpu GEMM (MKL on the packed weight) over the channels-last pixels, where oneDNN
  runs below AVX-512 (with AVX-512 oneDNN's own is faster: the reference runs).
- ``conv_transpose2x2``: one GEMM, (pixels × C) @ (C × 4K) on MKL, then one pass that adds the bias while it
  scatters the four outputs of each pixel to their 2×2 places (channels-last). oneDNN runs this shape at
  ~200-260 GFLOP/s on 2 cores, MKL's GEMM at ~300 (bench/ops/bench_conv.py).
- ``conv_patch``: the patches as rows (one strided copy of the image) times the flattened weight, on MKL's packing
  of it: 1.5x oneDNN's 14×14 stride-14 convolution of 3 channels (336², 2 cores, with and without AVX-512).

A weight's transformed copy is kept until the weight changes (its version counter or storage).
"""
from __future__ import annotations

import threading

import torch
import torch.nn.functional as F

from . import _checks, _cpu
from ._backend import define, dispatch, register
from .linear import mkl_reason, packed_gemm

# F(4x4, 3x3)'s weight transform (Lavin & Gray 2016, points 0, ±1, ±2, ∞); the data and output ones are in
# csrc/cpu/winograd.cpp
_G = ((1 / 4, 0, 0), (-1 / 6, -1 / 6, -1 / 6), (-1 / 6, 1 / 6, -1 / 6), (1 / 24, 1 / 12, 1 / 6),
      (1 / 24, -1 / 12, 1 / 6), (0, 0, 1))


def conv3x3_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      padding: int = 1) -> torch.Tensor:
    """Eager reference (the spec): ``F.conv2d(x, weight, bias, padding=padding)``. See :func:`conv3x3`."""
    return F.conv2d(x, weight, bias, padding=padding)


def _check_convolution(op: str, x, weight, bias, kernel: int, layout: str = "KC") -> None:
    """The checks the family shares: x (B, C, H, W); weight 4-D with C = x.shape[1] at ``layout``'s place ("KC":
    (K, C, k, k), a convolution's; "CK": (C, K, k, k), a transposed one's); bias (K,) or None; one dtype, one
    device."""
    _checks.tensor(op, "x", x)
    _checks.like(op, "x", x, (("x", x), ("weight", weight), ("bias", bias)), optional=("bias",))
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be (B, C, H, W), got {tuple(x.shape)}")
    if (weight.dim() != 4 or weight.shape[layout.index("C")] != x.shape[1]
            or tuple(weight.shape[2:]) != (kernel, kernel)):
        raise ValueError(f"{op}: weight must be ({', '.join(layout)}, {kernel}, {kernel}) with C = x.shape[1] = "
                         f"{x.shape[1]}, got {tuple(weight.shape)}")
    k = weight.shape[layout.index("K")]
    if bias is not None and tuple(bias.shape) != (k,):
        raise ValueError(f"{op}: bias must be (K,) = ({k},), got {tuple(bias.shape)}")


def check_args(x, weight, bias=None, padding=1) -> None:
    op = "conv3x3"
    _check_convolution(op, x, weight, bias, 3)
    _checks.integer(op, "padding", padding, minimum=0)
    if min(x.shape[2], x.shape[3]) + 2 * padding < 3:
        raise ValueError(f"{op}: the input {tuple(x.shape[2:])} with padding {padding} is smaller than the 3×3 "
                         "kernel")


def conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, padding: int = 1,
            backend: str | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, padding=padding)`` for a 3×3 kernel, stride 1.

    Args:
        x: (B, C, H, W), any memory format. weight: (K, C, 3, 3). bias: (K,) or None. padding: int >= 0 (zeros).
        All tensors share x's floating dtype and device.
    Returns:
        (B, K, H + 2p - 2, W + 2p - 2). The ``cpu`` backend returns it channels-last; the reference in the layout
        torch's convolution picks (channels-last for a channels-last input).
    """
    check_args(x, weight, bias, padding)
    return dispatch("conv3x3", backend, x, weight, bias, padding)


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """``U = G g Gᵀ`` for each (k, c): (36, C, K) fp32, computed in fp64 (then one rounding)."""
    g = torch.tensor(_G, dtype=torch.float64)
    u = torch.einsum("ak,ockl,bl->abco", g, weight.detach().to(torch.float64), g)
    return u.reshape(36, weight.shape[1], weight.shape[0]).to(torch.float32).contiguous()


def conv3x3_winograd(x, weight, bias=None, padding=1):
    """The ``cpu`` backend: Winograd F(4×4, 3×3) (csrc/cpu/winograd.cpp)."""
    u = _cpu.derived(weight, "winograd", winograd_weight)
    return torch.ops.sam3lt_cpu.winograd_conv3x3.default(x, u, bias, padding)


def supports_winograd(x, weight, bias=None, padding=1) -> str | None:
    return _cpu.launch_reason((x, weight, bias), op="conv3x3")


# ---------------------------------------------------------------- conv_transpose2x2

def conv_transpose2x2_reference(x: torch.Tensor, weight: torch.Tensor,
                                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Eager reference (the spec): ``F.conv_transpose2d(x, weight, bias, stride=2)``. See
    :func:`conv_transpose2x2`."""
    return F.conv_transpose2d(x, weight, bias, stride=2)


def check_transpose_args(x, weight, bias=None) -> None:
    _check_convolution("conv_transpose2x2", x, weight, bias, 2, layout="CK")


def conv_transpose2x2(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      backend: str | None = None) -> torch.Tensor:
    """``F.conv_transpose2d(x, weight, bias, stride=2)`` for a 2×2 kernel: each input pixel writes its own 2×2 block.

    Args:
        x: (B, C, H, W), any memory format. weight: (C, K, 2, 2) (``nn.ConvTranspose2d``'s layout). bias: (K,) or
        None. All tensors share x's floating dtype and device.
    Returns:
        (B, K, 2H, 2W); the ``cpu`` backend returns it channels-last.
    """
    check_transpose_args(x, weight, bias)
    return dispatch("conv_transpose2x2", backend, x, weight, bias)


def gemm_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C, K, 2, 2) -> (C, 4K), columns ordered (di, dj, k): a pixel's GEMM row is its 2×2 block, channels-last."""
    return weight.detach().permute(0, 2, 3, 1).reshape(weight.shape[0], -1).contiguous()


_CHUNK_PIXELS = 1024  # pixels per GEMM at most, in even bands: its output stays in cache for the placing pass
_WORKSPACE = threading.local()  # per thread: a fresh buffer this size would come from the OS page by page


def _workspace(numel: int) -> torch.Tensor:
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.numel() < numel:
        with torch.inference_mode(False):  # a normal tensor: written in and out of inference mode
            buf = _WORKSPACE.buf = torch.empty(numel)
    return buf[:numel]


def conv_transpose2x2_gemm(x, weight, bias=None):
    """The ``cpu`` backend: per band of image rows, one MKL GEMM (pixels × C) @ (C × 4K), then the bias added in
    the pass that places each pixel's 2×2 block (channels-last output)."""
    b, c, h, w = x.shape
    k = weight.shape[1]
    gemm_w = _cpu.derived(weight, "gemm", gemm_weight)
    src = x.permute(0, 2, 3, 1)  # (B, H, W, C): rows of C contiguous when x is channels-last
    out = torch.empty((b, 2 * h, 2 * w, k), dtype=x.dtype)
    bands = -(-h * w // _CHUNK_PIXELS)  # even bands: a thin last one runs its GEMM at a fraction of the speed
    band = -(-h // bands)
    ws = _workspace(band * w * 4 * k)
    for n in range(b):
        for i in range(0, h, band):
            rows = min(band, h - i)
            pixels = src[n, i:i + rows].reshape(rows * w, c)
            blocks = torch.mm(pixels, gemm_w, out=ws[:rows * w * 4 * k].view(rows * w, 4 * k))
            blocks = blocks.view(rows, w, 2, 2, k).permute(0, 2, 1, 3, 4)  # (row, di, col, dj, k)
            placed = out[n, 2 * i:2 * (i + rows)].view(rows, 2, w, 2, k)
            if bias is None:
                placed.copy_(blocks)
            else:
                torch.add(blocks, bias, out=placed)
    return out.permute(0, 3, 1, 2)


def supports_gemm(x, weight, bias=None) -> str | None:
    reason = _cpu.launch_reason((x, weight, bias), extension=False, op="conv_transpose2x2")
    if reason is None and x.numel() == 0:
        return "an empty input"
    return reason


# ---------------------------------------------------------------- conv1x1

def conv1x1_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Eager reference (the spec): ``F.conv2d(x, weight, bias)``. See :func:`conv1x1`."""
    return F.conv2d(x, weight, bias)


def check_1x1_args(x, weight, bias=None) -> None:
    _check_convolution("conv1x1", x, weight, bias, 1)


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
            backend: str | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias)`` for a 1×1 kernel: a GEMM over the pixels.

    Args:
        x: (B, C, H, W), any memory format. weight: (K, C, 1, 1). bias: (K,) or None. Same dtype and device.
    Returns:
        (B, K, H, W); the ``cpu`` backend returns it channels-last.
    """
    check_1x1_args(x, weight, bias)
    return dispatch("conv1x1", backend, x, weight, bias)


# Measured (bench/ops/bench_conv.py, 96²×256, 2 cores): with AVX-512 oneDNN's 1×1 convolution on channels-last
# input is ~12% faster than the GEMM, below AVX-512 (ONEDNN_MAX_CPU_ISA=AVX2) the GEMM, on MKL's AVX-512, wins
GEMM_1X1 = _cpu.onednn_below_avx512()


def conv1x1_gemm(x, weight, bias=None):
    """The ``cpu`` backend: the pixels (channels-last rows) times the weight, on MKL's packing of it (``ops.linear``'s
    cpu backend), where oneDNN runs below AVX-512 (``GEMM_1X1``); elsewhere, and on maps of fewer than
    ``PACK_MIN_ROWS`` pixels, the reference (oneDNN)."""
    if not GEMM_1X1:
        return conv1x1_reference(x, weight, bias)
    b, c, h, w = x.shape
    k = weight.shape[0]
    y = packed_gemm(x.permute(0, 2, 3, 1).reshape(b * h * w, c), weight, weight.view(k, c), bias)
    return conv1x1_reference(x, weight, bias) if y is None else y.view(b, h, w, k).permute(0, 3, 1, 2)


def supports_1x1(x, weight, bias=None) -> str | None:
    return mkl_reason("conv1x1", (x, weight, bias))


# ---------------------------------------------------------------- conv_patch

def conv_patch_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Eager reference (the spec): ``F.conv2d(x, weight, bias, stride=p)``. See :func:`conv_patch`."""
    return F.conv2d(x, weight, bias, stride=weight.shape[-1])


def check_patch_args(x, weight, bias=None) -> None:
    op = "conv_patch"
    _checks.tensor(op, "weight", weight)
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3]:
        raise ValueError(f"{op}: weight must be (K, C, p, p), a square patch, got {tuple(weight.shape)}")
    patch = weight.shape[-1]
    _check_convolution(op, x, weight, bias, patch)
    if min(x.shape[2], x.shape[3]) < patch:
        raise ValueError(f"{op}: the input {tuple(x.shape[2:])} is smaller than one {patch}×{patch} patch")


def conv_patch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
               backend: str | None = None) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride=p)`` for a p×p kernel: each non-overlapping patch times the weight (the
    ViT's patch embedding). Rows and columns past the last whole patch are dropped, as the convolution does.

    Args:
        x: (B, C, H, W), any memory format. weight: (K, C, p, p). bias: (K,) or None. Same dtype and device.
    Returns:
        (B, K, H // p, W // p); the ``cpu`` backend returns it channels-last.
    """
    check_patch_args(x, weight, bias)
    return dispatch("conv_patch", backend, x, weight, bias)


def conv_patch_gemm(x, weight, bias=None):
    """The ``cpu`` backend: (patches × C·p·p) @ (C·p·p × K) on MKL's packing of the weight (``ops.linear``'s cpu
    GEMM; F.linear where it does not pack: fewer than ``PACK_MIN_ROWS`` patches)."""
    b, c, h, w = x.shape
    k, p = weight.shape[0], weight.shape[-1]
    gh, gw = h // p, w // p
    rows = x[:, :, :gh * p, :gw * p].reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, -1)
    flat = weight.reshape(k, -1)
    y = packed_gemm(rows, weight, flat, bias)
    if y is None:
        y = F.linear(rows, flat, bias)
    return y.view(b, gh, gw, k).permute(0, 3, 1, 2)


def supports_patch(x, weight, bias=None) -> str | None:
    return mkl_reason("conv_patch", (x, weight, bias))


define("conv3x3", check_args)
register("conv3x3", "eager", conv3x3_reference)
register("conv3x3", "cpu", conv3x3_winograd, supports_winograd)
define("conv1x1", check_1x1_args)
register("conv1x1", "eager", conv1x1_reference)
register("conv1x1", "cpu", conv1x1_gemm, supports_1x1)
define("conv_transpose2x2", check_transpose_args)
register("conv_transpose2x2", "eager", conv_transpose2x2_reference)
register("conv_transpose2x2", "cpu", conv_transpose2x2_gemm, supports_gemm)
define("conv_patch", check_patch_args)
register("conv_patch", "eager", conv_patch_reference)
register("conv_patch", "cpu", conv_patch_gemm, supports_patch)
