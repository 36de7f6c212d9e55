"""Linear layer with a fused epilogue: ``act(x @ weight.T + bias) (+ residual)``.

The eager reference is torch's ``F.linear`` (cuBLAS on a GPU, MKL on the CPU) followed by separate elementwise
kernels; the Triton backend is one GEMM with bias, activation and residual applied to the fp32 accumulator and a
single rounding at the store. Which one is faster depends on the shape, so the Triton GEMM is registered with
``auto=False``: it runs only where a call site (or the process) names the ``triton`` backend.

The ``cpu`` backend (fp32 CPU tensors) is MKL's sgemm on the weight packed once: ``F.linear`` packs it inside
every call, ~8% of a ViT GEMM's time on 2 cores (bench/ops/bench_linear.py). The packed copy (~1.6x the
weight's memory) is kept per weight, for the row count of its first call of >= ``PACK_MIN_ROWS`` rows (MKL packs
for one); other calls run the reference.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks, _cpu, _cuda, _triton
from ._backend import define, dispatch, register

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # gelu: exact (erf), torch's default


_INPLACE = {"gelu": torch.ops.aten.gelu_, "relu": torch.relu_}


def writable(y: torch.Tensor) -> bool:
    """Whether an eager reference may overwrite ``y``, a tensor it just created itself (never an input or a
    parameter): not where autograd may keep it for the backward. Why in place at all: see :func:`linear_reference`."""
    return not (torch.is_grad_enabled() and y.requires_grad)


def linear_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """Eager reference (the spec), in the input dtype with torch's rounding after each step:
    ``F.linear``, then the activation, then ``+ residual``. See :func:`linear`.

    The epilogue is applied in place on the GEMM's fresh output (the same values, bitwise). Why: on the CPU a
    fresh buffer above glibc's mmap threshold (128 KiB up to 32 MiB) comes from the OS as new pages, so every
    out-of-place epilogue of a large GEMM pays a page fault per 4 KiB (the ViT fc1 output at 336² is 11 MiB:
    ~2,700 faults) on top of its memory traffic. Out of place where autograd keeps the output for the backward.
    """
    y = F.linear(x, weight, bias)
    inplace = writable(y)
    if activation is not None:
        y = _INPLACE[activation](y) if inplace else ACTIVATIONS[activation](y)
    if residual is not None:
        y = y.add_(residual) if inplace else y + residual
    return y


def check_args(x, weight, bias=None, activation=None, residual=None) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`linear`."""
    op = "linear"
    _checks.tensor(op, "x", x)
    _checks.like(op, "x", x, (("x", x), ("weight", weight), ("bias", bias), ("residual", residual)),
                 optional=("bias", "residual"))
    if activation is not None and activation not in ACTIVATIONS:
        raise ValueError(f"{op}: activation must be None or one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if x.dim() < 1:
        raise ValueError(f"{op}: x must have at least one dimension (..., K)")
    if weight.dim() != 2 or weight.shape[1] != x.shape[-1]:
        raise ValueError(f"{op}: weight must be (N, K) with K = x.shape[-1] = {x.shape[-1]}, got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{op}: bias must be (N,) = ({weight.shape[0]},), got {tuple(bias.shape)}")
    out_shape = (*x.shape[:-1], weight.shape[0])
    if residual is not None and tuple(residual.shape) != out_shape:
        raise ValueError(f"{op}: residual must have the output shape {out_shape}, got {tuple(residual.shape)}")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, activation: str | None = None,
           residual: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """``act(x @ weight.T + bias) (+ residual)``.

    Args:
        x: (..., K). weight: (N, K) (``nn.Linear`` layout; any strides). bias: (N,) or None.
        activation: None, "gelu" (exact erf GELU, ``F.gelu``'s default) or "relu", applied before the residual.
        residual: None or a tensor of the output shape (..., N), added last.
        All tensors share x's floating dtype and device.
    Returns:
        (..., N) in x's dtype. Under ``auto`` torch's F.linear + elementwise ops run (the triton GEMM is used
        only when the triton backend is named: per call with ``backend="triton"`` or process-wide).
    """
    check_args(x, weight, bias, activation, residual)
    return dispatch("linear", backend, x, weight, bias, activation, residual)


PACK_MIN_ROWS = 128  # below, the GEMM is small and F.linear's own packing costs little


def linear_packed(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  activation: str | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The ``cpu`` backend: MKL's sgemm on a weight packed once, then the reference's epilogue (in place)."""
    k, n = x.shape[-1], weight.shape[0]
    rows = x.numel() // k if k else 0
    y = packed_gemm(x.reshape(rows, k), weight, weight, bias) if k else None
    if y is None:
        return linear_reference(x, weight, bias, activation, residual)
    y = y.view(*x.shape[:-1], n)
    if activation is not None:
        y = _INPLACE[activation](y)
    return y if residual is None else y.add_(residual)


def packed_gemm(rows: torch.Tensor, key: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """``rows @ weight.T + bias`` (rows: (M, K), weight: (N, K)) on MKL's packing of ``weight``, kept with ``key``
    (the parameter ``weight`` is a view of, e.g. a 1×1 convolution's); None where it does not pack (fewer than
    ``PACK_MIN_ROWS`` rows, or another row count than the one packed for)."""
    m = rows.shape[0]
    if m < PACK_MIN_ROWS:
        return None
    packed_rows, packed, dense = _cpu.derived(key, "mkl", lambda _: _pack(weight, m))
    if packed is None or m != packed_rows:
        return None
    return torch.ops.mkl._mkl_linear(rows.contiguous(), packed, dense, None if bias is None else bias.contiguous(), m)


def _pack(weight: torch.Tensor, rows: int) -> tuple:
    """(rows, MKL's packed weight for that many rows, the dense weight); rows 0 when not worth packing."""
    dense = weight.detach().contiguous()
    if rows < PACK_MIN_ROWS or dense.numel() == 0:
        return 0, None, dense
    return rows, torch.ops.mkl._mkl_reorder_linear_weight(dense, rows), dense


_MKL = torch.backends.mkl.is_available()


def mkl_reason(op: str, tensors) -> str | None:
    """Why the cpu backend's MKL GEMMs (:func:`packed_gemm`) cannot run ``op`` on these tensors, or None."""
    return "this torch has no MKL" if not _MKL else _cpu.launch_reason(tensors, extension=False, op=op)


def supports_packed(x, weight, bias=None, activation=None, residual=None) -> str | None:
    return mkl_reason("linear", (x, weight, bias, residual))


# The Triton GEMM and the cuda backend (cuBLAS through the reference) run only when named (auto=False): under auto
# the eager reference runs (cuBLAS + elementwise ops), unless sam3lt.ops.autotune measured another faster.
define("linear", check_args)
register("linear", "eager", linear_reference)
register("linear", "triton", *_triton.backend("linear", "linear"), auto=False)
register("linear", "cuda", *_cuda.torch_backend(linear_reference), auto=False)
register("linear", "cpu", linear_packed, supports_packed)
