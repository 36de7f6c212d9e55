"""The ``cuda`` backend: the ops of the compiled extension ``sam3lt._C`` (csrc/), ``torch.ops.sam3lt_C.*``.

The extension is loaded by :mod:`sam3lt._ext`, which never raises; when it is missing or unusable every
``supports()`` here returns the recorded reason, so ``auto`` moves on (Triton, then eager) and a forced ``cuda``
raises :class:`~sam3lt.ops.BackendUnavailable` with it. :func:`status` says whether the backend can run.
Each op's module registers ``backend(op, supports)`` with the kernel's limits (head dims, int32 sizes) next to the
op; the checks every kernel shares (extension, dtypes, one CUDA device) are :func:`launch_reason`. Schemas: csrc/ops.h.

Ops without a kernel of their own (:func:`torch_ops`) register :func:`torch_backend`: their eager reference on
torch's CUDA kernels (cuBLAS for the GEMMs) with ``auto=False``, so that a model forced to ``cuda`` runs end to end.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..kernels import float_tensors_on_one_device
from ._backend import set_missing_check

_INT32_MAX = 2**31 - 1


_KERNEL_OPS: list[str] = []  # filled by backend(): one entry per op of csrc/ops.h
_TORCH_OPS: list[str] = []   # filled by torch_backend()


def kernel_ops() -> list[str]:
    """The ops with a kernel in the extension (registered through :func:`backend`; their list is csrc/ops.h)."""
    return sorted(_KERNEL_OPS)


def torch_ops() -> list[str]:
    """The ops whose cuda backend is their reference on torch's kernels (registered through :func:`torch_backend`)."""
    return sorted(_TORCH_OPS)


def status() -> tuple[bool, str]:
    """(available, reason): whether the cuda backend can run here, and why not / what it runs on."""
    return _ext.status()


def extension_reason() -> str | None:
    """None when ``sam3lt._C`` is loaded, else why not (no GPU check)."""
    return None if _ext.EXT is not None else (_ext.IMPORT_ERROR or "sam3lt._C is not loaded")


def missing_reason() -> str | None:
    """None when the extension is loaded and has code for the current GPU, else why the cuda backend is missing
    (asked by the dispatch only when CUDA inputs fall back)."""
    reason = extension_reason()
    if reason is None and torch.cuda.is_available():
        reason = _ext.device_reason(torch.cuda.current_device())
    return reason


set_missing_check("cuda", missing_reason)


def launch_reason(tensors) -> str | None:
    """What every kernel needs: the extension loaded, float dtypes, all on one supported CUDA device."""
    tensors = [t for t in tensors if isinstance(t, torch.Tensor)]
    reason = extension_reason() or float_tensors_on_one_device(tensors)
    if reason is not None:
        return reason
    device = tensors[0].device
    if device.type != "cuda":
        return f"inputs are on {'the CPU' if device.type == 'cpu' else device.type}; the CUDA kernels need CUDA tensors"
    index = device.index if device.index is not None else 0  # CUDA tensors always carry their index
    if index not in _ext._DEVICE_REASONS and torch.compiler.is_compiling():
        # not known yet and torch.compile is tracing: do not query the device inside the trace (an unsupported
        # architecture then fails at launch with CUDA's "no kernel image" error instead of falling back)
        return None
    return _ext.device_reason(index)


def fits_int32(*values: int) -> str | None:
    if any(v > _INT32_MAX for v in values):
        return "a size exceeds 2**31 - 1 (the kernels index rows with int32)"
    return None


def head_dim_reason(head_dim: int) -> str | None:
    """The attention kernels are instantiated for head dims 16/32/64/128; multiples of 8 are zero-padded."""
    if head_dim % 8 or head_dim <= 0:
        return f"head dim {head_dim} is not a multiple of 8"
    if head_dim > 128:
        return f"head dim {head_dim} > 128"
    return None


def backend(op: str, supports):
    """(implementation, supports) of ``sam3lt_C::<op>``."""
    _KERNEL_OPS.append(op)
    if _ext.EXT is None:
        def missing(*args):  # pragma: no cover - supports() rejects first
            raise RuntimeError(f"sam3lt_C::{op}: {extension_reason()}")

        return missing, supports
    return getattr(torch.ops.sam3lt_C, op).default, supports  # the overload: less Python per call than the packet


def torch_backend(reference):
    """(implementation, supports) for an op without a kernel: its reference on CUDA tensors (register auto=False)."""
    _TORCH_OPS.append(reference.__name__.removesuffix("_reference"))  # foo_reference serves op foo
    return reference, lambda *args: launch_reason(args)
