"""The section files of a run folder (one JSON per section, each written by one process) and their merge into one
results dict: what :mod:`bench.report` and :mod:`bench.goals` both read."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .common import NOT_MEASURED, SCHEMA

SECTIONS = ("fast", "ops", "layers", "e2e", "compile", "fast-compile")
GPU_ROWS = ("fast path (bf16, CUDA graphs): breakdown, memory, accuracy", "per-op microbenchmarks (fp32, bf16)",
            "per-layer breakdown (fp32, bf16)", "latency, batch 1 (fp32, bf16)", "throughput, batch 1/4/8",
            "one image, 1/4/16/64 prompts", "peak memory")


def load_sections(folder: Path) -> dict:
    out = {}
    for name in SECTIONS:
        path = folder / f"{name}.json"
        if path.exists():
            out[name] = json.loads(path.read_text())
    return out


def merge(folder: Path) -> dict:
    """One results dict from the section files in ``folder`` (each written by one process)."""
    sections = load_sections(folder)
    if not sections:
        raise FileNotFoundError(f"no section results ({', '.join(s + '.json' for s in SECTIONS)}) in {folder}")
    first = next(iter(sections.values()))
    result = {"schema": SCHEMA, "run": dict(first["run"]), "env": first["env"], "settings": first["settings"],
              "ceilings": {}, "sections": {}}
    for name, data in sections.items():
        if data.get("ceilings"):
            result["ceilings"] = data["ceilings"]
        result["sections"][name] = {"complete": data.get("complete", False), "records": data.get("records", []),
                                    "elapsed_s": data.get("elapsed_s"), "run": data["run"],
                                    "load_average": [data.get("env", {}).get("load_average_at_start"),
                                                     data.get("load_average_at_end")]}
    result["run"]["report_date"] = time.strftime("%Y-%m-%d %H:%M:%S")
    if result["env"].get("device_kind") != "cuda":
        result["gpu"] = {"status": NOT_MEASURED,
                         "note": "this is a CPU run; GPU numbers come from bench/gpu_check.sh on an H100/H200",
                         "rows": {what: NOT_MEASURED for what in GPU_ROWS}}
    return result
