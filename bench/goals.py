"""Issue 6's goals for the fast path, checked against a run's measurements: ``goals.md`` (and ``goals`` in
``results.json``, the first table of ``summary.md``).

One row per goal: the target, the measured value of each fast-path variant (``sam3lt fast``: bf16 with CUDA
graphs; ``sam3lt fast+compile``: the same with ``torch.compile``), HF transformers' eager and ``torch.compile``
numbers where the goal has a counterpart, and a status computed from the numbers — never typed in:

- "met" / "not met": only for measurements taken at the goal's conditions (a CUDA GPU, bf16, the released S0
  model on 1008² images: run size "full"). "met" when a variant meets the target ("met (fast+compile)" when only
  the compiled one does);
- "not measured (reason)": a CPU run ("CPU run: sizes reduced"; its numbers are still shown, as indicative),
  a GPU run at reduced sizes, or no usable measurement (the section did not run, a fallback to the plain
  model, an error; the reason is the record's).

The numbers come from the fast sections' breakdown records (``section="fast"``, bench/e2e.py) and, for HF, from
the e2e section (HF eager, bf16) and the compile section (HF compile, whole model, bf16).

    python -m bench.goals DIR            # (re)write DIR/goals.md from the section files of a run folder
    python -m bench.goals DIR --print    # only print it
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path

from .sections import merge

GIB = 2**30
GOAL_DTYPE, GOAL_IMAGE_SIZE, GOAL_SIZE = "bfloat16", 1008, "full"
CPU_REASON = "CPU run: sizes reduced"
VARIANTS = (("fast", "sam3lt:fast", "fast"), ("fast+compile", "sam3lt:fast+compile", "fast-compile"))
TITLE = "Issue 6 goals: the fast path (bf16) against its targets"
END_MARKER = "<!-- end of goals -->"


@dataclass(frozen=True)
class Goal:
    key: str
    label: str
    target: str
    direction: str  # "max": value <= threshold meets it; "min": value >= threshold
    threshold: float
    stage: str  # the breakdown record's stage
    field: str  # the value's key in that record
    unit: str = ""
    per_prompt: bool = False

    def meets(self, value: float) -> bool:
        return value <= self.threshold if self.direction == "max" else value >= self.threshold


GOALS = (
    Goal("end_to_end", "end to end: 1008² image + one 32-token prompt, batch 1", "≤ 9 ms", "max", 9.0, "full", "ms",
         "ms"),
    Goal("vision", "vision stage (encode_image: ViT + neck)", "≤ 8 ms", "max", 8.0, "vision", "ms", "ms"),
    Goal("text", "text stage (encode_text, one prompt)", "≤ 0.3 ms", "max", 0.3, "text", "ms", "ms"),
    Goal("heads", "heads per prompt (image and text features cached)", "≤ 1 ms", "max", 1.0, "heads", "ms", "ms",
         per_prompt=True),
    Goal("extra_prompt", "one extra prompt on a cached image (text + heads)", "≤ 0.5 ms", "max", 0.5,
         "extra_prompt", "ms", "ms"),
    Goal("throughput", "throughput, batch 8 (one prompt per image)", "≥ 115 images/s", "min", 115.0, "batch8",
         "images_per_s", "images/s"),
    Goal("memory", "peak memory, batch 1 (weights + inputs + working memory)", "≤ 1.0 GiB", "max", 1.0 * GIB,
         "memory", "peak_bytes", "bytes"),
    Goal("mask_iou", "bf16 vs fp32 eager: mask IoU", "≥ 0.99", "min", 0.99, "accuracy", "mask_iou"),
    Goal("scores", "bf16 vs fp32 eager: scores, max abs difference", "≤ 1e-2", "max", 1e-2, "accuracy",
         "score_max_diff"),
)
# the HF counterparts: goal key -> (e2e images/prompts, field)
HF_FIELDS = {"end_to_end": ((1, 1), "ms", "ms"), "throughput": ((8, 8), "images_per_s", "images/s"),
             "memory": ((1, 1), "peak_bytes", "bytes")}
HF_COMPILE_KEYS = ("end_to_end", "memory")


# ------------------------------------------------------------------------------------------------ formatting
def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_value(value, unit: str) -> str:
    if not _finite(value):
        return "—"
    if unit == "bytes":
        if value < 2**20:
            return "<1 MiB"
        return f"{value / GIB:.3f} GiB" if value >= 2**26 else f"{value / 2**20:.1f} MiB"
    if unit == "ms":
        return f"{value:.3g} ms" if value < 100 else f"{value:.0f} ms"
    if unit == "images/s":
        return f"{value:.1f} images/s" if value < 1000 else f"{value:.0f} images/s"
    if value == 0:
        return "0"
    return f"{value:.4f}" if 1e-2 <= abs(value) < 10 else f"{value:.2e}"


def _letter(i: int) -> str:
    """a, b, ..., z, aa, ab, ...: the goals table's footnotes (the other tables number theirs)."""
    return (_letter(i // 26 - 1) if i >= 26 else "") + "abcdefghijklmnopqrstuvwxyz"[i % 26]


def _short(text, n: int = 110) -> str:
    text = str(text).replace("\n", " ").replace("|", "/")
    return text if len(text) <= n else text[:n - 1] + "…"


# ------------------------------------------------------------------------------------------------ evaluation
def _records(result: dict, section: str) -> list[dict]:
    return [r for data in result.get("sections", {}).values() for r in data.get("records", [])
            if r.get("section") == section]


def run_conditions(result: dict) -> tuple[bool, str | None]:
    """Whether the run is at the goals' conditions (a CUDA GPU, the full-size model), and why not."""
    env, run = result.get("env", {}), result.get("run", {})
    size = run.get("size") or result.get("settings", {}).get("size")
    if env.get("device_kind") != "cuda":
        return False, CPU_REASON if size != GOAL_SIZE else "CPU run"
    if size != GOAL_SIZE:
        return False, f"GPU run at reduced sizes ({size})"
    return True, None


def _record_conditions(rec: dict) -> str | None:
    """Why a record is not at the goal's conditions (dtype, image size), or None."""
    if rec.get("dtype") != GOAL_DTYPE:
        return f"measured in {rec.get('dtype')}, not bf16"
    if rec.get("image_size") is not None and rec["image_size"] != GOAL_IMAGE_SIZE:
        return f"measured at {rec['image_size']}², not {GOAL_IMAGE_SIZE}²"
    return None


def _section_names(result: dict) -> set[str]:
    return set(result.get("sections", {}))


def _variant_cell(goal: Goal, recs: dict, variant: str, section: str, sections: set[str], run_ok: bool) -> dict:
    """{value, text, measured (a number), at_conditions, meets, reason} for one variant."""
    rec = recs.get((variant, goal.stage))
    if rec is None:
        why = (f"the {section} section is not in this run" if section not in sections
               else f"no {goal.stage} record in the {section} section")
        return {"value": None, "text": f"not measured ({why})", "reason": why}
    if rec.get("status") != "ok" or not _finite(rec.get(goal.field)):
        why = f"{rec.get('status', '?')}: {rec.get('reason', 'no value recorded')}"
        return {"value": None, "text": f"not measured ({_short(why)})", "reason": _short(why, 200)}
    value = float(rec[goal.field])
    if goal.per_prompt:
        value /= max(1, int(rec.get("prompts") or 1))
    text = fmt_value(value, goal.unit)
    if goal.key == "memory" and _finite(rec.get("weights_bytes")):
        text += (f" (weights {fmt_value(rec['weights_bytes'], 'bytes')}, above the weights "
                 f"{fmt_value(rec.get('above_weights_bytes'), 'bytes')})")
    why = _record_conditions(rec)
    at = run_ok and why is None
    return {"value": value, "text": text, "at_conditions": at, "meets": goal.meets(value) if at else None,
            "reason": why}


def _hf_cell(result: dict, goal: Goal, impl: str) -> dict | None:
    if goal.key not in HF_FIELDS:
        return None
    (images, prompts), field, unit = HF_FIELDS[goal.key]
    recs = [r for r in _records(result, "e2e") if r.get("impl") == impl and r.get("dtype") == GOAL_DTYPE
            and r.get("kind") == "images" and r.get("images") == images and r.get("prompts") == prompts]
    section = "e2e" if impl == "hf:eager" else "compile"
    if impl == "hf:compile" and goal.key not in HF_COMPILE_KEYS:
        return None  # the compile section times HF compile at batch 1 only
    if not recs:
        why = (f"not run (the {section} section is not in this run)" if section not in _section_names(result)
               else f"not measured (no bf16 batch-{images} record)")
        return {"value": None, "text": why}
    rec = recs[-1]
    if rec.get("status") != "ok" or not _finite(rec.get(field)):
        return {"value": None, "text": f"{rec.get('status', '?')} ({_short(rec.get('reason', ''), 90)})"}
    text = fmt_value(rec[field], unit)
    if rec.get("compile_s"):
        text += f" (compile {rec['compile_s']:.0f} s)"
    return {"value": float(rec[field]), "text": text}


def evaluate(result: dict) -> dict:
    """The goals table as data: conditions, versions, one row per goal, the side-by-side ratios."""
    run_ok, run_reason = run_conditions(result)
    sections = _section_names(result)
    recs = {}
    for r in _records(result, "fast"):
        variant = str(r.get("impl", "")).split(":", 1)[-1]
        recs[(variant, r.get("stage"))] = r  # the last record of a stage wins (a rerun appends)
    rows = []
    for goal in GOALS:
        cells = {variant: _variant_cell(goal, recs, variant, section, sections, run_ok)
                 for variant, _, section in VARIANTS}
        at = {v: c for v, c in cells.items() if c.get("at_conditions")}
        met_by = [v for v, c in at.items() if c["meets"]]
        if not run_ok:
            status = f"not measured ({run_reason})"
        elif met_by:
            status = "met" if "fast" in met_by else f"met ({', '.join(met_by)})"
        elif at:
            status = "not met"
        else:
            reasons = [c["reason"] for c in cells.values() if c.get("reason")]
            status = f"not measured ({reasons[0] if reasons else 'no measurement'})"
        rows.append({"key": goal.key, "goal": goal.label, "target": goal.target, "threshold": goal.threshold,
                     "direction": goal.direction, "unit": goal.unit, "cells": cells,
                     "hf_eager": _hf_cell(result, goal, "hf:eager"), "hf_compile": _hf_cell(result, goal, "hf:compile"),
                     "status": status, "met_by": met_by})
    env, run = result.get("env", {}), result.get("run", {})
    out = {"title": TITLE, "at_goal_conditions": run_ok, "conditions_reason": run_reason, "rows": rows,
           "device": env.get("device"), "versions": {
               "torch": env.get("torch"), "triton": env.get("triton"), "cuda": env.get("cuda_runtime"),
               "transformers": env.get("transformers"), "python": env.get("python")},
           "commit": run.get("commit"), "dirty": run.get("dirty"), "date": run.get("date"),
           "size": run.get("size"), "size_note": result.get("settings", {}).get("size_note")}
    out["side_by_side"] = _side_by_side(rows[0])
    out["accuracy_inputs"] = next((r.get("inputs") for r in _records(result, "fast")
                                   if r.get("stage") == "accuracy" and r.get("inputs")), None)
    out["memory_method"] = next((r.get("memory") for r in _records(result, "fast")
                                 if r.get("stage") == "memory" and r.get("status") == "ok"), None)
    out["device_kind"] = env.get("device_kind")
    return out


def _side_by_side(row: dict) -> dict:
    """End to end at batch 1: HF eager / fast and HF compile / fast (and for fast+compile)."""
    out = {}
    for ref in ("hf_eager", "hf_compile"):
        base = (row.get(ref) or {}).get("value")
        for variant, cell in row["cells"].items():
            if _finite(base) and _finite(cell.get("value")) and cell["value"] > 0:
                out[f"{ref} / {variant}"] = base / cell["value"]
    return out


# ------------------------------------------------------------------------------------------------ markdown
def markdown(goals: dict, level: str = "##") -> str:
    v = goals["versions"]
    commit = (goals.get("commit") or "unknown") + (" (uncommitted changes)" if goals.get("dirty") else "")
    lines = [f"{level} {goals['title']}\n",
             f"Card: **{goals.get('device')}**; torch {v.get('torch')}, triton {v.get('triton') or 'n/a'}, CUDA "
             f"{v.get('cuda') or 'n/a'}, transformers {v.get('transformers') or 'n/a'}; commit {commit}; "
             f"{goals.get('date') or ''}.\n"]
    if goals["at_goal_conditions"]:
        lines.append("Measured at the goals' conditions: GPU, bf16, the released S0 model on 1008² images.\n")
    else:
        lines.append(f"**Not at the goals' conditions ({goals['conditions_reason']})**: no row can be met or not "
                     f"met; the numbers are indicative only ({goals.get('size_note') or goals.get('size')}).\n")
    rows = ["| goal | target | sam3lt fast | sam3lt fast+compile | HF eager | HF compile | status |",
            "|---|---|---|---|---|---|---|"]
    reasons: list[str] = []

    def short(cell: dict | None) -> str:
        """A number, or "not measured [n]" / "skipped [n]" with the reason as footnote n."""
        if not cell:
            return "—"
        text = cell.get("text", "—")
        if cell.get("value") is not None or "(" not in text:
            return text
        head, why = text.split(" (", 1)
        why = why[:-1] if why.endswith(")") else why
        if why not in reasons:
            reasons.append(why)
        return f"{head} [{_letter(reasons.index(why))}]"

    for row in goals["rows"]:
        cells = [short(row["cells"][variant]) for variant, _, _ in VARIANTS]
        hf = [short(row.get(k)) for k in ("hf_eager", "hf_compile")]
        status = row["status"]
        status = f"**{status}**" if status.startswith(("met", "not met")) else status
        rows.append(f"| {row['goal']} | {row['target']} | " + " | ".join(cells + hf) + f" | {status} |")
    lines.append("\n".join(rows) + "\n")
    if reasons:
        lines.append("  \n".join(f"[{_letter(i)}] {why}" for i, why in enumerate(reasons)) + "\n")
    ratio = goals.get("side_by_side") or {}
    e2e = goals["rows"][0]
    if ratio:
        lines.append("End to end, bf16, batch 1, side by side: " + "; ".join(
            f"{k.replace('hf_eager', 'HF eager').replace('hf_compile', 'HF compile')} = {x:.2f}×"
            for k, x in ratio.items()) + ".\n")
    hf_compile = (e2e.get("hf_compile") or {}).get("text", "")
    if not _finite((e2e.get("hf_compile") or {}).get("value")):
        lines.append(f"HF torch.compile end to end: {hf_compile or 'not measured'}.\n")
    gpu = goals.get("device_kind") == "cuda"
    notes = [("Timings: CUDA events around each call, synchronised after each, median" if gpu else
              "Timings: time.perf_counter around each call, median")
             + "; capture/compile time is not in the latency (it is in the fast sections' build records). The "
               "fast-path columns are `sam3lt.optimize` (auto backends" + (", CUDA graphs" if gpu else "")
             + "); HF eager is the e2e section's, HF compile the compile section's (whole model).",
             f"Peak memory: {goals.get('memory_method') or 'weights + inputs + peak working memory'}. The S0 "
             "weights alone are 0.986 GiB in bf16 (529M parameters, unused ones included), so the weights' size is "
             "shown next to the total."]
    if goals.get("accuracy_inputs"):
        notes.append(f"Accuracy: {goals['accuracy_inputs']}.")
    lines.append("\n".join(f"- {n}" for n in notes) + "\n")
    return "\n".join(lines) + END_MARKER + "\n"


def write(folder: Path, result: dict) -> dict:
    goals = evaluate(result)
    (Path(folder) / "goals.md").write_text(markdown(goals))
    return goals


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="a run folder (its section JSON files)")
    parser.add_argument("--print", action="store_true", help="print goals.md; write nothing")
    args = parser.parse_args(argv)
    result = merge(args.folder)
    goals = evaluate(result)
    if args.print:
        print(markdown(goals), end="")
    else:
        (args.folder / "goals.md").write_text(markdown(goals))
        print(markdown(goals), end="")


if __name__ == "__main__":
    main()
