"""The ``cpu`` backend: the CPU kernels of the extension ``sam3lt._cpu`` (csrc/cpu/), ``torch.ops.sam3lt_cpu.*``,
and CPU implementations made of torch's own ops where that is the faster path (a GEMM for a transposed
convolution).

``sam3lt._cpu`` needs only torch and a C++ compiler at install time (setup.py builds it wherever torch is
importable). Importing this module never raises: when the extension is missing or was built against another
torch, :data:`IMPORT_ERROR` says why, every ``supports()`` of the backend returns it, ``auto`` runs the eager
reference with one warning (the first time it would have served CPU inputs), and a forced ``cpu`` raises
:class:`~sam3lt.ops.BackendUnavailable` with it.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
import weakref
from collections.abc import Callable

import torch

from . import _tuning
from ._backend import set_missing_check

EXT = None
IMPORT_ERROR: str | None = None
_REBUILD = "rebuild it with `pip install --no-build-isolation -e .` (needs a C++ compiler)"


def _load() -> None:
    global EXT, IMPORT_ERROR
    if os.environ.get("SAM3LT_DISABLE_CPU_EXT", "").strip().lower() in ("1", "true", "yes", "on"):
        IMPORT_ERROR = "the CPU extension is disabled by SAM3LT_DISABLE_CPU_EXT"
        return
    try:
        module = importlib.import_module("sam3lt._cpu")
    except ModuleNotFoundError:
        IMPORT_ERROR = ("the CPU extension sam3lt._cpu is not built (SAM3LT_SKIP_CPU_BUILD, or no torch at install); "
                        + _REBUILD)
        return
    except Exception as exc:  # ImportError (undefined symbol: built against another torch), OSError, ...
        first = str(exc).splitlines()[0] if str(exc) else repr(exc)
        IMPORT_ERROR = f"the CPU extension sam3lt._cpu failed to import: {first}; {_REBUILD}"
        return
    built_for = getattr(module, "__torch_version__", "unknown")
    if built_for not in ("unknown", torch.__version__):
        IMPORT_ERROR = f"sam3lt._cpu was built against torch {built_for}, this is torch {torch.__version__}; {_REBUILD}"
        return
    EXT = module


_load()
set_missing_check("cpu", lambda: IMPORT_ERROR)


def onednn_below_avx512() -> bool:
    """Whether oneDNN runs below AVX-512 here: torch's CPU capability is not AVX512 (an AVX2 CPU), or
    ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` caps it at an AVX2 level. MKL's GEMMs are unaffected by that cap."""
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").strip().upper()
    return torch.backends.cpu.get_cpu_capability() != "AVX512" or isa in ("SSE41", "AVX", "AVX2", "AVX2_VNNI",
                                                                          "AVX2_VNNI_2")


_RULES = threading.local()  # rules(op, tensors) -> reason | None of the innermost decline() blocks


@contextlib.contextmanager
def decline(rule: Callable[[str, tuple], str | None]):
    """Inside the block (this thread), the cpu backend passes over the calls for which ``rule(op, tensors)`` gives
    a reason: ``auto`` runs the next backend. :class:`sam3lt.cpu.PackedGemms` declines the GEMMs it runs itself."""
    rules = _RULES.__dict__.setdefault("stack", [])
    rules.append(rule)
    try:
        yield
    finally:
        rules.pop()


def launch_reason(tensors, extension: bool = True, op: str | None = None) -> str | None:
    """What every CPU kernel needs: the extension (``extension=False``: an implementation on torch's own CPU ops),
    fp32 CPU tensors, no autograd, no torch.compile trace (the kernels keep per-weight state: the compiled graph
    runs the eager reference), and no :func:`decline` rule against the call."""
    if extension and IMPORT_ERROR is not None:
        return IMPORT_ERROR
    tensors = tuple(t for t in tensors if isinstance(t, torch.Tensor))
    if not all(t.is_cpu for t in tensors):
        return "inputs are not on the CPU"
    if any(t.dtype != torch.float32 for t in tensors):
        return f"the CPU kernels take float32, got {sorted({str(t.dtype) for t in tensors})}"
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return "an input requires grad (the CPU kernels have no backward)"
    if torch.compiler.is_compiling():
        return "torch.compile is tracing (the compiled graph runs the eager reference)"
    for rule in reversed(getattr(_RULES, "stack", ())):
        reason = rule(op, tensors)
        if reason is not None:
            return reason
    return None


# id(weight) -> (weak reference, {tag: (the weight's version and storage, derived tensor)}): the kernels' per-weight
# copies (Winograd's transformed weight, MKL's packed one), made once and remade when the weight changes (in place:
# its version counter; or its storage). An entry goes with its weight (tensors compare elementwise: no
# WeakKeyDictionary).
_DERIVED: dict[int, tuple] = {}


def derived(weight: torch.Tensor, tag, make: Callable[[torch.Tensor], object]):
    """``make(weight)``, computed once per ``tag`` and weight state (see ``_DERIVED``)."""
    state = (weight._version, weight.untyped_storage().data_ptr(), weight.storage_offset(), weight.stride())
    ident = id(weight)
    entry = _DERIVED.get(ident)
    if entry is None or entry[0]() is not weight:
        entry = _DERIVED[ident] = (weakref.ref(weight, lambda _, ident=ident: _DERIVED.pop(ident, None)), {})
    hit = entry[1].get(tag)
    if hit is None or hit[0] != state:
        with torch.inference_mode(False), torch.no_grad():  # usable in and out of inference mode
            hit = entry[1][tag] = (state, make(weight))
    return hit[1]


# Per op, the keys per query (low, high; None: no bound) where the CPU attention kernel was measured faster than
# the reference (torch's CPU flash attention), 2 cores: ViT heads of 64 with RoPE 1.2-1.4x at 576 keys, 0.98x at
# 1,024, 0.95x at 2,304 (the block of scores kept in L2 holds too few rows); DETR heads of 32 1.07-1.1x at 576 to
# 2,304 keys, 0.9x at 5,184; the box bias 1.6-2.6x at 576 to 5,184 keys (the reference materialises the bias).
# Under 64 keys the per-task GEMMs are thin (0.4x at 32). Elsewhere auto runs the reference.
ATTENTION_KEYS = {"window_attention": (64, 768), "masked_attention": (64, 2304), "box_bias_attention": (64, None)}


def attention_reason(op: str, tensors) -> str | None:
    """Why :func:`attention` cannot run ``op`` on these tensors, or None."""
    reason = launch_reason(tensors, op=op)
    if reason is None and not _attention_available():
        reason = "this torch's MKL does not export sgemm / vmsExp (the CPU attention kernel's GEMM and exp)"
    return reason


def attention_evidence(op: str, keys: int):
    """The auto order for attention op ``op`` on CPU inputs with ``keys`` keys per query (``CPU_EVIDENCE``): None
    (the default order: the kernel) within ``ATTENTION_KEYS[op]``, else the reference first."""
    low, high = ATTENTION_KEYS[op]
    if low <= keys and (high is None or keys <= high):
        return None
    where = f"{low} to {high}" if high is not None else f"{low} or more"
    return (f"{keys} keys per query: the cpu attention kernel was measured faster than the reference at {where} "
            "keys only", _tuning.VENDOR_FIRST)


def _attention_available() -> bool:
    global _ATTENTION
    if _ATTENTION is None:
        _ATTENTION = EXT is not None and bool(torch.ops.sam3lt_cpu.attention_available())
    return _ATTENTION


_ATTENTION: bool | None = None


def attention(q, k, v, bias_y=None, bias_x=None, key_mask=None, cos=None, sin=None) -> torch.Tensor:
    """``softmax(q·kᵀ·D^-½ + bias) · v`` for fp32 CPU (B, heads, L, D) q, k, v (any strides, last dim contiguous):
    (B, Lq, heads, D), heads merged in memory. bias: ``bias_y[..., y] + bias_x[..., x]`` at key ``y·Wg + x``;
    key_mask (B, Lk) bool, True = attend (no valid key: zeros); cos, sin (L, D): RoPE on q and k first
    (:func:`~sam3lt.ops.window_attention.apply_rope`'s formula). csrc/cpu/attention.cpp."""
    q, k, v = (t if t.stride(-1) == 1 and (t.stride(2) >= t.shape[-1] or t.shape[2] == 1) else t.contiguous()
               for t in (q, k, v))
    return torch.ops.sam3lt_cpu.attention(q, k, v, q.shape[-1] ** -0.5, bias_y, bias_x, key_mask, cos, sin)
