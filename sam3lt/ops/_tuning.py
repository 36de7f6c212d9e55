"""How ``auto`` chooses: a measured choice per op and input signature (:func:`autotune`), else evidence.

Which backend is fastest depends on the device and the shapes (a Triton GEMM with a fused epilogue against
cuBLAS plus an elementwise kernel; a Triton attention kernel against the CUDA one or torch's SDPA), so the
fast path measures instead of guessing: inside :func:`autotune`, the first ``auto`` call of an op with a new
input signature (shapes, strides, dtypes, device, the non-tensor arguments) runs every backend that can take
the inputs — including those registered with ``auto=False`` — a few times, and the fastest is used for that
signature from then on, inside and outside the context, until :func:`clear_tuning`. Calls made while a CUDA
graph is being captured or while ``torch.compile`` traces are never timed (they use a choice made before, or
the default order). :func:`tuned_choices` shows the table (the benchmark reports it).

Measured choices on CUDA also go to an on-disk cache keyed by device, compute capability and software versions
(:mod:`sam3lt.ops.autotune`), which later processes read. Without a measurement, ``auto`` on CUDA chooses by
evidence (:data:`EVIDENCE`): the vendor kernel (SDPA / cuBLAS, i.e. the eager reference on torch's CUDA kernels)
for compute-bound ops, where the static audit (bench/results/static) puts the custom kernels below it, and the
custom kernels where they replace a chain of small memory-bound torch kernels. Every choice carries the rule
that made it (:func:`sam3lt.ops.explain` shows it).
"""
from __future__ import annotations

import contextlib
import re
import threading
import time

import torch

from . import autotune as _disk

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


def _disk_key(op: str, sig: tuple) -> str:
    """The on-disk key: the signature without device indices (the file already names the device)."""
    return f"{op}|{re.sub(r'device[(]type=.cuda., index=[0-9]+[)]', 'cuda', repr(sig))}"


def _cuda_device(args):
    for a in args:
        if isinstance(a, torch.Tensor):
            if a.is_cuda:  # a property: cheaper than a.device (called on every op dispatch)
                return a.device
        if isinstance(a, (list, tuple)):
            d = _cuda_device(a)
            if d is not None:
                return d
    return None


_FILES: dict = {}  # device -> (cache file, identity) or (None, None): asked once per device and process


def _disk_file(args) -> tuple[str, dict] | tuple[None, None]:
    device = _cuda_device(args)
    if device is None:
        return None, None
    if device not in _FILES:
        ident = _disk.device_identity(device)
        _FILES[device] = (_disk.cache_file(ident), ident) if ident is not None else (None, None)
    return _FILES[device]


@contextlib.contextmanager
def autotune():
    """Inside: ``auto`` op calls with a new input signature time their candidate backends and keep the fastest,
    for this process and, on CUDA, in the on-disk cache that later processes read (:mod:`sam3lt.ops.autotune`)."""
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth


def tuning_active() -> bool:
    return getattr(_state, "depth", 0) > 0


def clear_tuning() -> None:
    """Forget every measured choice of this process (e.g. after changing kernels); the on-disk cache stays (delete
    its folder, :func:`sam3lt.ops.autotune.cache_dir`, to measure afresh) but is read again on the next call."""
    _TUNED.clear()
    TUNED_OPS.clear()
    _FILES.clear()
    _disk.forget_loaded()


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


def _fmt_times(times: dict) -> str:
    return ", ".join(f"{k} {v:.3g} ms" for k, v in times.items() if isinstance(v, (int, float)) and v != float("inf"))


def lookup(op: str, args, candidates: dict, compiling: bool) -> tuple[str, str] | None:
    """(backend, rule) of the measured choice for this call (timing the candidates first when tuning is on), or
    None. ``candidates``: backend name -> implementation, those that can take these inputs."""
    sig = _signature(args)
    hit = _TUNED.get((op, sig))
    if hit is not None and hit[0] in candidates:
        return hit[0], f"measured in this process: {hit[0]} fastest ({_fmt_times(hit[1])})"
    path, ident = _disk_file(args) if not compiling else (None, None)  # no file access while tracing
    if path is not None:
        entry = _disk.load(path).get(_disk_key(op, sig))
        if entry is not None and entry.get("backend") in candidates:
            _TUNED[(op, sig)] = (entry["backend"], dict(entry.get("ms", {})))
            TUNED_OPS.add(op)
            return entry["backend"], (f"measured (on-disk cache {path}): {entry['backend']} fastest "
                                      f"({_fmt_times(entry.get('ms', {}))})")
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
    _TUNED[(op, sig)] = (best, times)
    TUNED_OPS.add(op)
    if path is not None:
        try:
            _disk.store(path, ident, _disk_key(op, sig), best, times)
        except OSError:  # a read-only cache dir only costs the next process a measurement
            pass
    return best, f"measured now: {best} fastest ({_fmt_times(times)})"


def has_disk_choices(op: str, args, compiling: bool) -> bool:
    """Whether the on-disk cache of these inputs' device holds a choice for ``op`` (a dict lookup after the first
    call; never while torch.compile traces: choices loaded before are in memory by then)."""
    if compiling:
        return False
    path, _ = _disk_file(args)
    return path is not None and op in _disk.ops_in(path)


# ---------------------------------------------------------------- evidence, when nothing was measured

# orders for CUDA inputs (VENDOR_FIRST also for CPU inputs where CPU_EVIDENCE puts the reference first); "cpu"
# (CPU tensors only) comes last so that every order names every backend
VENDOR_FIRST = ("eager", "cuda", "triton", "cpu")
CUSTOM_FIRST = ("cuda", "triton", "eager", "cpu")
_COMPUTE = ("compute-bound: the vendor kernel (eager = torch's {what}) until a custom kernel is measured faster "
            "(sam3lt.ops.autotune); bench/results/static estimates the custom ones below it")
_CHAIN = "memory-bound: the custom kernel replaces a chain of small torch kernels ({what})"
# op -> (rule, order of preference on CUDA inputs)
EVIDENCE: dict[str, tuple[str, tuple[str, ...]]] = {
    "window_attention": (_COMPUTE.format(what="SDPA"), VENDOR_FIRST),
    "masked_attention": (_COMPUTE.format(what="SDPA"), VENDOR_FIRST),
    "box_bias_attention": (_COMPUTE.format(what="bias + SDPA"), VENDOR_FIRST),
    "linear": (_COMPUTE.format(what="cuBLAS GEMM + epilogue"), VENDOR_FIRST),
    "mask_product": (_COMPUTE.format(what="cuBLAS batched GEMM"), VENDOR_FIRST),
    "conv3x3": (_COMPUTE.format(what="cuDNN convolution; the cpu backend's Winograd takes only CPU inputs"),
                VENDOR_FIRST),
    "conv_transpose2x2": (_COMPUTE.format(what="cuDNN convolution; the cpu backend's GEMM takes only CPU inputs"),
                          VENDOR_FIRST),
    "conv1x1": (_COMPUTE.format(what="cuDNN convolution; the cpu backend's GEMM takes only CPU inputs"), VENDOR_FIRST),
    "conv_patch": (_COMPUTE.format(what="cuDNN convolution; the cpu backend's GEMM takes only CPU inputs"),
                   VENDOR_FIRST),
    "add_layer_norm": (_CHAIN.format(what="add, then LayerNorm"), CUSTOM_FIRST),
    "repmixer_dwconv": (_CHAIN.format(what="pad, conv1d, bias, residual"), CUSTOM_FIRST),
    # Triton fuses both convolutions into one launch; the cuda backend runs them as two
    "repmixer_block_dwconv": (_CHAIN.format(what="two depthwise convs with their adds") + "; Triton's is one fused "
                              "launch where cuda's is two", ("triton", "cuda", "eager", "cpu")),
    "upsample_nearest_add": (_CHAIN.format(what="interpolate, add"), CUSTOM_FIRST),
    "masks_to_binary": (_CHAIN.format(what="sigmoid, interpolate, threshold"), CUSTOM_FIRST),
    "box_bias": (_CHAIN.format(what="~30 small ops of the box MLPs per layer"), CUSTOM_FIRST),
    "box_refine": (_CHAIN.format(what="sigmoid, inverse sigmoid, sine encoding"), CUSTOM_FIRST),
    "rope_qkv": (_CHAIN.format(what="split, rotate pairs, multiply-add, concatenate"), CUSTOM_FIRST),
}


# op -> rule(args) -> (rule, order) or None, for CPU inputs: where the cpu backend's kernel was measured faster
# than the reference on some shapes only (registered by the op's module)
CPU_EVIDENCE: dict = {}


def evidence_order(op: str, args, default: tuple[str, ...]) -> tuple[tuple[str, ...], str]:
    """(order to try, rule) without a measurement: by evidence on CUDA inputs (or CPU inputs, for the ops in
    :data:`CPU_EVIDENCE`), else the default order."""
    cuda = _cuda_device(args) is not None
    if cuda and op in EVIDENCE:
        rule, order = EVIDENCE[op]
        return order, f"evidence, {rule}"
    if not cuda and op in CPU_EVIDENCE:
        hit = CPU_EVIDENCE[op](args)
        if hit is not None:
            return hit[1], f"evidence, {hit[0]}"
    where = "CUDA inputs, no evidence recorded for this op" if cuda else "inputs not on CUDA"
    return default, f"default order {' -> '.join(default)} ({where}): the first backend that can take the inputs"
