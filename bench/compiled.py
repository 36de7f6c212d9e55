"""HF transformers' model under ``torch.compile`` (mode "default"), GPU only: first the whole model compiled for the
batch-1 latency (the goals table's side-by-side reference, so it comes first), then each component compiled on its
own and called with its captured inputs (as in :mod:`bench.layers`). Compilation time (the first call) is recorded
as ``compile_s``.

On the CPU every row says "skipped on CPU". Compiling is slow (the HF ViT alone took 51 s on an H200, the
whole model 88 s), so the section stops starting new compilations once ``--compile-budget-s`` is spent and
says so in the rows it skips.
"""
from __future__ import annotations

import time

import torch

from .common import DTYPES, PeakMemory, error_text, free_cuda, is_oom
from .layers import COMPONENTS, capture_hf, module_at
from .models import input_bytes, make_inputs, param_bytes

SKIPPED_CPU = "skipped on CPU (torch.compile is measured on GPU only)"


def dtypes_for(ctx) -> list[str]:
    return ["bfloat16"] if ctx.quick and "bfloat16" in ctx.dtypes else list(ctx.dtypes)


def count(ctx) -> int:
    return len(dtypes_for(ctx)) * (len(COMPONENTS) + 1)


def skip_all(ctx, record, reason: str) -> None:
    for dtype_name in dtypes_for(ctx):
        for label, path in COMPONENTS:
            ctx.tick("compile skipped")
            record({"section": "layers", "dtype": dtype_name, "impl": "hf:compile", "component": label,
                    "module": path, "status": "skipped", "reason": reason})
        ctx.tick("compile skipped")
        record({"section": "e2e", "dtype": dtype_name, "impl": "hf:compile", "kind": "images", "images": 1,
                "prompts": 1, "status": "skipped", "reason": reason})


def _first_call(ctx, fn) -> float:
    start = time.perf_counter()
    fn()
    ctx.sync()
    return time.perf_counter() - start


def run(ctx, record, hf, config, budget_s: float) -> None:
    if not ctx.cuda:
        skip_all(ctx, record, SKIPPED_CPU)
        return
    start = time.time()
    mem = PeakMemory(ctx.device)
    for dtype_name in dtypes_for(ctx):
        dtype = DTYPES[dtype_name]
        hf.to(dtype)
        torch._dynamo.reset()
        # the whole model first: its batch-1 latency is the side-by-side reference of the goals table
        ctx.tick(f"compile whole model {dtype_name}")
        entry = {"section": "e2e", "dtype": dtype_name, "impl": "hf:compile", "kind": "images", "images": 1,
                 "prompts": 1, "images_in_call": 1}
        if time.time() - start > budget_s or ctx.out_of_time():
            record({**entry, "status": "skipped", "reason": f"compile budget ({budget_s:g} s) spent"})
        else:
            inputs = make_inputs(config, 1, 1, ctx.device, dtype)
            try:
                compiled = torch.compile(hf)
                with torch.inference_mode():
                    entry["compile_s"] = _first_call(ctx, lambda: compiled(**inputs))
                    mem.reset()
                    before = mem.current()
                    timing = ctx.timer.call(lambda: compiled(**inputs))
                    peak = mem.peak()
                entry.update(status="ok", **timing.as_dict(), images_per_s=1e3 / timing.ms,
                             prompts_per_s=1e3 / timing.ms,
                             peak_bytes=int(peak - before + param_bytes(hf) + input_bytes(inputs)),
                             memory="weights + inputs + peak working memory (CUDA allocator)")
            except Exception as err:
                entry.update(status="oom" if is_oom(err) else "error", reason=error_text(err))
                free_cuda()
            record(entry)
            compiled = inputs = None
            torch._dynamo.reset()
            free_cuda()
        errors = []
        try:
            (captured, _), _ = capture_hf(hf, config, ctx, dtype, errors.append)
        except Exception as err:
            captured = {}
            errors.append(err)
        for label, path in COMPONENTS:
            ctx.tick(f"compile {label} {dtype_name}")
            entry = {"section": "layers", "dtype": dtype_name, "impl": "hf:compile", "component": label,
                     "module": path}
            if time.time() - start > budget_s or ctx.out_of_time():
                record({**entry, "status": "skipped", "reason": f"compile budget ({budget_s:g} s) spent"})
                continue
            if path not in captured:
                reason = error_text(errors[0]) if errors else "not called in the captured forward"
                record({**entry, "status": "unavailable", "reason": reason})
                continue
            args, kwargs = captured[path]
            try:
                compiled = torch.compile(module_at(hf, path))
                with torch.inference_mode():
                    entry["compile_s"] = _first_call(ctx, lambda: compiled(*args, **kwargs))
                    timing = ctx.timer.call(lambda: compiled(*args, **kwargs))
                entry.update(status="ok", **timing.as_dict())
            except Exception as err:
                entry.update(status="oom" if is_oom(err) else "error", reason=error_text(err))
                free_cuda()
            record(entry)
        del captured
        free_cuda()
    hf.to(torch.float32)
