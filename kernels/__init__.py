"""Triton kernels behind ``sam3lt.ops`` (installed as ``sam3lt.kernels``).

One module per op family, each with ``@triton.jit`` kernels and plain-Python launchers that take and return
torch tensors (they allocate the output, pick the block sizes and launch through :func:`._utils.launch`, which
goes through ``torch.library.wrap_triton`` so that the ``sam3lt::`` custom ops stay traceable). The families
are the module names (:data:`FAMILIES`, found on disk); each module's docstring says what its kernels
compute and how.

Each module also holds its launchers' limits: ``supports_<launcher>(*args) -> None | reason`` checks what that
kernel cannot take (head dims, taps, devices, int32 indexing) for arguments the op has already validated.
This package itself is importable without Triton; only the submodules import it. Each op's module in
:mod:`sam3lt.ops` registers its launchers as the ``triton`` backend (through :mod:`sam3lt.ops._triton`).

Triton's interpreter (``TRITON_INTERPRET=1``, numpy on the CPU) is chosen when ``triton`` is *imported*
(its own library functions such as ``tl.sum`` are decorated then), so the variable has to be set before the
first ``import triton`` of the process; ``_utils.INTERPRETED`` tells which way the kernels were built.
"""
from __future__ import annotations

import importlib.util
import os
import pkgutil

# one module per op family, found on disk (adding kernels/<family>.py is all it takes)
FAMILIES = tuple(sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))
FLOATS = ("float32", "float16", "bfloat16")


def triton_missing() -> str | None:
    """None when Triton can be imported, else why not."""
    try:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
    except (ImportError, ValueError) as exc:  # pragma: no cover
        return f"triton cannot be imported ({exc})"
    return None


def interpret_requested() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set now (read at every call)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def float_tensors_on_one_device(tensors) -> str | None:
    """The kernel backends' shared input rule (Triton and CUDA): fp32/fp16/bf16 tensors, all on one device."""
    for t in tensors:
        if str(t.dtype).removeprefix("torch.") not in FLOATS:
            return f"unsupported dtype {t.dtype} (fp32, fp16 and bf16 are supported)"
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        return f"inputs are on different devices ({', '.join(sorted(str(d) for d in devices))})"
    return None
