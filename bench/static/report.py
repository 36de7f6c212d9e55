"""Audit rows per launch (occupancy, waves, estimate), violations against the allowlist, JSON and markdown."""
from __future__ import annotations

import json
import os

from . import metrics
from .arch import Arch

ALLOWLIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "allowlist.json")
_GRID_LIMITS = (2**31 - 1, 65535, 65535)


def _finish(arch: Arch, row: dict) -> dict:
    """Occupancy, waves and the estimate of one launch row that has regs/threads/smem/ctas/sass."""
    per_sm, limiter = metrics.occupancy(arch, row["regs"], row["threads"], row["smem"])
    spills = row["spill_stores"] + row["spill_loads"]
    row.update(ctas_per_sm=per_sm, limiter=limiter, waves=round(metrics.waves(arch, row["ctas"], per_sm), 2),
               estimate=metrics.roofline_estimate(arch, row["sass"], row["ctas"], per_sm, spills, row.get("head_dim")))
    return row


def triton_rows(arch: Arch, rows: list[dict], binaries: dict) -> list[dict]:
    out = []
    for r in rows:
        b = binaries[r["binary"]]
        keep = ("regs", "spill_stores", "spill_loads", "stack", "threads", "smem", "num_warps", "num_stages", "sass")
        out.append(_finish(arch, {**r, **{k: b[k] for k in keep}, "head_dim": r["config"].get("HEAD_DIM")}))
    return out


def cuda_rows(arch: Arch, entries: list[dict], launches: list[dict]) -> tuple[list[dict], list[str]]:
    """One row per model launch of a CUDA kernel; notes for launches whose kernel or grid is unknown."""
    rows, notes, seen = [], [], {}
    for launch in launches:
        if launch["kernel"] is None:
            if f"{launch['op']}: {launch['note']}" not in notes:
                notes.append(f"{launch['op']}: {launch['note']}")
            continue
        match = [e for e in entries if launch["kernel"] in e["kernel"]]
        if len(match) != 1 or not match[0]["threads"]:
            note = (f"{launch['op']}: {len(match)} compiled kernels match {launch['kernel']} (or no "
                    f"__launch_bounds__): grid not audited (update bench/static/cuda_audit.py LAUNCH_MODELS)")
            if note not in notes:
                notes.append(note)
            continue
        e = match[0]
        key = (e["mangled"], tuple(launch["grid"]))
        if key in seen:
            seen[key]["scenarios"] = sorted(set(seen[key]["scenarios"]) | set(launch["scenarios"]))
            continue
        row = {"backend": "cuda", "kernel": e["base"], "family": e["file"], "grid": launch["grid"],
               "ctas": launch["ctas"], "config": {"instantiation": e["kernel"]}, "binary": e["mangled"],
               "scenarios": launch["scenarios"], "model_runs": True, "op": launch["op"],
               "head_dim": launch["head_dim"],
               "regs": e["regs"], "spill_stores": e["spill_stores"], "spill_loads": e["spill_loads"],
               "stack": e["stack"], "threads": e["threads"], "smem": e["static_smem"] + launch["dynamic_smem"],
               "sass": e["sass"]}
        seen[key] = row
        rows.append(_finish(arch, row))
    return rows, notes


def violations(arch: Arch, rows: list[dict]) -> list[dict]:
    """Launch-limit violations (any launch) and spills (kernels the model runs), one per distinct binary+kind."""
    found: dict[tuple, dict] = {}
    for r in rows:
        problems = []
        if r["ctas_per_sm"] == 0:
            problems.append(("launch-limit", f"{r['regs']} regs x {r['threads']} threads, {r['smem']} B smem "
                                             f"cannot launch on sm_{arch.cc}"))
        for dim, (g, limit) in enumerate(zip(r["grid"], _GRID_LIMITS)):
            if g > limit:
                problems.append(("launch-limit", f"grid dim {dim} = {g} > {limit}"))
        spilled = max(r["spill_stores"], r["spill_loads"])
        if spilled and r["model_runs"]:
            problems.append(("spill", f"{r['spill_stores']} B spill stores, {r['spill_loads']} B spill loads"))
        for kind, detail in problems:
            v = found.setdefault((r["backend"], r["binary"], kind), {
                "arch": arch.cc, "backend": r["backend"], "kernel": r["kernel"], "config": r["config"],
                "kind": kind, "detail": detail, "spill_bytes": spilled, "scenarios": set()})
            v["scenarios"] |= set(r["scenarios"])
    return [{**v, "scenarios": sorted(v["scenarios"])} for v in found.values()]


def load_allowlist(path: str = ALLOWLIST) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        entries = json.load(f)
    for i, e in enumerate(entries):
        missing = {"arch", "backend", "kernel", "kind", "match", "reason"} - set(e)
        if missing or not str(e.get("reason", "")).strip():
            raise ValueError(f"{path}: entry {i} needs arch, backend, kernel, kind, match and a reason "
                             f"(missing: {sorted(missing) or ['reason text']})")
    return entries


def _covers(entry: dict, v: dict) -> bool:
    return (entry["arch"] == v["arch"] and entry["backend"] == v["backend"] and entry["kernel"] == v["kernel"]
            and entry["kind"] == v["kind"] and all(v["config"].get(k) == x for k, x in entry["match"].items())
            and (v["kind"] != "spill" or v["spill_bytes"] <= entry.get("max_spill_bytes", 0)))


def check(found: list[dict], allowlist: list[dict], arch: int) -> dict:
    """new: violations no entry covers (CI fails); allowed: covered, with the entry's reason; stale: entries of
    this arch that covered nothing (fixed: remove them)."""
    new, allowed, used = [], [], set()
    for v in found:
        hit = next((i for i, e in enumerate(allowlist) if _covers(e, v)), None)
        if hit is None:
            new.append(v)
        else:
            used.add(hit)
            allowed.append({**v, "reason": allowlist[hit]["reason"]})
    stale = [e for i, e in enumerate(allowlist) if e["arch"] == arch and i not in used]
    return {"new": new, "allowed": allowed, "stale": stale}


# ---------------------------------------------------------------- markdown

def _config_label(row: dict) -> str:
    if row["backend"] == "cuda":
        name = row["config"]["instantiation"].removeprefix("void ").replace("sam3lt::", "")
        return name[:name.rindex("(")] if name.endswith(")") else name  # drop the parameter list
    parts = [f"{k.removeprefix('BLOCK_')}={v}" for k, v in row["config"].items()
             if not isinstance(v, bool) and k not in ("LOG2_T", "TWO_PI", "EPS", "GROUP_M", "HEAD_DIM")]
    parts += [k for k, v in row["config"].items() if v is True]
    return " ".join(parts) + f" w{row['num_warps']} s{row['num_stages']}"


def _share(row: dict) -> str:
    e = row["estimate"]
    return "mem-bound" if e["share_est"] is None else f"≤{100 * e['share_est']:.0f}%"


def merged(rows: list[dict]) -> list[dict]:
    """Rows of one binary and grid merged (launches that differ only in sizes the grid does not show)."""
    out: dict[tuple, dict] = {}
    for r in rows:
        key = (r["backend"], r["binary"], tuple(r["grid"]))
        if key in out:
            out[key]["scenarios"] = sorted(set(out[key]["scenarios"]) | set(r["scenarios"]))
        else:
            out[key] = dict(r)
    return sorted(out.values(), key=lambda r: (r["backend"], r["kernel"], _config_label(r), r["ctas"]))


def summary(rows: list[dict]) -> list[dict]:
    """One line per binary: its grids' CTA range, waves and estimate range."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["binary"]), []).append(r)
    out = []
    for rs in groups.values():
        r = rs[0]
        shares = [x["estimate"]["share_est"] for x in rs if x["estimate"]["share_est"] is not None]
        out.append({**r, "ctas_range": (min(x["ctas"] for x in rs), max(x["ctas"] for x in rs)),
                    "waves_range": (min(x["waves"] for x in rs), max(x["waves"] for x in rs)),
                    "share_range": (min(shares), max(shares)) if shares else None,
                    "model_runs": any(x["model_runs"] for x in rs)})
    return sorted(out, key=lambda r: (r["backend"], r["kernel"], _config_label(r)))


def _rng(lo_hi, fmt="{}") -> str:
    lo, hi = lo_hi
    return fmt.format(lo) if lo == hi else f"{fmt.format(lo)}–{fmt.format(hi)}"


def summary_table(rows: list[dict]) -> list[str]:
    lines = ["| backend | kernel | config | regs | spill st/ld B | stack B | smem KB | CTAs/SM (limit) | CTAs "
             "| waves | HMMA | wgmma | LDSM | LDGSTS | est. share* |", "|" + "---|" * 15]
    for r in summary(rows):
        s = r["sass"]
        share = "mem-bound" if r["share_range"] is None else _rng(tuple(100 * x for x in r["share_range"]), "≤{:.0f}%")
        lines.append(
            f"| {r['backend']} | {r['kernel']}{'' if r['model_runs'] else ' (not run)'} | {_config_label(r)} | "
            f"{r['regs']} | {r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['smem'] / 1024:.1f} | "
            f"{r['ctas_per_sm']} ({r['limiter']}) | {_rng(r['ctas_range'])} | {_rng(r['waves_range'])} | "
            f"{s.get('hmma', 0)} | {s.get('wgmma', 0)} | {s.get('ldsm', 0)} | {s.get('ldgsts', 0)} | {share} |")
    return lines


def markdown(report: dict) -> str:
    arch = report["arch"]
    lines = [f"# Static audit, sm_{arch} ({report['card']})", "",
             f"`python -m bench.static --arch {arch}` at {report['commit']}: compiled, never run (no GPU). "
             f"{', '.join(f'{k} {v}' for k, v in report['versions'].items())}. Every launch the S0 model makes in "
             "bf16 at 1008² for the scenarios images x prompts 1x1, 1x4, 1x16, 1x64, 8x8, plus post-processing; "
             "CUDA rows are the csrc kernels at the same op calls (the cuda backend).", "",
             "## Per binary (ranges over its launches)", ""] + summary_table(report["rows"])
    lines += ["", "*" + " ".join(metrics.roofline_estimate.__doc__.split()), ""]
    v = report["violations"]
    lines.append(f"## Violations: {len(v['new'])} new, {len(v['allowed'])} allowlisted, {len(v['stale'])} stale")
    for kind in ("new", "allowed"):
        for x in v[kind]:
            lines.append(f"- {kind}: {x['backend']} {x['kernel']} [{_config_label_v(x)}] {x['kind']}: {x['detail']}"
                         f" (scenarios {', '.join(x['scenarios'])})" + (f" — {x['reason']}" if kind == "allowed" else ""))
    for x in v["stale"]:
        lines.append(f"- stale allowlist entry (fixed? remove it): {x['kernel']} {x['match']} {x['kind']}")
    if report.get("notes"):
        lines += ["", "## Notes"] + [f"- {n}" for n in report["notes"]]
    lines += ["", "## Per launch", "",
              "| backend | kernel | config | scenarios | grid | regs | spill st/ld B | smem KB | threads "
              "| CTAs/SM (limit) | waves | est. share* |", "|" + "---|" * 12]
    for r in merged(report["rows"]):
        lines.append(
            f"| {r['backend']} | {r['kernel']}{'' if r['model_runs'] else ' (not run)'} | {_config_label(r)} | "
            f"{', '.join(r['scenarios'])} | {'×'.join(map(str, r['grid']))} | {r['regs']} | "
            f"{r['spill_stores']}/{r['spill_loads']} | {r['smem'] / 1024:.1f} | {r['threads']} | "
            f"{r['ctas_per_sm']} ({r['limiter']}) | {r['waves']} | {_share(r)} |")
    lines += ["", "## CUDA instantiations (all compiled, model or not)", "",
              "| file | kernel | regs | spill st/ld B | stack B | HMMA | LDSM | LDGSTS |", "|---|---|---|---|---|---|---|---|"]
    for e in report["cuda_instantiations"]:
        s = e["sass"]
        name = e["kernel"].removeprefix("void ").replace("sam3lt::", "")
        lines.append(f"| {e['file']} | {name} | {e['regs']} | {e['spill_stores']}/{e['spill_loads']} | {e['stack']} | "
                     f"{s.get('hmma', 0)} | {s.get('ldsm', 0)} | {s.get('ldgsts', 0)} |")
    return "\n".join(lines) + "\n"


def _config_label_v(v: dict) -> str:
    if v["backend"] == "cuda":
        return v["config"]["instantiation"].removeprefix("void ").replace("sam3lt::", "")
    return ", ".join(f"{k}={x}" for k, x in v["config"].items() if k not in ("LOG2_T", "TWO_PI", "EPS"))
