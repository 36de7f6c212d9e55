"""The ``triton`` backend: a launcher of :mod:`sam3lt.kernels` as a ``sam3lt::`` torch custom op.

:func:`backend` turns ``kernels/<module>.py``'s launcher ``<op>`` and its limits ``supports_<op>`` into the
(implementation, supports) pair an op registers. The launcher becomes a ``torch.library.triton_op`` (schema
inferred from its annotations) whose body allocates the output and launches through ``torch.library.wrap_triton``,
so ``torch.compile`` (fullgraph) and make_fx trace into the launch and ``torch.library.opcheck`` applies; the
body doubles as its fake implementation. A plain eager call (real tensors, no tracing, nothing needing autograd)
runs the launcher directly: the custom-op dispatch costs tens of microseconds per call.
Without Triton nothing is imported: the implementation is a stub and ``supports`` says "triton is not installed".

Interpreter (``TRITON_INTERPRET=1``): CPU tensors are accepted only while the variable is set *and* the kernels
were built for the interpreter (it was set when ``triton`` was first imported). Interpreted kernels cannot be
traced, so there the ops stay opaque under functionalization (torch.compile records the op itself and runs it).
"""
from __future__ import annotations

import importlib

import torch

from .. import kernels as _kernels
from ._backend import set_missing_check

TRITON_MISSING: str | None = _kernels.triton_missing()
INTERPRETED = False
if TRITON_MISSING is None:
    try:
        from ..kernels import _utils

        INTERPRETED = _utils.INTERPRETED
    except Exception as exc:  # pragma: no cover - a broken triton install
        TRITON_MISSING = f"the Triton kernels failed to import ({type(exc).__name__}: {exc})"
set_missing_check("triton", lambda: TRITON_MISSING)


def _define(name: str, fn):
    """``sam3lt::<name>`` as a triton_op (custom_op + fake = the body where triton_op is missing)."""
    qualname = f"sam3lt::{name}"
    if hasattr(torch.library, "triton_op"):
        op = torch.library.triton_op(qualname, fn, mutates_args=())
    else:  # pragma: no cover - torch < 2.6
        op = torch.library.custom_op(qualname, fn, mutates_args=())
        op.register_fake(fn)
    if INTERPRETED:
        # Interpreted kernels read real memory and cannot be recorded by wrap_triton: keep the op itself in
        # functionalized graphs (as torch.export does for triton ops) instead of decomposing it.
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        def _opaque(mode, op_, types, args, kwargs):
            return mode.__torch_dispatch__(op_, types, args, kwargs)

        op.register_torch_dispatch(FunctionalTensorMode, _opaque)
    return op


def _plain_eager_call(args) -> bool:
    """Not traced, no torch_dispatch mode, only plain tensors, nothing that needs autograd."""
    if not _utils.plain_tensors(args):
        return False
    if torch.is_grad_enabled():
        return not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    return True


def backend(op: str, module: str):
    """(implementation, supports) of ``op`` from ``sam3lt.kernels.<module>``: launcher ``op``, limits
    ``supports_<op>``; stubs that say why when Triton is missing."""
    if TRITON_MISSING is not None:
        def missing(*args):  # pragma: no cover - supports() rejects first
            raise RuntimeError(f"sam3lt::{op}: {TRITON_MISSING}")

        return missing, lambda *args: TRITON_MISSING
    kernel_module = importlib.import_module(f"{_kernels.__name__}.{module}")
    body, limits = getattr(kernel_module, op), getattr(kernel_module, f"supports_{op}")
    custom_op = _define(op, body)

    def run(*args):
        return body(*args) if _plain_eager_call(args) else custom_op(*args)

    run.__name__ = f"triton_{op}"
    return run, limits
