"""Results: merge the section files of a run folder into ``results.json``, and write ``bench.md`` (everything),
``summary.md`` (issue 6's goals, the fast path, per-layer and end-to-end tables, for the README), ``goals.md``
(the goals table alone, :mod:`bench.goals`) and ``speedups.png`` (per-layer speedups; matplotlib when it is
installed, otherwise a plain Pillow drawing).

Every number in the tables comes from a record of the JSON; a cell that was not measured says why in a
numbered footnote (unavailable backend, skipped, error), never a made-up value.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import goals as goals_mod
from .common import NOT_MEASURED, SHORT
from .e2e import BREAKDOWN, FAST_DTYPE
from .layers import COMPONENTS, FULL, POSTPROCESS, ROWS, SAME
from .sections import GPU_ROWS, merge

IMPL_LABELS = {"sam3lt:eager": "sam3lt eager", "sam3lt:triton": "sam3lt triton", "sam3lt:cuda": "sam3lt cuda",
               "sam3lt:auto": "sam3lt auto", "sam3lt:fast": "sam3lt fast",
               "sam3lt:fast+compile": "sam3lt fast+compile", "hf:eager": "HF eager", "hf:compile": "HF compile"}
FAST_IMPLS = ("sam3lt:fast", "sam3lt:fast+compile")
SUM_ROW = "sum of components"


def records(result: dict, section: str) -> list[dict]:
    return [r for data in result["sections"].values() for r in data["records"] if r.get("section") == section]


# ------------------------------------------------------------------------------------------------ formatting
def fmt_ms(ms) -> str:
    if ms is None or not isinstance(ms, (int, float)) or not math.isfinite(ms):
        return "—"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_num(x, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    if x == 0:
        return "0"
    mag = math.floor(math.log10(abs(x)))
    decimals = max(0, digits - 1 - mag)
    return f"{x:.{decimals}f}"


def fmt_bytes(n) -> str:
    if n is None:
        return "n/a"
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n < 2**20:
        return "<1 MiB"
    return f"{n / 2**20:.0f} MiB"


def fmt_x(x) -> str:
    return "—" if x is None or not math.isfinite(x) else f"{x:.2f}×"


class Notes:
    """Numbered footnotes for cells that hold no number."""

    def __init__(self):
        self.items: list[str] = []

    def ref(self, record: dict) -> str:
        text = f"{record.get('status', '?')}: {record.get('reason', 'no reason recorded')}"
        if text not in self.items:
            self.items.append(text)
        return f"{record.get('status', '?')} [{self.items.index(text) + 1}]"

    def render(self) -> str:
        return "".join(f"{i}. {t}\n" for i, t in enumerate(self.items, 1)) if self.items else ""


def _cell(rec: dict | None, notes: Notes, key: str = "ms", fmt=fmt_ms) -> str:
    if rec is None:
        return "—"
    if rec.get("status") == "ok":
        return fmt(rec.get(key))
    if rec.get("status") == SAME:
        return "= eager"
    return notes.ref(rec)


def _impls(recs, order=tuple(IMPL_LABELS)) -> list[str]:
    present = {r["impl"] for r in recs if r.get("impl") in IMPL_LABELS}
    return [i for i in order if i in present]


def _dtypes(recs) -> list[str]:
    order = ["float32", "bfloat16", "float16"]
    present = {r["dtype"] for r in recs if r.get("dtype")}
    return [d for d in order if d in present]


# ------------------------------------------------------------------------------------------------ tables
def header(result: dict) -> str:
    env, run, settings = result["env"], result["run"], result["settings"]
    commit = run.get("commit", "unknown") + (" (uncommitted changes)" if run.get("dirty") else "")
    lines = [f"Device: **{env['device']}**. torch {env['torch']}, triton {env.get('triton') or 'n/a'}, "
             f"transformers {env.get('transformers') or 'n/a'}, python {env['python']}; commit {commit}; "
             f"{run.get('date', '')}."]
    if env.get("device_kind") != "cuda":
        loads = [x for s in result["sections"].values() for x in (s.get("load_average") or []) if x]
        load = (f" The machine's 1-minute load average ranged {min(x[0] for x in loads):.1f}–"
                f"{max(x[0] for x in loads):.1f} over the run on {env.get('cpu_cores', '?')} cores: CPU timings are "
                f"indicative only." if loads else "")
        lines.append(f"**CPU run at reduced sizes** ({settings.get('size_note', '')}). "
                     f"GPU (H100/H200): **{NOT_MEASURED}**.{load}")
    model = settings.get("model") or {}
    if model:
        lines.append(f"Model: {model.get('image_size')}² images, ViT {model.get('vit_layers')}×{model.get('vit_width')} "
                     f"(window {model.get('window_size')}, global {model.get('global_attn_indexes')}), text encoder "
                     f"{settings.get('text', 's0').upper()} ({model.get('text_layers')} layers), "
                     f"{model.get('queries')} queries, prompts of {model.get('prompt_tokens')} tokens "
                     f"({model.get('valid_prompt_tokens')} valid); random weights (HF init), same weights in both "
                     f"models; HF attention \"sdpa\"; TF32 {'on' if settings.get('tf32') else 'off'}.")
    timer = settings.get("timing", {})
    if timer:
        lines.append(f"Timing: ops — {timer.get('ops')}; layers and models — {timer.get('layers_and_models')}.")
    return "\n\n".join(lines) + "\n"


def ceilings_table(result: dict) -> str:
    c = result.get("ceilings") or {}
    if not c:
        return ""
    rows = ["| ceiling | measured | what |", "|---|---|---|"]
    if c.get("copy"):
        rows.append(f"| memory bandwidth | {fmt_num(c['copy']['GBps'])} GB/s | {c['copy']['what']} |")
    for name, m in c.get("matmul", {}).items():
        rows.append(f"| {SHORT.get(name, name)} matmul | {fmt_num(m['TFLOPs'])} TFLOP/s | {m['what']} |")
    return "\n".join(rows) + "\n"


def layers_table(result: dict, dtype: str, notes: Notes) -> str:
    recs = [r for r in records(result, "layers") if r.get("dtype") == dtype and r.get("impl") in IMPL_LABELS]
    if not [r for r in recs if r.get("component") in ROWS]:
        return ""
    impls = _impls(recs)
    whole = {r["impl"]: r for r in recs if r.get("component") == "all"}  # one record for every row of an impl
    by = {}
    for r in recs:
        if r.get("component") in ROWS:
            by[(r["component"], r["impl"])] = r
    for impl, r in whole.items():
        for comp in ROWS:
            by.setdefault((comp, impl), r)
    for (comp, impl), r in list(by.items()):  # op-free components: the eager time stands for every backend
        if r.get("status") == SAME and by.get((comp, "sam3lt:eager"), {}).get("status") == "ok":
            by[(comp, impl)] = {**by[(comp, "sam3lt:eager")], "status": "ok", "same_as_eager": True}
    measured = {r["impl"] for r in by.values() if r.get("status") == "ok" and not r.get("same_as_eager")}
    ours = [i for i in impls if i.startswith("sam3lt") and i in measured]
    ref = "hf:eager" if "hf:eager" in measured else None
    cols = [f"{IMPL_LABELS[i]} (ms)" for i in impls]
    if ref:
        cols += [f"{IMPL_LABELS[i]} vs HF eager" for i in ours]
        if "hf:compile" in measured:
            cols += [f"{IMPL_LABELS[i]} vs HF compile" for i in ours]
    rows = ["| component | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def speed(comp, impl, base):
        a, b = by.get((comp, base)), by.get((comp, impl))
        if a and b and a.get("status") == b.get("status") == "ok":
            return fmt_x(a["ms"] / b["ms"])
        return "—"

    sums = {}
    for impl in impls:
        parts = [by.get((name, impl)) for name, _ in COMPONENTS]
        ok = [p for p in parts if p and p.get("status") == "ok"]
        sums[impl] = sum(p["ms"] for p in ok) if ok and len(ok) == len(parts) else None
    for comp in [name for name, _ in COMPONENTS] + [SUM_ROW, FULL, POSTPROCESS]:
        if comp == SUM_ROW:
            cells = [f"{fmt_ms(sums[i])}" if sums[i] is not None else "—" for i in impls]
            if ref:
                cells += [fmt_x(sums[ref] / sums[i]) if sums.get(ref) and sums[i] else "—" for i in ours]
                if "hf:compile" in measured:
                    cells += [fmt_x(sums["hf:compile"] / sums[i]) if sums.get("hf:compile") and sums[i] else "—"
                              for i in ours]
            rows.append(f"| *{comp}* | " + " | ".join(cells) + " |")
            continue
        cells = []
        for i in impls:
            rec = by.get((comp, i))
            cells.append("= eager" if rec and rec.get("same_as_eager") else _cell(rec, notes))
        if ref:
            cells += [speed(comp, i, ref) for i in ours]
            if "hf:compile" in measured:
                cells += [speed(comp, i, "hf:compile") for i in ours]
        name = f"**{comp}**" if comp == FULL else comp
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    compile_s = [f"{r['component']} {r['compile_s']:.0f} s" for r in recs
                 if r.get("impl") == "hf:compile" and r.get("status") == "ok" and "compile_s" in r]
    box = any(r.get("box_prompt") for r in recs)
    extra = ("\nEach component is called on its own with the inputs it received in one forward (captured with "
             f"forward pre-hooks): one image, one text prompt{' and one box prompt' if box else ''}. HF's scoring "
             "scores the queries of every decoder layer, sam3lt's only the last layer's (all the outputs use).\n")
    if any(r.get("same_as_eager") for r in by.values()):
        extra += ("\n\"= eager\": the component calls no sam3lt.ops op, so every backend runs the eager code (its "
                  "time is the eager column's; the sum of components uses it).\n")
    if compile_s:
        extra += f"\nHF torch.compile time per component: {', '.join(compile_s)}.\n"
    return "\n".join(rows) + "\n" + extra


def e2e_tables(result: dict, dtype: str, notes: Notes) -> str:
    recs = [r for r in records(result, "e2e") if r.get("dtype") == dtype and r.get("impl") in IMPL_LABELS]
    if not recs:
        return ""
    impls = _impls(recs)
    out = []
    by = {(r.get("kind"), r.get("images"), r.get("prompts"), r["impl"]): r for r in recs}
    # latency
    refs = [i for i in ("hf:eager", "hf:compile") if by.get(("images", 1, 1, i), {}).get("status") == "ok"]
    rows = ["| implementation | latency, batch 1 (ms) | peak memory | "
            + " | ".join(f"vs {IMPL_LABELS[r]}" for r in refs) + " |", "|---" * (3 + len(refs)) + "|"]
    for impl in impls:
        rec = by.get(("images", 1, 1, impl))
        if rec is None:
            continue
        ok = rec.get("status") == "ok"
        mem = fmt_bytes(rec.get("peak_bytes")) if ok else "—"
        vs = [fmt_x(by[("images", 1, 1, r)]["ms"] / rec["ms"]) if ok else "—" for r in refs]
        extra = f" (compile {rec['compile_s']:.0f} s)" if rec.get("compile_s") else ""
        if impl in FAST_IMPLS and ok and rec.get("capture_s") is not None:
            extra = f" ({'compile + capture' if rec.get('compiled') else 'capture'} {fmt_s(rec['capture_s'])})"
        rows.append(f"| {IMPL_LABELS[impl]}{extra} | {_cell(rec, notes)} | {mem} | " + " | ".join(vs) + " |")
    out.append("Latency (one image, one prompt):\n\n" + "\n".join(rows) + "\n")
    # throughput
    batches = sorted({r["images"] for r in recs if r.get("kind") == "images"})
    imps = [i for i in impls if any(k[0] == "images" and k[1] > 1 and k[3] == i for k in by)] or \
        [i for i in impls if i not in ("hf:compile", "sam3lt:fast+compile")]
    if len(batches) > 1:
        rows = ["| images per call | " + " | ".join(f"{IMPL_LABELS[i]} (images/s)" for i in imps) + " |",
                "|---" * (len(imps) + 1) + "|"]
        for b in batches:
            rows.append(f"| {b} | " + " | ".join(_cell(by.get(("images", b, b, i)), notes, "images_per_s", fmt_num)
                                                 for i in imps) + " |")
        out.append("Throughput (B images, one prompt each):\n\n" + "\n".join(rows) + "\n")
    # prompts per image
    counts = sorted({r["prompts"] for r in recs if r.get("kind") == "prompts"} | ({1} if batches else set()))
    if len(counts) > 1:
        imps = [i for i in impls if i != "hf:compile"
                and (i not in FAST_IMPLS or any(k[0] == "prompts" and k[3] == i for k in by))]
        cols = [f"{IMPL_LABELS[i]} ms (prompts/s)" for i in imps] + [f"{IMPL_LABELS[i]} peak" for i in imps]
        rows = ["| prompts | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for n in counts:
            cells, mems = [], []
            for i in imps:
                rec = by.get(("prompts", 1, n, i)) or (by.get(("images", 1, 1, i)) if n == 1 else None)
                if rec and rec.get("status") == "ok":
                    cells.append(f"{fmt_ms(rec['ms'])} ({fmt_num(rec.get('prompts_per_s', n * 1e3 / rec['ms']))})")
                    mems.append(fmt_bytes(rec.get("peak_bytes")))
                else:
                    cells.append(_cell(rec, notes))
                    mems.append("—")
            rows.append(f"| {n} | " + " | ".join(cells + mems) + " |")
        out.append("One image, N prompts (sam3lt encodes the image once; HF gets the image repeated N times):\n\n"
                   + "\n".join(rows) + "\n")
    kinds = {}
    for r in recs:
        if r.get("memory") and r.get("status") == "ok":
            kinds.setdefault(r["memory"], []).append(IMPL_LABELS[r["impl"]])
    if len(kinds) == 1:
        out.append(f"Peak memory: {next(iter(kinds))}.\n")
    for kind, who in (kinds.items() if len(kinds) > 1 else ()):
        out.append(f"Peak memory ({', '.join(dict.fromkeys(who))}): {kind}.\n")
    if any(r["impl"] in FAST_IMPLS for r in recs):
        out.append("sam3lt fast: `sam3lt.optimize` (static buffers, CUDA graphs on a GPU; auto backends), one "
                   "fresh fast model per case with that case's bucket; capture (and compile) time is not in the "
                   "latency and is shown beside it. A case where the plain model ran instead (a fallback) has no "
                   "number.\n")
    return "\n".join(out)


def fmt_s(seconds) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "—"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


def fast_table(result: dict, notes: Notes) -> str:
    """The fast path's breakdown (bf16, batch 1 unless said): one column per fast variant."""
    recs = [r for r in records(result, "fast") if r.get("impl") in FAST_IMPLS]
    if not recs:
        return ""
    impls = [i for i in FAST_IMPLS if any(r["impl"] == i for r in recs)]
    by = {(r.get("stage"), r["impl"]): r for r in recs}
    rows = ["| | " + " | ".join(IMPL_LABELS[i] for i in impls) + " |", "|---" * (len(impls) + 1) + "|"]

    def cell(stage, impl):
        rec = by.get((stage, impl))
        if rec is None:
            return "—"
        if rec.get("status") != "ok":
            return notes.ref(rec)
        if stage == "batch8":
            return f"{fmt_num(rec.get('images_per_s'))} images/s ({fmt_ms(rec.get('ms'))} ms)"
        if stage == "memory":
            text = fmt_bytes(rec.get("peak_bytes"))
            if rec.get("weights_bytes") is not None:
                text += (f" (weights {fmt_bytes(rec['weights_bytes'])}, above the weights "
                         f"{fmt_bytes(rec.get('above_weights_bytes'))})")
            return text
        if stage == "accuracy":
            return (f"mask IoU {rec['mask_iou']:.4f}, scores max Δ {rec['score_max_diff']:.2e}, boxes max Δ "
                    f"{rec['box_max_diff']:.2e}")
        return f"{fmt_ms(rec.get('ms'))} ms"

    for stage, label in BREAKDOWN:
        rows.append(f"| {label} | " + " | ".join(cell(stage, i) for i in impls) + " |")
    builds = [by.get(("build", i)) for i in impls]
    if any(b and b.get("status") == "ok" for b in builds):
        rows.append("| build, batch 1: optimize; first call (capture, compile, tuning) | " + " | ".join(
            f"{fmt_s(b.get('optimize_s'))}; {fmt_s(b.get('capture_s'))}" if b and b.get("status") == "ok"
            else (notes.ref(b) if b else "—") for b in builds) + " |")
    first = next((r for r in recs if r.get("status") == "ok" and r.get("memory")), None)
    extra = [f"{SHORT.get(FAST_DTYPE, FAST_DTYPE)}, one image and one 32-token prompt unless said; "
             "`sam3lt.optimize` on a deep copy of the benchmark's sam3lt model (auto backends"
             + (", CUDA graphs" if result["env"].get("device_kind") == "cuda" else "; no CUDA graphs on the CPU")
             + "); a fresh fast model per case, with that case's bucket only."]
    if first:
        extra.append(f"Peak memory: {first['memory']}.")
    extra.append("Accuracy: `sam3lt.fast.agreement` against the fp32 eager sam3lt model on the same inputs.")
    for impl in impls:
        tuned = by.get(("tuning", impl))
        if tuned and tuned.get("status") == "ok" and tuned.get("choices"):
            counts: dict[str, dict[str, int]] = {}
            for c in tuned["choices"]:
                per = counts.setdefault(str(c.get("op")), {})
                per[str(c.get("backend"))] = per.get(str(c.get("backend")), 0) + 1
            extra.append(f"Backends chosen by `sam3lt.ops.autotune` ({IMPL_LABELS[impl]}; op: backend × input "
                         "signatures): " + "; ".join(f"{op}: " + ", ".join(f"{b} ×{n}" for b, n in per.items())
                                                     for op, per in counts.items()) + ".")
    return "\n".join(rows) + "\n\n" + " ".join(extra) + "\n"


def ops_table(result: dict, notes: Notes) -> str:
    recs = records(result, "ops")
    if not recs:
        return ""
    rows = ["| op | case | shape | dtype | implementation | ms | TFLOP/s | GB/s | % compute ceiling | "
            "% bandwidth ceiling | vs eager | check vs eager |", "|---" * 12 + "|"]
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        groups.setdefault((r["op"], r["case"], r["shape"], r["dtype"]), []).append(r)
    for (op, case, shape, dtype), group in groups.items():
        lead = f"| {op} | {case} | {shape} | {SHORT.get(dtype, dtype)} |"
        for r in group:
            if r.get("status") != "ok":
                continue
            impl = r["impl"] + (" (baseline)" if r.get("kind") == "baseline" else "")
            check = ""
            if "max_abs_err" in r:
                check = f"max abs err {r['max_abs_err']:.2e}"
            elif "mismatch" in r:
                check = f"mismatch {r['mismatch']:.2e}"
            elif "check" in r:
                check = r["check"]
            pct = lambda k: f"{100 * r[k]:.1f}%" if k in r else "—"  # noqa: E731
            rows.append(f"{lead} {impl} | {fmt_ms(r['ms'])} | {fmt_num(r.get('TFLOPs'))} | {fmt_num(r.get('GBps'))} | "
                        f"{pct('frac_compute')} | {pct('frac_bandwidth')} | {fmt_x(r.get('speedup_vs_eager'))} | "
                        f"{check} |")
        missing = [f"{r['impl']} {notes.ref(r)}" for r in group if r.get("status") != "ok"]
        if missing:
            rows.append(f"{lead} *not run:* {', '.join(missing)} | | | | | | | |")
    return "\n".join(rows) + "\n"


def completeness(result: dict) -> str:
    parts = []
    for name, data in result["sections"].items():
        state = "complete" if data.get("complete") else "**incomplete** (stopped early: see the logs)"
        elapsed = f", {data['elapsed_s']:.0f} s" if data.get("elapsed_s") else ""
        parts.append(f"{name}: {state}{elapsed}")
    return "Sections: " + "; ".join(parts) + ".\n"


def markdown(result: dict, summary: bool = False) -> str:
    notes = Notes()
    name = result["run"].get("name", "run")
    goals = goals_mod.markdown(result.get("goals") or goals_mod.evaluate(result), "###" if summary else "##")
    if summary:  # the goals first (gpu_check's SUMMARY.md shows goals.md, then what follows the goals here)
        out = [goals, f"### sam3lt benchmark: {name}\n", header(result)]
    else:
        out = [f"# sam3lt benchmark: {name}\n", header(result), goals]
    table = fast_table(result, notes)
    if table:
        out.append(f"{'####' if summary else '##'} Fast path (`sam3lt.optimize`), bf16\n\n" + table)
    layer_recs, e2e_recs = records(result, "layers"), records(result, "e2e")
    for dtype in _dtypes(layer_recs + e2e_recs):
        title = SHORT.get(dtype, dtype)
        table = layers_table(result, dtype, notes)
        if table:
            out.append(f"{'####' if summary else '##'} Per layer, {title} (ms; speedup = HF time / sam3lt time)\n\n"
                       + table)
        table = e2e_tables(result, dtype, notes)
        if table:
            out.append(f"{'####' if summary else '##'} End to end, {title}\n\n" + table)
        left_out = [r for r in layer_recs + e2e_recs if r.get("dtype") == dtype and r.get("impl") == "all"]
        if left_out:
            out.append("Left out (" + title + "): " + "; ".join(
                f"{r['section']}: {r.get('reason', r.get('status'))}" for r in left_out) + ".\n")
    left_out = [r for r in e2e_recs if r.get("dtype") == "all" and r.get("kind") == "note"]
    if left_out:
        out.append("Left out: " + "; ".join(f"{IMPL_LABELS.get(r['impl'], r['impl'])}: {r.get('reason')}"
                                            for r in left_out) + ".\n")
    if not summary:
        c = ceilings_table(result)
        if c:
            out.append("## Device ceilings, measured in this run\n\n" + c)
        o = ops_table(result, notes)
        if o:
            out.append("## Per-op microbenchmarks\n\nFLOPs: attention 4·B·H·Lq·Lk·D; bytes: inputs + output once "
                       "(effective bandwidth). Fractions are of the ceilings above (compute: the matmul of the same "
                       "dtype where measured).\n\n" + o)
        out.append(completeness(result))
    if result.get("gpu", {}).get("status") == NOT_MEASURED:
        rows = ["| GPU (H100/H200), real model shapes | sam3lt (fast / eager / triton / cuda) | HF eager | "
                "HF compile |", "|---|---|---|---|"]
        rows += [f"| {what} | {NOT_MEASURED} | " + ("— | — |" if what.startswith(("per-op", "fast path")) else
                                                       f"{NOT_MEASURED} | {NOT_MEASURED} |") for what in GPU_ROWS]
        out.append(f"{'####' if summary else '##'} GPU\n\n" + "\n".join(rows) + "\n\nThese come from "
                   "`OUT=<dir> bash bench/gpu_check.sh` on the GPU machine; none has been run for this table.\n")
    if notes.items:
        out.append(("Notes:\n\n" if summary else "## Notes\n\n") + notes.render())
    if summary:
        out.append("Full tables (per-op microbenchmarks, device ceilings): `bench.md` in this run's folder.\n")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------ plot
def speedups(result: dict) -> dict:
    """{dtype: {impl: {component: HF-eager ms / impl ms}}} for the per-layer rows both measured."""
    out: dict = {}
    recs = records(result, "layers")
    for dtype in _dtypes(recs):
        by = {(r["component"], r["impl"]): r for r in recs if r.get("dtype") == dtype and r.get("status") == "ok"}
        per = {}
        for impl in _impls([r for r in recs if r.get("dtype") == dtype]):
            if impl == "hf:eager":
                continue
            vals = {}
            for comp in ROWS:
                a, b = by.get((comp, "hf:eager")), by.get((comp, impl))
                if a and b and b["ms"] > 0:
                    vals[comp] = a["ms"] / b["ms"]
            if vals:
                per[impl] = vals
        if per:
            out[dtype] = per
    return out


COLOURS = {"sam3lt:eager": (31, 119, 180), "sam3lt:triton": (255, 127, 14), "sam3lt:cuda": (44, 160, 44),
           "sam3lt:auto": (148, 103, 189), "hf:compile": (127, 127, 127)}


def plot(result: dict, path: Path, renderer: str = "auto") -> str:
    """Write the per-layer speedup chart; returns the renderer used ("matplotlib", "pillow") or "none: why"."""
    data = speedups(result)
    if not data:
        return "none: no per-layer rows measured for both HF eager and sam3lt"
    title = f"sam3lt per-layer speedup over HF eager — {result['env']['device']}"
    if result["env"].get("device_kind") != "cuda":
        title += " (CPU, reduced sizes)"
    why = "matplotlib not asked for"
    if renderer in ("auto", "matplotlib"):
        try:
            _plot_matplotlib(data, path, title)
            return "matplotlib"
        except ImportError:
            if renderer == "matplotlib":
                raise
            why = "matplotlib is not installed"
        except Exception as err:  # a broken matplotlib install: fall back rather than lose the plot
            if renderer == "matplotlib":
                raise
            why = f"matplotlib failed: {type(err).__name__}: {str(err)[:80]}"
    _plot_pillow(data, path, title.replace("—", "-"))
    return f"pillow ({why})"


def _plot_matplotlib(data, path, title) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(data), figsize=(6.5 * len(data), 5.5), squeeze=False)
    for ax, (dtype, per) in zip(axes[0], data.items()):
        comps = [c for c in ROWS if any(c in v for v in per.values())]
        height = 0.8 / max(1, len(per))
        for k, (impl, vals) in enumerate(per.items()):
            ys = [i + k * height for i, c in enumerate(comps) if c in vals]
            xs = [vals[c] for c in comps if c in vals]
            ax.barh(ys, xs, height=height, label=IMPL_LABELS[impl], color=[v / 255 for v in COLOURS.get(impl, (0, 0, 0))])
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(comps))], comps)
        ax.invert_yaxis()
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_xlabel("speedup over HF eager (×, higher is better)")
        ax.set_title(SHORT.get(dtype, dtype))
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_pillow(data, path, title) -> None:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=13)
    except (TypeError, OSError):
        font = ImageFont.load_default()
    label_w, plot_w, bar_h, pad = 150, 420, 15, 12
    panels = []
    for dtype, per in data.items():
        comps = [c for c in ROWS if any(c in v for v in per.values())]
        group_h = bar_h * len(per) + 8
        h = 40 + group_h * len(comps) + 30 + 16 * len(per)
        img = Image.new("RGB", (label_w + plot_w + 70 + 2 * pad, h), "white")
        d = ImageDraw.Draw(img)
        d.text((pad, 6), SHORT.get(dtype, dtype), fill="black", font=font)
        vmax = max(max(v.values()) for v in per.values())
        vmax = max(1.5, vmax * 1.1)
        x0 = pad + label_w
        scale = plot_w / vmax
        y = 30
        for comp in comps:
            d.text((pad, y + max(0, (group_h - 8) // 2 - 7)), comp, fill="black", font=font)
            for k, (impl, vals) in enumerate(per.items()):
                if comp in vals:
                    yy = y + k * bar_h
                    d.rectangle([x0, yy, x0 + vals[comp] * scale, yy + bar_h - 3], fill=COLOURS.get(impl, (0, 0, 0)))
                    d.text((x0 + vals[comp] * scale + 3, yy - 1), f"{vals[comp]:.2f}x", fill="black", font=font)
            y += group_h
        one = x0 + scale
        d.line([one, 26, one, y], fill="black", width=1)
        d.text((one - 8, y + 2), "1x", fill="black", font=font)
        y += 20
        for k, impl in enumerate(per):
            d.rectangle([x0, y + 16 * k + 3, x0 + 12, y + 16 * k + 13], fill=COLOURS.get(impl, (0, 0, 0)))
            d.text((x0 + 18, y + 16 * k), IMPL_LABELS[impl] + " vs HF eager", fill="black", font=font)
        panels.append(img)
    probe = ImageDraw.Draw(panels[0])
    lines, line = [], ""
    for word in title.split(" "):  # wrap the title to the panels' width
        trial = f"{line} {word}".strip()
        if line and probe.textlength(trial, font=font) > sum(p.width for p in panels) - 2 * pad:
            lines.append(line)
            trial = word
        line = trial
    lines.append(line)
    top = 10 + 17 * len(lines)
    width = sum(p.width for p in panels)
    height = max(p.height for p in panels) + top
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(lines):
        draw.text((pad, 6 + 17 * i), text, fill="black", font=font)
    x = 0
    for p in panels:
        canvas.paste(p, (x, top))
        x += p.width
    canvas.save(path)


# ------------------------------------------------------------------------------------------------ write
def write(folder: Path, plot_renderer: str = "auto") -> dict:
    """Merge ``folder``'s section files and write results.json, bench.md, summary.md and speedups.png."""
    folder = Path(folder)
    result = merge(folder)
    result["goals"] = goals_mod.write(folder, result)
    png = folder / "speedups.png"
    try:
        result["run"]["plot"] = plot(result, png, plot_renderer)
    except Exception as err:  # a broken matplotlib must not lose the tables
        result["run"]["plot"] = f"none: {type(err).__name__}: {err}"
    if not result["run"]["plot"].startswith(("matplotlib", "pillow")) and png.exists():
        png.unlink()
    (folder / "results.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (folder / "bench.md").write_text(markdown(result))
    (folder / "summary.md").write_text(markdown(result, summary=True))
    return result
