"""Loader of the compiled extension ``sam3lt._C`` (csrc/): imports it if it can, and records why not.

Importing this module never raises: a missing extension (pure-Python install), a broken one (ABI mismatch, built
against another torch) or a machine without a usable GPU only make :func:`status` report ``(False, reason)``,
and the ``cuda`` backend of :mod:`sam3lt.ops` passes the reason on (``auto`` moves on to Triton / eager).

- :data:`EXT` is the imported module or None; :data:`IMPORT_ERROR` is None or why the import failed.
- :func:`status` adds the runtime conditions (a CUDA GPU of an architecture the extension was built for).
- :func:`device_reason` checks one CUDA device (cached per device).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

import torch

EXT = None
IMPORT_ERROR: str | None = None
TORCH_VERSION: str | None = None  # the torch version the extension was built against
ARCHS: tuple[str, ...] = ()  # its TORCH_CUDA_ARCH_LIST entries, e.g. ("8.0", "9.0")

_REBUILD = "rebuild it with `pip install --no-build-isolation -e .` (needs nvcc)"


def _load() -> None:
    global EXT, IMPORT_ERROR, TORCH_VERSION, ARCHS
    if os.environ.get("SAM3LT_DISABLE_CUDA_EXT", "").strip().lower() in ("1", "true", "yes", "on"):
        IMPORT_ERROR = "the CUDA extension is disabled by SAM3LT_DISABLE_CUDA_EXT"
        return
    try:
        missing = "sam3lt._C" not in sys.modules and importlib.util.find_spec("sam3lt._C") is None
    except (ImportError, ValueError):
        missing = False  # let the import below report it
    if missing:
        IMPORT_ERROR = ("the CUDA extension sam3lt._C is not built (installed without a CUDA toolkit or with "
                        f"SAM3LT_SKIP_CUDA_BUILD=1); {_REBUILD}")
        return
    try:
        module = importlib.import_module("sam3lt._C")
    except Exception as exc:  # ImportError (undefined symbol: ABI mismatch), OSError (missing libraries), ...
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        hint = " (built against another torch?)" if "undefined symbol" in text else ""
        IMPORT_ERROR = f"the CUDA extension sam3lt._C failed to import{hint}: {text}; {_REBUILD}"
        return
    built_for = getattr(module, "__torch_version__", "unknown")
    if built_for != "unknown" and built_for != torch.__version__:
        IMPORT_ERROR = (f"the CUDA extension sam3lt._C was built against torch {built_for}, this is torch "
                        f"{torch.__version__}; {_REBUILD}")
        return
    EXT = module
    TORCH_VERSION = built_for
    ARCHS = tuple(a for a in getattr(module, "__cuda_archs__", "").split(",") if a)


_load()


def _parse_arch(arch: str) -> tuple[int, int, bool] | None:
    """"8.0" -> (8, 0, False), "9.0+PTX" -> (9, 0, True), "9.0a" -> (9, 0, False); None if unreadable."""
    ptx = arch.upper().endswith("+PTX")
    core = arch[:-4] if ptx else arch
    core = core.rstrip("aAfF")
    try:
        major, minor = core.split(".")
        return int(major), int(minor), ptx
    except ValueError:
        return None


def arch_supported(capability: tuple[int, int]) -> bool:
    """Whether the extension has code for a GPU of this compute capability: SASS for the same major version
    and a lower or equal minor one, or PTX for a lower or equal version. Unknown arch lists are accepted."""
    parsed = [_parse_arch(a) for a in ARCHS]
    if not parsed or any(p is None for p in parsed):
        return True
    for major, minor, ptx in parsed:
        if ptx and (major, minor) <= tuple(capability):
            return True
        if major == capability[0] and minor <= capability[1]:
            return True
    return False


_DEVICE_REASONS: dict[int, str | None] = {}


def device_reason(index: int) -> str | None:
    """None if the extension can run on CUDA device ``index``, else why not (cached per device; a plain dict
    rather than functools.lru_cache, so that torch.compile traces the backend's supports() checks cleanly)."""
    if EXT is None:
        return IMPORT_ERROR
    if index not in _DEVICE_REASONS:
        _DEVICE_REASONS[index] = _device_reason(index)
    return _DEVICE_REASONS[index]


def _device_reason(index: int) -> str | None:
    capability = torch.cuda.get_device_capability(index)
    if capability < (8, 0):
        return f"the CUDA kernels need compute capability 8.0 or newer (cuda:{index} is sm_{capability[0]}{capability[1]})"
    if not arch_supported(capability):
        return (f"sam3lt._C was built for {', '.join('sm_' + a for a in ARCHS)}, not for cuda:{index} "
                f"(sm_{capability[0]}{capability[1]}); rebuild with TORCH_CUDA_ARCH_LIST="
                f"\"{capability[0]}.{capability[1]}\"")
    return None


def status() -> tuple[bool, str]:
    """(available, reason): whether the cuda backend can run here (extension imported, a supported CUDA GPU), and
    a sentence saying why not, or what it runs on."""
    if EXT is None:
        return False, IMPORT_ERROR or "the CUDA extension sam3lt._C is not loaded"
    built = f"sam3lt._C (built for {', '.join(ARCHS) or 'unknown archs'}, torch {TORCH_VERSION})"
    if not torch.cuda.is_available():
        return False, f"{built} is importable, but no CUDA GPU is available"
    index = torch.cuda.current_device()
    reason = device_reason(index)
    if reason is not None:
        return False, reason
    return True, f"{built} on cuda:{index} ({torch.cuda.get_device_name(index)})"
