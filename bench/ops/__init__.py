"""Per-op microbenchmarks: every registered backend of each ``sam3lt.ops`` op (``eager`` = the reference,
``triton``, ``cuda``) and the baselines of its family, on the model's real shapes (GPU) or reduced ones (CPU).

A backend that cannot run a case is not called: the dispatch is asked why (``unavailable_reason``) and the
reason is recorded. Each backend's output is compared with the eager reference on the same inputs
(``max_abs_err``; for boolean masks ``mismatch``, the fraction of differing pixels).
"""
from __future__ import annotations

import importlib
import pkgutil

import torch

from ..common import DTYPES, compute_ceiling, error_text, free_cuda, is_oom, rotating, xformers_status
from ._case import Case, nbytes

# one bench_<family>.py per op family, found on disk (the family names of sam3lt/ops and kernels/)
FAMILIES = {m.name.removeprefix("bench_"): importlib.import_module(f"{__name__}.{m.name}")
            for m in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name) if m.name.startswith("bench_")}
ALIASES = {"attention": "window_attention"}  # earlier names still accepted by --families


def select_cases(size: str, quick: bool, families=None) -> list[Case]:
    out = []
    for name, module in FAMILIES.items():
        if families and name not in families:
            continue
        out.extend(c for c in module.cases(size) if size in c.sizes and (c.quick or not quick))
    return out


def count(ctx, families=None) -> int:
    """Progress-bar steps: one per (case, dtype)."""
    return len(select_cases(ctx.size, ctx.quick, families)) * len(ctx.dtypes)


def _unavailable_reason(op: str, backend: str, args) -> str | None:
    from sam3lt.ops import _backend

    fn = getattr(_backend, "unavailable_reason", None)
    if fn is not None and backend != "auto":
        return fn(op, backend, *args)
    try:  # older dispatch without unavailable_reason: ask select() and read its error
        _backend.select(op, backend, *args)
    except Exception as err:  # BackendUnavailable
        return str(err)
    return None


def _compare(ref, out) -> dict:
    """``max_abs_err`` of ``out`` against the eager ``ref`` (the largest over the tensors of a tuple output),
    ``mismatch`` for boolean masks, or ``check`` when the shapes differ."""
    if isinstance(ref, (tuple, list)) and isinstance(out, (tuple, list)) and len(ref) == len(out):
        parts = [_compare(r, o) for r, o in zip(ref, out)]
        merged = {}
        for part in parts:
            for key, value in part.items():
                merged[key] = value if key == "check" else max(merged.get(key, 0.0), value)
        return merged
    if not isinstance(ref, torch.Tensor) or not isinstance(out, torch.Tensor):
        return {}
    if ref.shape != out.shape:
        return {"check": f"shape {tuple(out.shape)} != eager {tuple(ref.shape)}"}
    if ref.dtype == torch.bool:
        return {"mismatch": float((ref != out).float().mean().item())}
    return {"max_abs_err": float((ref.float() - out.float()).abs().max().item()) if ref.numel() else 0.0}


def make_inputs(case: Case, device: torch.device, dtype: torch.dtype):
    """(first, call_with, sets): the case's inputs from a generator seeded with 0 on ``device`` (the same inputs
    in every run), and the sets to rotate through past L2 (:func:`bench.common.rotating`)."""
    gen = torch.Generator(device=device).manual_seed(0)
    first = case.make(device, dtype, gen)
    call_with, sets = rotating(lambda i: first if i == 0 else case.make(device, dtype, gen), nbytes(*first), device)
    return first, call_with, sets


def figures(flops: float, moved: float, ms: float, ceilings: dict, dtype_name: str) -> dict:
    """TFLOP/s and effective GB/s of a call taking ``ms``, and their shares of the measured device ceilings
    (matmul of the dtype, else fp32; the large copy) where ``ceilings`` has them."""
    out = {"TFLOPs": flops / ms / 1e9, "GBps": moved / ms / 1e6}
    peak, peak_dtype = compute_ceiling(ceilings, dtype_name)
    if peak:
        out["frac_compute"] = out["TFLOPs"] / peak
        out["compute_ceiling_dtype"] = peak_dtype
    copy_gbps = ceilings.get("copy", {}).get("GBps")
    if copy_gbps:
        out["frac_bandwidth"] = out["GBps"] / copy_gbps
    return out


def baseline_reason(baseline, device: torch.device, dtype: torch.dtype, xformers_reason: str | None) -> str | None:
    """None if the baseline runs here, else why not (``xformers_reason``: from :func:`bench.common.xformers_status`)."""
    reason = baseline.supports(device, dtype)
    if reason is None and "xformers" in baseline.name:
        reason = xformers_reason
    return reason


def baseline_call(baseline, sets):
    """A zero-argument call of the baseline, its inputs laid out once per set (not timed) and rotated per call."""
    prepared = [baseline.prepare(args) for args in sets]
    fn = prepared[0][0]
    state = {"i": 0}

    def call():
        bargs = prepared[state["i"]][1]
        state["i"] = (state["i"] + 1) % len(prepared)
        return fn(*bargs)
    return call


def run(ctx, ceilings: dict, record, families=None) -> None:
    """Run the cases; ``record(dict)`` is called once per (case, dtype, implementation)."""
    import sam3lt.ops as ops

    _, xformers_reason = xformers_status(ctx.device)
    for case in select_cases(ctx.size, ctx.quick, families):
        for dtype_name in ctx.dtypes:
            ctx.tick(f"{case.op} {dtype_name}")
            base = {"section": "ops", "family": case.family, "op": case.op, "case": case.name, "shape": case.shape,
                    "dtype": dtype_name}
            if ctx.out_of_time():
                record({**base, "impl": "all", "kind": "backend", "status": "skipped",
                        "reason": "time budget of the run exhausted"})
                continue
            dtype = DTYPES[dtype_name]
            try:
                first, call_with, sets = make_inputs(case, ctx.device, dtype)
            except Exception as err:
                record({**base, "impl": "all", "kind": "backend", "status": "error",
                        "reason": f"making inputs: {error_text(err)}"})
                free_cuda()
                continue
            flops, moved = float(case.flops(first)), float(case.bytes(first))
            base.update(flops=flops, bytes=moved, rotated_sets=len(sets))

            def finish(entry, timing):
                entry.update(status="ok", **timing.as_dict(), **figures(flops, moved, timing.ms, ceilings, dtype_name))
                return entry

            ref_out, eager_ms = None, None
            op_fn = getattr(ops, case.op)
            for backend in ctx.backends:
                entry = {**base, "impl": backend, "kind": "backend"}
                reason = _unavailable_reason(case.op, backend, first)
                if reason is not None:
                    record({**entry, "status": "unavailable", "reason": reason})
                    continue
                try:
                    with torch.inference_mode():
                        out = op_fn(*first, backend=backend)
                        ctx.sync()
                        if backend == "eager":
                            ref_out = out
                        elif ref_out is not None:
                            entry.update(_compare(ref_out, out))
                        del out
                        timing = ctx.timer.op(call_with(lambda *a, _b=backend: op_fn(*a, backend=_b)))
                    finish(entry, timing)
                    if backend == "eager":
                        eager_ms = timing.ms
                    elif eager_ms:
                        entry["speedup_vs_eager"] = eager_ms / timing.ms
                except Exception as err:
                    entry.update(status="oom" if is_oom(err) else "error", reason=error_text(err))
                    free_cuda()
                record(entry)
            ref_out = None
            for baseline in case.baselines:
                entry = {**base, "impl": baseline.name, "kind": "baseline", "note": baseline.note}
                reason = baseline_reason(baseline, ctx.device, dtype, xformers_reason)
                if reason is not None:
                    record({**entry, "status": "unavailable", "reason": reason})
                    continue
                try:
                    call = baseline_call(baseline, sets)
                    with torch.inference_mode():
                        timing = ctx.timer.op(call)
                    finish(entry, timing)
                    if eager_ms:
                        entry["speedup_vs_eager"] = eager_ms / timing.ms
                except Exception as err:
                    entry.update(status="oom" if is_oom(err) else "error", reason=error_text(err))
                    free_cuda()
                record(entry)
            sets = first = None
            free_cuda()
