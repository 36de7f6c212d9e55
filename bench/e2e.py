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

The fast path (sections ``fast`` and ``fast-compile``, :func:`run_fast`, below): ``sam3lt.optimize`` on a deep copy
of the sam3lt model, a fresh fast model per measured case; its breakdown (bf16: full forward, vision / text /
heads stages, an extra prompt on a cached image, batch-8 throughput, peak memory, agreement with fp32 eager) as
``section="fast"`` records, and its end-to-end rows (``impl`` ``sam3lt:fast`` / ``sam3lt:fast+compile``) as
``section="e2e"`` records beside the ones above. ``bench/goals.py`` checks the breakdown against issue 6's goals.
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


# ================================================================================================ fast path
# Sections ``fast`` (``sam3lt.optimize``: bf16, static buffers, CUDA graphs on GPU) and ``fast-compile`` (the same
# with ``compile=True``). Each measured case builds a fresh fast model from a deep copy of the benchmark's sam3lt
# model (the same weights as HF's), with the case's image batch and prompt count as its only buckets, so that
# its memory is what that case needs; the model is freed afterwards.
FAST_DTYPE = "bfloat16"  # the dtype of the breakdown and of issue 6's goals
THROUGHPUT_BATCH = 8
FAST_VARIANTS = {"fast": False, "fast+compile": True}  # variant -> compile
SECTION_VARIANT = {"fast": "fast", "fast-compile": "fast+compile"}
# The breakdown's rows (``stage`` of the "fast" records), in order.
BREAKDOWN = [
    ("full", "full forward (image + one prompt)"),
    ("vision", "vision stage: encode_image"),
    ("text", "text stage: encode_text (one prompt)"),
    ("heads", "heads alone (image and text features cached)"),
    ("extra_prompt", "one extra prompt on a cached image (text + heads)"),
    ("batch8", f"throughput, batch {THROUGHPUT_BATCH} (one prompt per image)"),
    ("memory", "peak memory, batch 1"),
    ("accuracy", "bf16 vs fp32 eager: agreement"),
]
SKIPPED_CPU_COMPILE = ("skipped on CPU (compiling the fast path takes minutes there; --compile-on-cpu runs it)")
FAST_MEMORY = ("weights + inputs + peak working memory (CUDA allocator: torch.cuda.max_memory_allocated over "
               "optimize, the first call — capture/compile — and the timed calls)")
FAST_MEMORY_CPU = "increase of the process's peak RSS over optimize, the first call and the timed calls"


def fast_plan(ctx, variant: str, batches, prompts) -> tuple[dict[str, list], str | None]:
    """{dtype: scenarios} of the end-to-end rows of a fast variant (bf16 first), and a note on those left out.
    The bf16 (1, 1) and (8, 8) cases are the breakdown's own measurements, reused."""
    order = [FAST_DTYPE] + [d for d in ctx.dtypes if d != FAST_DTYPE] if FAST_DTYPE in ctx.dtypes else list(ctx.dtypes)
    if variant == "fast+compile":  # every case compiles afresh (about a minute each on a GPU): bf16 only
        if FAST_DTYPE not in ctx.dtypes:
            return {}, "fast+compile: bf16 only (its breakdown), and bf16 is not among --dtypes"
        if ctx.quick:
            return ({FAST_DTYPE: [("images", 1, 1)] + ([("images", THROUGHPUT_BATCH, THROUGHPUT_BATCH)]
                                                       if THROUGHPUT_BATCH in batches else [])},
                    "--quick: fast+compile at the breakdown's sizes only (bf16, batch 1 and 8): every other image "
                    "batch or prompt count compiles again (about a minute each on a GPU)")
        return {FAST_DTYPE: plan(ctx, FAST_DTYPE, batches, prompts)[0]}, \
            "fast+compile: bf16 only (every case compiles afresh)"
    return {d: plan(ctx, d, batches, prompts)[0] for d in order}, None


def count_fast(ctx, section: str, batches, prompts) -> int:
    variant = SECTION_VARIANT[section]
    if variant == "fast+compile" and not ctx.cuda and not ctx.compile_on_cpu:
        return 1
    todo, _ = fast_plan(ctx, variant, batches, prompts)
    return 2 + sum(len(v) for v in todo.values())


def fast_reference(ctx, ours, config) -> dict:
    """The accuracy reference: the fp32 eager sam3lt model (``use_backend("eager")``) on the breakdown's inputs
    (one image, one prompt). Computed once, right after the models are built (later sections cast them)."""
    import sam3lt

    inputs = make_inputs(config, 1, 1, ctx.device, torch.float32)
    try:
        with torch.inference_mode(), sam3lt.use_backend("eager"):
            ref = ours(**inputs)
        return {"outputs": ref, "what": "fp32 sam3lt, eager backend, same weights and inputs (pixels rounded to "
                                        "bf16 for the fast path)"}
    except Exception as err:
        free_cuda()
        return {"outputs": None, "error": error_text(err)}


def _release(*objs) -> None:
    import gc

    for obj in objs:
        if obj is not None:
            obj.close()  # a FastSam3LiteText: frees its graphs and static buffers now
    del objs
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    free_cuda()


def _stats_delta(before, after) -> dict:
    keys = set(before) | set(after)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys) if after.get(k, 0) != before.get(k, 0)}


def _fallback_reason(before: dict, after: dict) -> str | None:
    """Why a call between the two ``fast.stats`` snapshots is not a fast-path number (the plain model ran)."""
    falls = {k: v for k, v in _stats_delta(before, after).items() if k.startswith("fallback")}
    if not falls:
        return None
    return "the plain model ran, not the fast path (" + ", ".join(
        f"{k[len('fallback: '):]} ×{v}" for k, v in falls.items()) + ")"


class FastCase:
    """One fast model for one bucket (``images`` images, ``prompts`` prompts): built from a deep copy of the
    sam3lt model, its first call (capture / compile) timed on its own, then calls timed with the run's timer.
    Memory: everything allocated from ``optimize`` on (see :data:`FAST_MEMORY`)."""

    def __init__(self, ctx, ours, config, dtype, compile: bool, images: int, prompts: int, mem: PeakMemory):
        import copy
        import time

        import sam3lt

        self.ctx, self.mem, self.images, self.prompts = ctx, mem, images, prompts
        self.inputs = make_inputs(config, images, prompts, ctx.device, dtype)
        model = copy.deepcopy(ours).to(dtype)
        self.weights = param_bytes(model)
        if compile:
            torch._dynamo.reset()
        _release()
        mem.reset()
        self.before = mem.current()
        self.reserved_before = torch.cuda.memory_reserved() if ctx.cuda else None
        start = time.perf_counter()
        self.fast = sam3lt.optimize(model, dtype=dtype, compile=compile, image_batches=(images,),
                                    prompt_buckets=(prompts,), seq_len=self.inputs["input_ids"].shape[1])
        self.optimize_s = time.perf_counter() - start
        start = time.perf_counter()
        with torch.inference_mode():
            self.fast(**self.inputs)
        ctx.sync()
        self.first_call_s = time.perf_counter() - start  # capture (and compile, autotune) of the three stages
        self.peak = None

    def info(self) -> dict:
        fast = self.fast
        return {"optimize_s": self.optimize_s, "capture_s": self.first_call_s, "cuda_graphs": fast.cuda_graphs,
                "compiled": fast.compiled, "tune": fast.tune, "backend": "auto",
                "fast_stats": dict(fast.stats)}

    def timed(self, fn, entry: dict, track_memory: bool = False) -> dict:
        """Time ``fn``; status "fallback" (no number) if the plain model ran in any call."""
        before = dict(self.fast.stats)
        with torch.inference_mode():
            timing = self.ctx.timer.call(fn)
        if track_memory:
            self.peak = self.mem.peak()
        after = dict(self.fast.stats)
        entry["stats"] = _stats_delta(before, after)
        fallback = _fallback_reason(before, after)
        if fallback:
            entry.update(status="fallback", timing_of_fallback=timing.as_dict(), reason=fallback)
        else:
            entry.update(status="ok", **timing.as_dict())
        return entry

    def memory(self) -> dict:
        """Peak memory of the case: optimize, first call and the calls timed with ``track_memory=True``."""
        if self.peak is None or self.before is None:
            return {"peak_bytes": None, "memory": "n/a"}
        working = max(0, int(self.peak - self.before))
        inputs = input_bytes(self.inputs)
        if self.ctx.cuda:
            total = self.weights + inputs + working
            out = {"peak_bytes": total, "weights_bytes": self.weights, "input_bytes": inputs,
                   "working_bytes": working, "above_weights_bytes": total - self.weights, "memory": FAST_MEMORY,
                   "reserved_increase_bytes": int(torch.cuda.memory_reserved() - self.reserved_before)}
        else:  # the RSS increase: working memory only (weights and inputs were there before the baseline)
            out = {"peak_bytes": working + self.weights + inputs, "weights_bytes": self.weights,
                   "input_bytes": inputs, "working_bytes": working, "above_weights_bytes": working + inputs,
                   "memory": FAST_MEMORY_CPU}
        return out

    def close(self) -> None:
        fast, self.fast, self.inputs = self.fast, None, None
        _release(fast)


def _no_time(ctx, build_s: list[float]) -> str | None:
    """Why not to start another case: the run's time budget is spent, or (compiling) what is left of it is less
    than the slowest build so far (a compile cut off by the stage's timeout would leave nothing)."""
    import time

    if ctx.out_of_time():
        return "time budget of the run exhausted"
    if build_s and ctx.deadline is not None and ctx.deadline - time.time() < 1.2 * max(build_s):
        return (f"not enough of the run's time budget left for another compile (the last one took "
                f"{max(build_s):.0f} s)")
    return None


def _fail_entry(entry: dict, err: BaseException) -> dict:
    return {**entry, "status": "oom" if is_oom(err) else "error", "reason": error_text(err)}


def skip_fast(ctx, record, section: str, reason: str, batches, prompts) -> None:
    variant = SECTION_VARIANT[section]
    ctx.tick(f"{section} skipped")
    for stage, _ in BREAKDOWN:
        record({"section": "fast", "impl": f"sam3lt:{variant}", "dtype": FAST_DTYPE, "stage": stage,
                "status": "skipped", "reason": reason})
    todo, _ = fast_plan(ctx, variant, batches, prompts)
    for dtype_name, scenarios in todo.items():
        for kind, images, n_prompts in scenarios:
            record({"section": "e2e", "dtype": dtype_name, "kind": kind, "images": images, "prompts": n_prompts,
                    "impl": f"sam3lt:{variant}", "status": "skipped", "reason": reason})


def run_fast(ctx, record, ours, config, batches, prompts, section: str = "fast") -> None:
    """The fast-path section: the breakdown (bf16; records ``section="fast"``), then the end-to-end scenarios
    (records ``section="e2e"``, impl ``sam3lt:fast`` / ``sam3lt:fast+compile``) for the e2e tables."""
    variant = SECTION_VARIANT[section]
    compile = FAST_VARIANTS[variant]
    impl = f"sam3lt:{variant}"
    if compile and not ctx.cuda and not ctx.compile_on_cpu:
        skip_fast(ctx, record, section, SKIPPED_CPU_COMPILE, batches, prompts)
        return
    mem = PeakMemory(ctx.device)
    dtype = DTYPES[FAST_DTYPE]
    base = {"section": "fast", "impl": impl, "dtype": FAST_DTYPE, "size": ctx.size, "image_size": config.image_size,
            "device_kind": ctx.device.type}
    reused: dict[tuple[int, int], dict] = {}  # (images, prompts) -> the breakdown's e2e-shaped result
    build_s: list[float] = []  # compile variant: the first-call (compile + capture) times so far

    def built(case: FastCase) -> None:
        if compile:
            build_s.append(case.optimize_s + case.first_call_s)

    # ---- breakdown, batch 1: full forward, stages, memory, accuracy -----------------------------------------
    ctx.tick(f"{section} breakdown, batch 1")
    if ctx.out_of_time():
        for stage, _ in BREAKDOWN:
            record({**base, "stage": stage, "status": "skipped", "reason": "time budget of the run exhausted"})
    else:
        _breakdown_batch1(ctx, record, base, ours, config, dtype, compile, mem, reused, built)

        # ---- breakdown: throughput at batch 8 ---------------------------------------------------------------
        ctx.tick(f"{section} breakdown, batch {THROUGHPUT_BATCH}")
        entry = {**base, "stage": "batch8", "images": THROUGHPUT_BATCH, "prompts": THROUGHPUT_BATCH}
        why = _no_time(ctx, build_s)
        if why:
            record({**entry, "status": "skipped", "reason": why})
        else:
            case = None
            try:
                case = FastCase(ctx, ours, config, dtype, compile, THROUGHPUT_BATCH, THROUGHPUT_BATCH, mem)
                built(case)
                entry = case.timed(lambda: case.fast(**case.inputs), {**entry, **case.info()}, track_memory=True)
                if entry["status"] == "ok":
                    entry.update(images_per_s=THROUGHPUT_BATCH * 1e3 / entry["ms"], **case.memory())
                    reused[(THROUGHPUT_BATCH, THROUGHPUT_BATCH)] = entry
                record(entry)
            except Exception as err:
                record(_fail_entry(entry, err))
            finally:
                if case is not None:
                    case.close()
                case = None

    # ---- end to end: the scenarios of the e2e tables ----------------------------------------------------------
    todo, note = fast_plan(ctx, variant, batches, prompts)
    if note:
        record({"section": "e2e", "dtype": "all", "impl": impl, "kind": "note", "status": "skipped", "reason": note})
    for dtype_name, scenarios in todo.items():
        failed: tuple[int, str] | None = None
        for kind, images, n_prompts in scenarios:
            ctx.tick(f"{section} e2e {dtype_name} {images}x{n_prompts}")
            entry = {"section": "e2e", "dtype": dtype_name, "kind": kind, "images": images, "prompts": n_prompts,
                     "impl": impl, "images_in_call": images}
            work = max(images, n_prompts)
            if dtype_name == FAST_DTYPE and (images, n_prompts) in reused:
                result = {k: v for k, v in reused[(images, n_prompts)].items() if k not in ("section", "stage")}
                per_s = 1e3 / result["ms"]
                record({**result, **entry, "images_per_s": images * per_s, "prompts_per_s": n_prompts * per_s,
                        "reused": "the breakdown's measurement"})
                continue
            if failed and work >= failed[0]:
                record({**entry, "status": "skipped", "reason": f"failed at a smaller size ({failed[1]})"})
                continue
            why = _no_time(ctx, build_s)
            if why:
                record({**entry, "status": "skipped", "reason": why})
                continue
            case = None
            try:
                case = FastCase(ctx, ours, config, DTYPES[dtype_name], compile, images, n_prompts, mem)
                built(case)
                result = case.timed(lambda: case.fast(**case.inputs), {**entry, **case.info()}, track_memory=True)
                if result["status"] == "ok":
                    per_s = 1e3 / result["ms"]
                    result.update(images_per_s=images * per_s, prompts_per_s=n_prompts * per_s, **case.memory())
                record(result)
            except Exception as err:
                result = _fail_entry(entry, err)
                failed = (work, result["reason"][:120])
                record(result)
            finally:
                if case is not None:
                    case.close()
    record(tuning_record(impl))


def tuning_record(impl: str) -> dict:
    """Which backend ``sam3lt.ops.autotune`` chose per op and input signature during the section (optimize tunes
    on CUDA before capturing)."""
    from sam3lt import ops

    return {"section": "fast", "impl": impl, "stage": "tuning", "status": "ok", "choices": ops.tuned_choices()}


def accuracy_record(ctx, base: dict, fast, inputs) -> dict:
    """agreement(fast output, fp32 eager sam3lt output) on the breakdown's inputs."""
    from sam3lt.fast import agreement

    entry = {**base, "stage": "accuracy", "images": 1, "prompts": 1}
    ref = ctx.fast_reference or {}
    if ref.get("outputs") is None:
        return {**entry, "status": "error", "reason": f"the fp32 reference failed: {ref.get('error', 'not computed')}"}
    before = dict(fast.stats)
    with torch.inference_mode():
        out = fast(**inputs)
    fallback = _fallback_reason(before, dict(fast.stats))
    if fallback:
        return {**entry, "status": "fallback", "reason": fallback}
    return {**entry, "status": "ok", **agreement(out, ref["outputs"]), "reference": ref["what"],
            "inputs": "random weights (HF init) and a random-noise image: numerical agreement, not accuracy on "
                      "real images"}


def _breakdown_batch1(ctx, record, base, ours, config, dtype, compile, mem, reused, built) -> None:
    """Batch 1, one prompt: build (capture time), full forward (and its peak memory), the vision / text / heads
    stages, an extra prompt on a cached image, agreement with fp32 eager. A function of its own so that the fast
    model and its cached features are freed when it returns."""
    done: set[str] = set()

    def emit(rec: dict) -> None:
        done.add(rec["stage"])
        record(rec)

    case = None
    try:
        case = FastCase(ctx, ours, config, dtype, compile, 1, 1, mem)
        built(case)
        info = case.info()
        emit({**base, "stage": "build", "images": 1, "prompts": 1, "status": "ok", **info})
        inputs = case.inputs
        full = case.timed(lambda: case.fast(**inputs), {**base, "stage": "full", "images": 1, "prompts": 1},
                          track_memory=True)
        memory = case.memory()
        emit({**full, **info})
        mem_status = full["status"] if memory.get("peak_bytes") is not None else "n/a"
        emit({**base, "stage": "memory", "images": 1, "prompts": 1, "status": mem_status, **memory,
              **({} if mem_status == "ok" else {"reason": full.get("reason", "no memory counter on this machine")})})
        if full["status"] == "ok":
            reused[(1, 1)] = {**full, **memory, **info}
        pixels, ids, mask = inputs["pixel_values"], inputs["input_ids"], inputs["attention_mask"]
        fast = case.fast
        with torch.inference_mode():
            vision = fast.encode_image(pixels)
            text = fast.encode_text(ids, mask)
        stages = {
            "vision": lambda: fast.encode_image(pixels),
            "text": lambda: fast.encode_text(ids, mask),
            "heads": lambda: fast(vision_embeds=vision, text_embeds=text, attention_mask=mask),
            "extra_prompt": lambda: fast(vision_embeds=vision, input_ids=ids, attention_mask=mask),
        }
        for stage, fn in stages.items():
            try:
                emit(case.timed(fn, {**base, "stage": stage, "images": 1, "prompts": 1}))
            except Exception as err:
                emit(_fail_entry({**base, "stage": stage}, err))
        emit(accuracy_record(ctx, base, fast, inputs))
    except Exception as err:
        for stage in ["build"] + [s for s, _ in BREAKDOWN if s != "batch8"]:
            if stage not in done:
                emit(_fail_entry({**base, "stage": stage}, err))
    finally:
        if case is not None:
            case.close()
