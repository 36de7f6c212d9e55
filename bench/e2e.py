"""End to end: the whole forward (image + text prompt -> masks, boxes, scores), sam3lt per backend against HF
transformers' eager model with the same weights.

Scenarios, per dtype:

- ``images`` = B images with one prompt each, B in ``--batches`` (1, 4, 8): latency at B = 1, throughput
  (images/s) at every B.
- ``prompts`` = one image with N prompts, N in ``--prompts`` (1, 4, 16, 64): sam3lt runs the ViT once and
  broadcasts its features; HF's forward needs one image per prompt, so HF gets the image repeated N times
  (which is what a user of HF's model does; it is the same call as HF's B = N images case, measured once).

Peak memory per call: on GPU the memory the model alone needs — its weights and inputs plus the peak of the
call's working memory above everything already allocated (``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``; both models stay resident, the other model's weights are not counted) — and on
the CPU the increase of the process's peak resident set during the calls (a lower bound: the allocator keeps
freed memory), or "n/a".
"""
from __future__ import annotations

import contextlib

import torch

from .common import DTYPES, PeakMemory, error_text, free_cuda, is_oom
from .layers import backend_registered
from .models import input_bytes, make_inputs, param_bytes


def scenarios(batches, prompts) -> list[tuple[str, int, int]]:
    """(kind, images, prompts) with the (1, 1) case once (it is the latency, B = 1 and N = 1)."""
    out = [("images", b, b) for b in batches]
    out += [("prompts", 1, n) for n in prompts if n != 1 or 1 not in batches]
    return out


def plan(ctx, dtype_name: str, batches, prompts):
    """The scenarios to run for a dtype, and a note on those left out."""
    if ctx.quick and ctx.cuda and dtype_name == "float32":
        return [("images", 1, 1)], "--quick on GPU: fp32 at batch 1 only"
    return scenarios(batches, prompts), None


def count(ctx, batches, prompts) -> int:
    total = 0
    for d in ctx.dtypes:
        total += len(plan(ctx, d, batches, prompts)[0]) * (len(ctx.backends) + 1)
    return total


def _measure(ctx, fn, model_bytes: int, inputs: dict, mem: PeakMemory) -> dict:
    mem.reset()
    before = mem.current()
    timing = ctx.timer.call(fn)
    peak = mem.peak()
    out = timing.as_dict()
    if peak is None or before is None:
        out.update(peak_bytes=None, memory="n/a")
    elif ctx.cuda:
        out.update(peak_bytes=int(peak - before + model_bytes + input_bytes(inputs)), peak_allocated_total=peak,
                   memory="weights + inputs + peak working memory (CUDA allocator)")
    else:
        out.update(peak_bytes=max(0, int(peak - before)), memory="increase of the process's peak RSS")
    return out


def run(ctx, record, hf, ours, config, batches, prompts) -> None:
    import sam3lt
    from sam3lt.ops import BackendUnavailable

    mem = PeakMemory(ctx.device)
    for dtype_name in ctx.dtypes:
        dtype = DTYPES[dtype_name]
        hf.to(dtype)
        ours.to(dtype)
        sizes = {"sam3lt": param_bytes(ours), "hf": param_bytes(hf)}
        todo, note = plan(ctx, dtype_name, batches, prompts)
        if note:
            record({"section": "e2e", "dtype": dtype_name, "impl": "all", "kind": "note", "status": "skipped",
                    "reason": note})
        hf_cache: dict[tuple[int, int], dict] = {}
        failed: dict[str, tuple[int, str, str]] = {}  # impl -> (work size, status, reason): skip larger ones
        for kind, images, n_prompts in todo:
            for impl in [f"sam3lt:{b}" for b in ctx.backends] + ["hf:eager"]:
                ctx.tick(f"e2e {impl} {dtype_name} {images}x{n_prompts}")
                entry = {"section": "e2e", "dtype": dtype_name, "kind": kind, "images": images,
                         "prompts": n_prompts, "impl": impl}
                is_hf = impl.startswith("hf")
                call_images = n_prompts if is_hf else images  # HF: one image per prompt
                entry["images_in_call"] = call_images
                work = max(call_images, n_prompts)
                if impl in failed and work >= failed[impl][0]:
                    size, status, reason = failed[impl]
                    if status == "unavailable":
                        record({**entry, "status": status, "reason": reason})
                    else:
                        record({**entry, "status": "skipped", "reason": f"{status} at a smaller size ({reason})"})
                    continue
                if ctx.out_of_time():
                    record({**entry, "status": "skipped", "reason": "time budget of the run exhausted"})
                    continue
                missing = None if is_hf else backend_registered(impl.split(":", 1)[1])
                if missing is not None:
                    record({**entry, "status": "unavailable", "reason": missing})
                    continue
                if is_hf and (call_images, n_prompts) in hf_cache:
                    record({**entry, **hf_cache[(call_images, n_prompts)], "reused": True})
                    continue
                inputs = make_inputs(config, call_images, n_prompts, ctx.device, dtype)
                model = hf if is_hf else ours
                backend = None if is_hf else impl.split(":", 1)[1]
                try:
                    with torch.inference_mode(), (sam3lt.use_backend(backend) if backend
                                                  else contextlib.nullcontext()):
                        result = _measure(ctx, lambda: model(**inputs), sizes["hf" if is_hf else "sam3lt"],
                                          inputs, mem)
                    result["status"] = "ok"
                    per_s = 1e3 / result["ms"]
                    result["images_per_s"] = images * per_s
                    result["prompts_per_s"] = n_prompts * per_s
                except BackendUnavailable as err:
                    result = {"status": "unavailable", "reason": str(err)}
                    failed[impl] = (0, "unavailable", str(err))
                except Exception as err:
                    result = {"status": "oom" if is_oom(err) else "error", "reason": error_text(err)}
                    failed[impl] = (work, result["status"], result["reason"][:120])
                    free_cuda()
                if is_hf:
                    hf_cache[(call_images, n_prompts)] = result
                record({**entry, **result})
                inputs = None
                free_cuda()
    hf.to(torch.float32)
    ours.to(torch.float32)
