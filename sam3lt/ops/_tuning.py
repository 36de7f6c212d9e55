"""Measured backend choice per op and input signature (``auto`` with :func:`autotune`).

Which backend is fastest depends on the device and the shapes (a Triton GEMM with a fused epilogue against
cuBLAS plus an elementwise kernel; a Triton attention kernel against the CUDA one or torch's SDPA), so the
fast path measures instead of guessing: inside :func:`autotune`, the first ``auto`` call of an op with a new
input signature (shapes, strides, dtypes, device, the non-tensor arguments) runs every backend that can take
the inputs — including those registered with ``auto=False`` — a few times, and the fastest is used for that
signature from then on, inside and outside the context, until :func:`clear_tuning`. Calls made while a CUDA
graph is being captured or while ``torch.compile`` traces are never timed (they use a choice made before, or
the default order). :func:`tuned_choices` shows the table (the benchmark reports it).
"""
from __future__ import annotations

import contextlib
import threading
import time

import torch

_TUNED: dict[tuple, tuple[str, dict[str, float]]] = {}
TUNED_OPS: set[str] = set()  # ops with a measured choice: the dispatch looks them up (others pay nothing)
_state = threading.local()
REPS = 5


def _signature(args) -> tuple:
    sig = []
    for a in args:
        if isinstance(a, torch.Tensor):
            sig.append((tuple(a.shape), a.stride(), a.dtype, a.device))
        elif isinstance(a, (list, tuple)):
            sig.append(tuple(_signature(a)))
        else:
            sig.append(a if isinstance(a, (int, float, str, bool, type(None))) else type(a).__name__)
    return tuple(sig)


@contextlib.contextmanager
def autotune():
    """Inside: ``auto`` op calls with a new input signature time their candidate backends and keep the fastest."""
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


def tuning_active() -> bool:
    return getattr(_state, "depth", 0) > 0


def clear_tuning() -> None:
    """Forget every measured choice (e.g. after changing device or kernels)."""
    _TUNED.clear()
    TUNED_OPS.clear()


def tuned_choices() -> list[dict]:
    """The measured choices: op, input signature, chosen backend, and each candidate's time (ms)."""
    return [{"op": op, "signature": repr(sig), "backend": name, "ms": times}
            for (op, sig), (name, times) in _TUNED.items()]


def _capturing(args) -> bool:
    return any(isinstance(a, torch.Tensor) and a.is_cuda for a in args) and torch.cuda.is_current_stream_capturing()


def _time(fn, args) -> float:
    """Mean of REPS calls after one warm-up call (which also compiles a Triton kernel), in ms."""
    cuda = any(isinstance(a, torch.Tensor) and a.is_cuda for a in args)
    fn(*args)
    if cuda:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(REPS):
            fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / REPS
    t0 = time.perf_counter()
    for _ in range(REPS):
        fn(*args)
    return (time.perf_counter() - t0) * 1e3 / REPS


def lookup(op: str, args, candidates: dict, compiling: bool) -> str | None:
    """The measured choice for this call (timing the candidates first when tuning is on), or None for the
    default order. ``candidates``: backend name -> implementation, those that can take these inputs."""
    key = (op, _signature(args))
    hit = _TUNED.get(key)
    if hit is not None and hit[0] in candidates:
        return hit[0]
    if not tuning_active() or compiling or len(candidates) < 2 or _capturing(args):
        return None
    times = {}
    for name, fn in candidates.items():
        try:
            times[name] = _time(fn, args)
        except Exception as exc:  # a candidate that fails here is simply not chosen
            times[name] = float("inf")
            times[f"{name} error"] = f"{type(exc).__name__}: {exc}"[:200]
    finite = {k: v for k, v in times.items() if isinstance(v, float) and v != float("inf")}
    if not finite:
        return None
    best = min(finite, key=finite.get)
    _TUNED[key] = (best, times)
    TUNED_OPS.add(op)
    return best
