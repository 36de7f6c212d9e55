"""Issue 13's kernel goals, measured side by side in one process: ``kernel_goals.json`` (rewritten after every
measurement) and ``kernel_goals.md`` (the "Issue 13 goals" table, rewritten with it).

Goals (H200, bf16; the model's shapes: SAM3's ViT at 1008², a 72×72 grid of 1024 channels, 16 heads of 64;
the DETR decoder's 200 queries + presence token over the 72×72 image tokens, 8 heads of 32):

- ``window``: ``sam3lt.ops.window_attention`` (RoPE + window partition fused; 9 windows of 24² = 576 tokens,
  batch 1) ≥ 1.5× bare ``F.scaled_dot_product_attention`` on the same windows, its q/k/v already partitioned
  into (B·windows, heads, T, D), contiguous, and already rotated: SDPA does none of the RoPE / partition work.
  ``window_b8``: the same at batch 8 (run last, when time allows).
- ``global``: the same op with ``window_size=0`` (5184 tokens) ≥ 1.0× bare SDPA.
- ``box_p1`` / ``box_p64``: ``sam3lt.ops.box_bias_attention`` at 1 and 64 prompts (the prompts are the batch)
  ≥ 3× / ≥ 1.5× HF's call, as HF's DETR decoder makes it (transformers ``models/sam3/modeling_sam3.py``,
  ``_get_rpb_matrix`` and ``Sam3Attention`` with ``sdpa_attention_forward``): the bias materialised from its
  per-row and per-column terms in HF's layout (B, 200, Hg, heads) + (B, 200, Wg, heads), flattened, permuted to
  (B, heads, 200, Hg·Wg) and made contiguous, a zero row prepended for the presence token (``F.pad``), SDPA
  with it as ``attn_mask``, heads merged. A leaner baseline is timed beside it and shown, not used for the
  status: ``sdpa+bias``, the bias materialised straight in (B, heads, Lq, Hg·Wg) (``by[..., :, None] +
  bx[..., None, :]``, flattened) and SDPA, heads merged (the eager reference's own work).

Every backend of the sam3lt op (``auto``, ``triton``, ``cuda``, ``eager``) and the baselines run in the same
process on the same inputs. A backend that cannot run the inputs is not called: the dispatch says why, and
the reason is recorded. Correctness first, on the first input set: each output's max abs error against the
eager backend (``max_abs_err``) and against an fp32 reference (the eager op on the inputs upcast), checked with
the kernel tests' flash-attention bound ``err ≤ 2·err(eager in the low precision) + atol`` (atol 1e-2 bf16,
1e-3 fp16, 1e-5 fp32); the baselines' outputs are checked the same way (so that they do the same attention).
A backend outside the bound is timed and shown, but cannot meet a goal.

Timing, interleaved: after a warm-up, rounds of one sample per implementation (the order rotated each round),
median over the rounds, within a per-case time budget. GPU: each implementation's calls are captured in a
CUDA graph, one call per input set (sets rotated past L2, :func:`bench.common.rotating`), and each sample is a
replay between two CUDA events divided by its calls: device time, without Python/launch overhead (the fast path
runs these ops inside CUDA graphs too); an implementation that cannot be captured is timed with CUDA events
around its eager calls, and the record says so (``method``). CPU: ``time.perf_counter`` per call.

The status is computed from the numbers, never typed in: "met" / "not met" only for a GPU run at the model's
shapes in bf16 (suffixed with the card when it is not an H200, the card the goals name); a CPU run (``--quick``,
``gpu_check.sh --cpu-dry-run``) runs the same code at tiny shapes in fp32 and is labelled "CPU dry run: not a
measurement of the goals" — no goal is ever met or not met there. "not measured (why)" otherwise.

    python -m bench.kernel_goals --out DIR                    # GPU: all goals, bf16
    python -m bench.kernel_goals --out DIR --device cpu --quick   # CPU dry run, tiny shapes
    python -m bench.kernel_goals --out DIR --report-only      # rewrite kernel_goals.md from kernel_goals.json
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .common import _quantile, environment, error_text, free_cuda, git_info, is_oom, rotating
from .goals import _finite, _short
from .ops import _compare, _unavailable_reason
from .ops._case import nbytes
from .suite import RESULTS, SectionWriter

SECTION = "kernel_goals"
TITLE = "Issue 13 goals: attention kernels against their baselines"
CPU_LABEL = "CPU dry run: not a measurement of the goals"
BACKENDS = ("auto", "triton", "cuda", "eager")
GOAL_DTYPE, GOAL_SIZE, GOAL_CARD = "bfloat16", "full", "H200"
ATOL = {"float32": 1e-5, "float16": 1e-3, "bfloat16": 1e-2}  # as tests/_interp.py
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# size class -> shapes. full: the model's; tiny: the CPU dry run's (fewer heads, so that Triton's interpreter
# finishes in seconds; the head dims stay the model's)
WINDOW = {"full": {"grid": 72, "window": 24, "heads": 16, "dim": 64, "global_grid": 72},
          "tiny": {"grid": 16, "window": 8, "heads": 2, "dim": 64, "global_grid": 12}}
BOX = {"full": {"grid": 72, "queries": 201, "heads": 8, "dim": 32, "prompts": (1, 64)},
       "tiny": {"grid": 8, "queries": 21, "heads": 2, "dim": 32, "prompts": (1, 4)}}


@dataclass(frozen=True)
class GoalCase:
    key: str
    goal: str  # what the goal is about
    op: str  # the sam3lt.ops function
    target: float  # the ratio (baseline time / sam3lt time) that meets it
    baseline: str  # the baseline the goal compares with
    make: Callable  # (device, dtype, gen) -> the op's positional arguments
    baselines: dict  # name -> (prepare(args) -> (fn, bargs), what it does)
    merge: Callable  # (args, baseline output) -> the op's output layout, for the check
    shape: str

    @property
    def target_text(self) -> str:
        return f"≥ {self.target:g}×"


# ------------------------------------------------------------------------------------------------ cases
def _rope_tables(tokens: int, dim: int, device, gen):
    """HF-style RoPE tables (T, D): one angle per channel pair, repeated for both channels of the pair."""
    angles = (torch.rand(tokens, dim // 2, generator=gen, device=device) * (2 * math.pi)).repeat_interleave(2, -1)
    return angles.cos().contiguous(), angles.sin().contiguous()


def _randn(gen, *shape, device, dtype, scale=1.0):
    return (torch.randn(*shape, generator=gen, device=device) * scale).to(dtype)


def _window_make(batch, grid, window, heads, dim):
    def make(device, dtype, gen):
        tokens = window * window if window else grid * grid
        qkv = _randn(gen, batch, grid, grid, 3 * heads * dim, device=device, dtype=dtype)
        cos, sin = _rope_tables(tokens, dim, device, gen)
        pad_value = _randn(gen, 3 * heads * dim, device=device, dtype=dtype, scale=0.02)
        return qkv, cos, sin, heads, window, pad_value
    return make


def _window_sdpa(args):
    """Bare SDPA on q/k/v partitioned into (B·windows, heads, T, D), contiguous and already rotated (laid out
    here, outside the timing, with the reference's own RoPE)."""
    from sam3lt.ops.window_attention import apply_rope

    from .ops.bench_window_attention import _layout

    _, cos, sin, *_ = args
    q, k, v = _layout(args)
    q, k = apply_rope(q, cos, sin).contiguous(), apply_rope(k, cos, sin).contiguous()
    return F.scaled_dot_product_attention, (q, k, v)


def _window_merge(args, out):
    """SDPA's (B·windows, heads, T, D) back to the op's (B, H, W, C)."""
    qkv, _, _, heads, window, _ = args
    batch, grid, _, three_c = qkv.shape
    dim = three_c // 3 // heads
    if not window:
        return out.transpose(1, 2).reshape(batch, grid, grid, heads * dim)
    n = grid // window
    out = out.view(batch, n, n, heads, window, window, dim).permute(0, 1, 4, 2, 5, 3, 6)
    return out.reshape(batch, grid, grid, heads * dim)


def _box_make(prompts, grid, queries, heads, dim):
    """q, k, v as the model and HF make them (views (B, heads, L, D) of (B, L, heads·D) projections); the bias
    terms (B, heads, Lq, Hg) / (B, heads, Lq, Wg) with the presence token's row 0 zero, as ``ops.box_bias``."""
    def make(device, dtype, gen):
        def heads_view(length):
            x = _randn(gen, prompts, length, heads * dim, device=device, dtype=dtype)
            return x.unflatten(-1, (heads, dim)).transpose(1, 2)

        q, k, v = heads_view(queries), heads_view(grid * grid), heads_view(grid * grid)
        bias_y = _randn(gen, prompts, heads, queries, grid, device=device, dtype=dtype)
        bias_x = _randn(gen, prompts, heads, queries, grid, device=device, dtype=dtype)
        bias_y[:, :, 0] = 0
        bias_x[:, :, 0] = 0
        return q, k, v, bias_y, bias_x
    return make


def _hf_box_call(q, k, v, by_hf, bx_hf):
    """HF's DETR decoder image cross-attention core: ``_get_rpb_matrix`` from the MLP outputs, the presence
    row, ``sdpa_attention_forward`` and the head merge of ``Sam3Attention``."""
    rpb = by_hf.unsqueeze(3) + bx_hf.unsqueeze(2)  # (B, Q, Hg, Wg, heads)
    rpb = rpb.flatten(2, 3).permute(0, 3, 1, 2).contiguous()  # (B, heads, Q, Hg·Wg)
    mask = F.pad(rpb, (0, 0, 1, 0), mode="constant", value=0)  # the presence token's row
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=q.shape[-1] ** -0.5)
    out = out.transpose(1, 2).contiguous()
    return out.reshape(out.shape[0], out.shape[1], -1).contiguous()


def _box_hf(args):
    q, k, v, bias_y, bias_x = args
    # the bias MLPs' outputs in HF's layout (B, Q, Hg, heads), without the presence row (HF pads it per call)
    by_hf = bias_y[:, :, 1:].permute(0, 2, 3, 1).contiguous()
    bx_hf = bias_x[:, :, 1:].permute(0, 2, 3, 1).contiguous()
    return _hf_box_call, (q, k, v, by_hf, bx_hf)


def _lean_box_call(q, k, v, bias_y, bias_x):
    bias = (bias_y[..., :, None] + bias_x[..., None, :]).flatten(-2)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out.transpose(1, 2).reshape(q.shape[0], q.shape[2], -1)


def _box_lean(args):
    return _lean_box_call, tuple(args)


def _box_merge(args, out):
    return out


def cases(size: str) -> list[GoalCase]:
    w, b = WINDOW[size], BOX[size]
    heads, dim, grid, window, ggrid = w["heads"], w["dim"], w["grid"], w["window"], w["global_grid"]
    n_win, tokens = (grid // window) ** 2, window * window
    win_baselines = {"sdpa": (_window_sdpa, "bare SDPA on q/k/v already partitioned, contiguous and rotated")}
    box_baselines = {"hf": (_box_hf, "HF's call: the bias materialised in HF's layout, permuted, presence row "
                                     "padded, SDPA with it as attn_mask, heads merged"),
                     "sdpa+bias": (_box_lean, "the bias materialised as (B, heads, Lq, Hg·Wg), SDPA, heads "
                                              "merged (leaner than HF's; shown, not the goal's baseline)")}
    window_goal = "window attention (RoPE + partition fused) vs bare SDPA"
    out = [
        GoalCase("window", window_goal + ", batch 1", "window_attention", 1.5, "sdpa",
                 _window_make(1, grid, window, heads, dim), win_baselines, _window_merge,
                 f"1×{grid}² grid → {n_win} windows × {tokens} tokens, {heads}×d{dim}"),
        GoalCase("global", "global attention vs bare SDPA", "window_attention", 1.0, "sdpa",
                 _window_make(1, ggrid, 0, heads, dim), win_baselines, _window_merge,
                 f"1×{ggrid}² grid = {ggrid * ggrid} tokens, {heads}×d{dim}"),
    ]
    for target, prompts in zip((3.0, 1.5), b["prompts"]):
        out.append(GoalCase(
            f"box_p{prompts}", f"box-bias cross-attention vs HF's call, {prompts} prompt{'s' if prompts > 1 else ''}",
            "box_bias_attention", target, "hf", _box_make(prompts, b["grid"], b["queries"], b["heads"], b["dim"]),
            box_baselines, _box_merge,
            f"{prompts}×{b['queries']} queries × {b['grid'] ** 2} keys ({b['grid']}²), {b['heads']}×d{b['dim']}"))
    out.append(GoalCase("window_b8", window_goal + ", batch 8", "window_attention", 1.5, "sdpa",
                        _window_make(8, grid, window, heads, dim), win_baselines, _window_merge,
                        f"8×{grid}² grid → {8 * n_win} windows × {tokens} tokens, {heads}×d{dim}"))
    return out


# ------------------------------------------------------------------------------------------------ checks
def _max_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    return _compare(ref, out)["max_abs_err"]


def _reference32(case: GoalCase, args):
    """The eager op on the inputs upcast to fp32 (the fp32 RoPE tables are already fp32)."""
    from sam3lt import ops

    up = tuple(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
    return getattr(ops, case.op)(*up, backend="eager")


def _check(out, ref_eager, ref32, eager_err32: float, dtype_name: str) -> dict:
    if tuple(out.shape) != tuple(ref32.shape):
        return {"correct": False, "check": f"shape {tuple(out.shape)} != the reference's {tuple(ref32.shape)}"}
    err32 = _max_err(out, ref32)
    bound = 2 * eager_err32 + ATOL[dtype_name]
    finite = bool(torch.isfinite(out.float()).all().item())
    return {"max_abs_err": _max_err(out, ref_eager), "err_vs_fp32": err32, "err_bound": bound,
            "correct": finite and err32 <= bound}


# ------------------------------------------------------------------------------------------------ timing
class _Impl:
    """One implementation of a case, ready to time: one zero-argument call per input set."""

    def __init__(self, name: str, fns: list[Callable[[], object]]):
        self.name, self.fns = name, fns  # one zero-argument call per input set
        self.graph = self.outputs = self.capture_error = None
        self.method = "perf_counter"
        self.samples: list[float] = []

    def eager_step(self) -> int:
        for fn in self.fns:
            fn()
        return len(self.fns)

    def replay(self) -> None:
        """One call per input set: the captured graph if there is one, else the eager calls."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.eager_step()


def _capture(impl: _Impl, warmup: int) -> str | None:
    """Capture one call per input set in a CUDA graph (after ``warmup`` eager rounds on a side stream); None, or
    why not (the implementation is then timed eagerly)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    try:
        with torch.cuda.stream(stream):
            for _ in range(max(1, warmup)):
                impl.eager_step()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            impl.outputs = [fn() for fn in impl.fns]  # kept alive with the graph
        graph.replay()
        torch.cuda.synchronize()
    except Exception as err:  # noqa: BLE001 - any capture failure falls back to eager timing
        with contextlib.suppress(Exception):
            torch.cuda.synchronize()
        impl.graph = None
        return f"CUDA graph capture failed ({type(err).__name__}: {str(err)[:160]}); timed eagerly"
    impl.graph, impl.method = graph, "cuda_graph"
    return None


def interleaved(impls: list[_Impl], cuda: bool, reps: int, warmup: int, budget_s: float,
                min_sample_ms: float = 0.5) -> None:
    """Fill each implementation's ``samples`` (ms per call): rounds of one sample each, the order rotated per
    round, until ``reps`` rounds or ``budget_s`` (at least 3 rounds)."""
    if cuda:
        for impl in impls:
            impl.capture_error = _capture(impl, warmup)
            if impl.capture_error is not None:
                impl.method = "cuda_events (eager calls)"
                for _ in range(warmup):
                    impl.eager_step()
        torch.cuda.synchronize()
        # calls per sample: enough replays for a sample of at least min_sample_ms
        repeats = {}
        for impl in impls:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            impl.replay()
            end.record()
            torch.cuda.synchronize()
            calls = len(impl.fns)
            per_call = max(start.elapsed_time(end) / calls, 1e-4)
            repeats[impl.name] = max(1, min(64, math.ceil(min_sample_ms / (per_call * calls))))
    else:
        for impl in impls:
            for _ in range(warmup):
                impl.eager_step()
    begin = time.perf_counter()
    for rnd in range(reps):
        order = impls[rnd % len(impls):] + impls[:rnd % len(impls)]
        pending = []
        for impl in order:
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                n = repeats[impl.name]
                start.record()
                for _ in range(n):
                    impl.replay()
                end.record()
                pending.append((impl, start, end, n * len(impl.fns)))
            else:
                t0 = time.perf_counter()
                calls = impl.eager_step()
                impl.samples.append((time.perf_counter() - t0) * 1e3 / calls)
        if cuda:
            torch.cuda.synchronize()
            for impl, start, end, calls in pending:
                impl.samples.append(start.elapsed_time(end) / calls)
        if rnd + 1 >= 3 and time.perf_counter() - begin > budget_s:
            break


def _timing(impl: _Impl) -> dict:
    s = impl.samples
    out = {"ms": statistics.median(s), "p20": _quantile(s, 0.2), "p80": _quantile(s, 0.8), "min_ms": min(s),
           "rounds": len(s), "calls_per_sample_set": len(impl.fns), "method": impl.method}
    if impl.capture_error:
        out["capture_error"] = impl.capture_error
    return out


# ------------------------------------------------------------------------------------------------ the run
def _explain(op: str, args) -> dict:
    from sam3lt import ops

    try:
        exp = ops.explain(op, *args)
        chosen = next((k for k, v in exp.items() if v == "runs"), None)
        return {"chose": chosen, "rule": exp.rule}
    except Exception as err:  # noqa: BLE001
        return {"chose": None, "rule": f"explain failed: {error_text(err)}"}


def run_case(case: GoalCase, ctx: dict, record) -> None:
    """Check and time one case: every backend and baseline; ``record(dict)`` once per implementation (records
    are updated in place and saved again once timed)."""
    from sam3lt import ops

    device, dtype_name, cuda = ctx["device"], ctx["dtype"], ctx["device"].type == "cuda"
    dtype = DTYPES[dtype_name]
    base = {"section": SECTION, "case": case.key, "op": case.op, "goal": case.goal, "shape": case.shape,
            "dtype": dtype_name, "target": case.target, "baseline": case.baseline}
    gen = torch.Generator(device=device).manual_seed(0)
    first = case.make(device, dtype, gen)
    _, sets = rotating(lambda i: first if i == 0 else case.make(device, dtype, gen), nbytes(*first), device)
    base["input_sets"] = len(sets)
    op_fn = getattr(ops, case.op)
    with torch.inference_mode():
        ref32 = _reference32(case, first)
        ref_eager = op_fn(*first, backend="eager")
        eager_err32 = _max_err(ref_eager, ref32)
    base["eager_err_vs_fp32"] = eager_err32
    impls, entries = [], {}

    def add(entry: dict, make: Callable[[], tuple]) -> None:
        """Check an implementation's first output and queue it for timing; ``make() -> (first output, one
        zero-argument call per input set)``."""
        try:
            with torch.inference_mode():
                out, fns = make()
                entry.update(_check(out, ref_eager, ref32, eager_err32, dtype_name))
                del out
            entry["status"] = "timing"
            impls.append(_Impl(entry["impl"], fns))
            entries[entry["impl"]] = entry
        except Exception as err:  # noqa: BLE001
            entry.update(status="oom" if is_oom(err) else "error", reason=error_text(err))
            free_cuda()
        record(entry)

    def backend_calls(name: str) -> tuple:
        return (op_fn(*first, backend=name),
                [lambda i=i: op_fn(*sets[i], backend=name) for i in range(len(sets))])

    def baseline_calls(prepare) -> tuple:
        prepared = [prepare(args) for args in sets]  # laid out once per input set, outside the timing
        return (case.merge(first, prepared[0][0](*prepared[0][1])),
                [lambda p=p: p[0](*p[1]) for p in prepared])

    explained = _explain(case.op, first)
    for backend in ctx["backends"]:
        entry = {**base, "impl": backend, "kind": "backend", **({"auto": explained} if backend == "auto" else {})}
        reason = _unavailable_reason(case.op, backend, first)  # the dispatch's reason, or None: it can run them
        if reason is None:
            add(entry, lambda b=backend: backend_calls(b))
        else:
            record({**entry, "status": "unavailable", "reason": reason})
    for name, (prepare, note) in case.baselines.items():
        add({**base, "impl": name, "kind": "baseline", "note": note}, lambda f=prepare: baseline_calls(f))
    del ref32, ref_eager
    if not impls:
        return
    try:
        with torch.inference_mode():
            interleaved(impls, cuda, ctx["reps"], ctx["warmup"], ctx["case_budget_s"])
    except Exception as err:  # noqa: BLE001
        for impl in impls:
            entries[impl.name].update(status="oom" if is_oom(err) else "error",
                                      reason=f"timing: {error_text(err)}")
        ctx["save"]()
        return
    finally:
        for impl in impls:
            impl.graph = impl.outputs = None
        free_cuda()
    base_ms = None
    for impl in impls:
        if impl.samples:
            entries[impl.name].update(status="ok", **_timing(impl))
        else:
            entries[impl.name].update(status="error", reason="no sample recorded")
    base_entry = entries.get(case.baseline)
    if base_entry is not None and base_entry.get("status") == "ok":
        base_ms = base_entry["ms"]
    for entry in entries.values():
        if base_ms and entry.get("status") == "ok":
            entry["ratio_vs_baseline"] = base_ms / entry["ms"]
    ctx["save"]()


# ------------------------------------------------------------------------------------------------ evaluation
def _conditions(data: dict) -> tuple[bool, str | None]:
    env, settings = data.get("env", {}), data.get("settings", {})
    if env.get("device_kind") != "cuda":
        return False, CPU_LABEL
    if settings.get("size") != GOAL_SIZE:
        return False, f"GPU run at reduced shapes ({settings.get('size')})"
    if settings.get("dtype") != GOAL_DTYPE:
        return False, f"measured in {settings.get('dtype')}, not bf16"
    return True, None


def evaluate(data: dict) -> dict:
    """The goals table as data: one row per case, its status computed from the records."""
    ok, why = _conditions(data)
    device = data.get("env", {}).get("device") or "?"
    card_note = "" if GOAL_CARD.lower() in device.lower() else f" (on {device}; the goals name an {GOAL_CARD})"
    records = data.get("records", [])
    rows = []
    for spec in data.get("cases", []):
        key = spec["key"]
        recs = {r["impl"]: r for r in records if r.get("case") == key}
        base = recs.get(spec["baseline"])
        backends = [r for r in recs.values() if r.get("kind") == "backend"]
        timed = [r for r in backends if r.get("status") == "ok"]
        correct = [r for r in timed if r.get("correct")]
        best = min(correct, key=lambda r: r["ms"]) if correct else None
        auto = recs.get("auto")
        row = {"key": key, "goal": spec["goal"], "shape": spec["shape"], "target": spec["target"],
               "baseline": spec["baseline"], "baseline_ms": (base or {}).get("ms"),
               "best": best and best["impl"], "best_ms": best and best["ms"],
               "ratio": best and best.get("ratio_vs_baseline"), "auto": auto and {
                   "ms": auto.get("ms"), "ratio": auto.get("ratio_vs_baseline"),
                   "chose": (auto.get("auto") or {}).get("chose"), "status": auto.get("status")}}
        reason = None
        if not recs:
            reason = data.get("skipped", {}).get(key) or ("not run (the stage ended before this case: time "
                                                          "budget or timeout)")
        elif base is None or base.get("status") != "ok":
            reason = f"the baseline {spec['baseline']} did not run: " + str(
                (base or {}).get("reason") or (base or {}).get("status") or "no record")
        elif base.get("correct") is False:
            reason = f"the baseline {spec['baseline']} disagrees with the eager reference"
        elif not timed:
            reasons = "; ".join(f"{r['impl']}: {r.get('reason') or r.get('status')}" for r in backends)
            reason = f"no sam3lt backend ran ({reasons or 'none asked for'})"
        if not ok:
            status = f"not measured ({why})"
        elif reason is not None:
            status = f"not measured ({_short(reason, 200)})"
        elif best is None:
            status = "not met (no backend's output within the error bound)" + card_note
        else:
            status = ("met" if row["ratio"] >= spec["target"] else "not met") + card_note
        row.update(status=status, reason=reason)
        rows.append(row)
    env, run = data.get("env", {}), data.get("run", {})
    return {"title": TITLE, "at_goal_conditions": ok, "conditions_reason": why, "rows": rows,
            "device": device, "device_kind": env.get("device_kind"),
            "versions": {"torch": env.get("torch"), "triton": env.get("triton"), "CUDA": env.get("cuda_runtime")},
            "commit": run.get("commit"), "dirty": run.get("dirty"), "date": run.get("date"),
            "settings": data.get("settings", {}), "complete": data.get("complete", False)}


def _ms(x) -> str:
    if not _finite(x):
        return "—"
    return f"{x * 1e3:.1f} µs" if x < 1 else f"{x:.3g} ms"


def _ratio(x) -> str:
    return f"{x:.2f}×" if _finite(x) else "—"


def markdown(table: dict, data: dict, level: str = "##") -> str:
    s = table["settings"]
    about = [f"Card: **{table['device']}**"]
    about.append(", ".join(f"{name} {version or 'n/a'}" for name, version in table["versions"].items()))
    dirty = " (uncommitted changes)" if table.get("dirty") else ""
    about.append(f"commit {table.get('commit') or 'unknown'}{dirty}")
    about += [table.get("date") or "date unknown", f"{s.get('dtype')}, {s.get('size')} shapes"]
    lines = [f"{level} {table['title']}\n", "; ".join(about) + ".\n"]
    if table["at_goal_conditions"]:
        lines.append("Measured at the goals' conditions: GPU, bf16, the model's shapes.\n")
    elif table["device_kind"] != "cuda":
        lines.append(f"**{CPU_LABEL}**: tiny shapes in {s.get('dtype')} on the CPU, to check that the code runs; "
                     "no goal is met or not met by it.\n")
    else:
        lines.append(f"**Not at the goals' conditions ({table['conditions_reason']})**: no goal is met or not met "
                     "by this run.\n")
    if not table.get("complete"):
        lines.append("The run did not finish (time budget or timeout): the rows it did not reach say so.\n")
    out = ["| goal | shape | target | baseline | best sam3lt backend | ratio | auto (its choice) | status |",
           "|---|---|---|---|---|---|---|---|"]
    for row in table["rows"]:
        auto = row.get("auto") or {}
        auto_text = "—"
        if auto:
            auto_text = (f"{_ratio(auto.get('ratio'))} ({auto.get('chose') or '?'})" if auto.get("status") == "ok"
                         else str(auto.get("status")))
        best = f"{row['best']} {_ms(row['best_ms'])}" if row.get("best") else "—"
        status = row["status"]
        status = f"**{status}**" if status.startswith(("met", "not met")) else _short(status, 160)
        out.append(f"| {row['goal']} | {row['shape']} | {'≥ %g×' % row['target']} | {row['baseline']} "
                   f"{_ms(row['baseline_ms'])} | {best} | {_ratio(row.get('ratio'))} | {auto_text} | {status} |")
    lines.append("\n".join(out) + "\n")
    # per case: every implementation
    detail = ["| case | implementation | time (median, p20–p80) | vs baseline | max abs err vs eager | err vs fp32 "
              "(bound) | method / reason |", "|---|---|---|---|---|---|---|"]
    for r in data.get("records", []):
        if r.get("status") == "ok":
            timing = f"{_ms(r['ms'])} ({_ms(r['p20'])}–{_ms(r['p80'])}, {r['rounds']} rounds)"
            how = r.get("method", "") + (f": {_short(r['capture_error'], 120)}" if r.get("capture_error") else "")
        else:
            timing, how = r.get("status", "?"), _short(r.get("reason", ""), 140)
        err = f"{r['max_abs_err']:.2e}" if isinstance(r.get("max_abs_err"), float) else "—"
        err32 = "—"
        if isinstance(r.get("err_vs_fp32"), float):
            err32 = f"{r['err_vs_fp32']:.2e} ({r['err_bound']:.1e}){'' if r.get('correct') else ' **outside**'}"
        elif r.get("check"):
            err32 = _short(r["check"], 60)
        name = r["impl"] + (f" → {r['auto'].get('chose')}" if r.get("auto") else "")
        detail.append(f"| {r['case']} | {name} | {timing} | {_ratio(r.get('ratio_vs_baseline'))} | {err} | "
                      f"{err32} | {how} |")
    lines.append("\n".join(detail) + "\n")
    notes = [
        "ratio = the baseline's time / the fastest sam3lt backend whose output is within the error bound (a "
        "backend outside it cannot meet a goal); auto: the backend `auto` picks here, with `ops.explain`'s rule "
        "in kernel_goals.json.",
        "Window/global baseline: bare SDPA on q/k/v already partitioned, contiguous and rotated (no RoPE, no "
        "partition in its time). Box-bias baseline `hf`: HF's decoder call (bias materialised in HF's layout, "
        "permuted, presence row padded, SDPA, heads merged); `sdpa+bias` is a leaner materialisation, shown for "
        "reference.",
        "Timing: " + ("each implementation's calls captured in a CUDA graph (one call per input set, sets rotated "
                      "past L2) and replayed between CUDA events, interleaved rounds, median: device time without "
                      "launch overhead (`method` says where an eager fallback was used)"
                      if table["device_kind"] == "cuda" else
                      "time.perf_counter per call, interleaved rounds, median") + ".",
        "Error bound (as the kernel tests): max|out − fp32 reference| ≤ 2·max|eager − fp32 reference| + atol "
        f"({', '.join(f'{k} {x:g}' for k, x in ATOL.items())}).",
    ]
    lines.append("\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(lines)


def write_markdown(folder: Path, data: dict) -> str:
    text = markdown(evaluate(data), data)
    tmp = folder / f"{SECTION}.md.tmp"
    tmp.write_text(text)
    tmp.replace(folder / f"{SECTION}.md")
    return text


class _Writer(SectionWriter):
    """``kernel_goals.json`` and ``kernel_goals.md``, both rewritten after every record."""

    def save(self) -> None:
        super().save()
        write_markdown(self.path.parent, self.data)


# ------------------------------------------------------------------------------------------------ main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.kernel_goals", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default bench/results/kernel-goals-<cpu|gpu>)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--quick", action="store_true",
                   help="on the CPU: tiny shapes (the default there anyway); on a GPU: fewer rounds")
    p.add_argument("--size", default="auto", choices=["auto", "full", "tiny"],
                   help="full: the model's shapes (GPU default); tiny: the CPU dry run's")
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help="default bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--backends", default=",".join(BACKENDS), help=f"default {','.join(BACKENDS)}")
    p.add_argument("--cases", default=None, help="comma-separated case keys (default: all, in order)")
    p.add_argument("--reps", type=int, default=None, help="interleaved rounds per case (default GPU 40, CPU 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per implementation (default 3; CPU 1)")
    p.add_argument("--case-budget-s", type=float, default=None,
                   help="seconds of timing rounds per case (default GPU 2, CPU 0.5)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="start no new case after this many seconds (the rest are recorded as not run)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--report-only", action="store_true", help="rewrite kernel_goals.md from kernel_goals.json")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device: cuda was asked for but torch sees no CUDA device")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    cuda = device.type == "cuda"
    out = Path(args.out) if args.out else RESULTS / f"kernel-goals-{'gpu' if cuda else 'cpu'}"
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        import json

        data = json.loads((out / f"{SECTION}.json").read_text())
        print(write_markdown(out, data), end="")
        return 0
    size = args.size if args.size != "auto" else ("full" if cuda else "tiny")
    dtype = args.dtype or ("bfloat16" if cuda else "float32")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise SystemExit(f"--backends: unknown {unknown}; expected some of {','.join(BACKENDS)}")
    all_cases = cases(size)
    keys = [c.key for c in all_cases]
    wanted = [k.strip() for k in args.cases.split(",")] if args.cases else keys
    if [k for k in wanted if k not in keys]:
        raise SystemExit(f"--cases: unknown {[k for k in wanted if k not in keys]}; expected some of {keys}")
    selected = [c for c in all_cases if c.key in wanted]
    reps = args.reps or ((20 if args.quick else 40) if cuda else 5)
    warmup = args.warmup if args.warmup is not None else (3 if cuda else 1)
    case_budget = args.case_budget_s or ((1.0 if args.quick else 2.0) if cuda else 0.5)
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:  # as the other bench sections: no TF32 (the fp32 reference stays fp32)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    git = git_info()
    header = {"schema": "sam3lt-bench/1",
              "run": {"name": SECTION, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git["commit"],
                      "dirty": git["dirty"], "argv": sys.argv[1:] if argv is None else list(argv),
                      "device": str(device)},
              "env": environment(device),
              "settings": {"size": size, "dtype": dtype, "backends": backends, "reps": reps, "warmup": warmup,
                           "case_budget_s": case_budget, "time_budget_s": args.time_budget_s},
              "cases": [{"key": c.key, "goal": c.goal, "op": c.op, "target": c.target, "baseline": c.baseline,
                         "shape": c.shape} for c in selected],
              "skipped": {}}
    writer = _Writer(out, SECTION, header)
    print(f"kernel_goals: {header['env']['device']}, {dtype}, {size} shapes"
          f"{'' if cuda else ' (' + CPU_LABEL + ')'}; writing {out}", file=sys.stderr)
    ctx = {"device": device, "dtype": dtype, "backends": backends, "reps": reps, "warmup": warmup,
           "case_budget_s": case_budget, "save": writer.save}
    start = time.time()
    for case in selected:
        if args.time_budget_s is not None and time.time() - start > args.time_budget_s:
            writer.data["skipped"][case.key] = f"not run: the time budget of {args.time_budget_s:g} s was spent"
            writer.save()
            continue
        t0 = time.time()
        try:
            run_case(case, ctx, writer.record)
        except Exception as err:  # noqa: BLE001 - one case's failure is recorded; the next case still runs
            writer.data["skipped"][case.key] = f"failed: {error_text(err)}"
            writer.save()
            free_cuda()
        print(f"kernel_goals: {case.key} done in {time.time() - t0:.1f} s", file=sys.stderr)
    writer.finish()
    print(write_markdown(out, writer.data), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
