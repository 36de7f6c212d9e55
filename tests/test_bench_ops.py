"""The per-op microbenchmarks on pytest-benchmark (``pytest bench/ops``): a ``--quick`` CPU run in a child pytest
writes a pytest-benchmark JSON with benchmarks of every op family, grouped per op and shape, each with the
figures in ``extra_info``."""
from __future__ import annotations

import configparser
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_benchmark", reason="bench/ops runs on pytest-benchmark (test extra)")

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ("TFLOPs", "GBps", "frac_compute", "frac_bandwidth", "median_ms", "flops", "bytes")


def test_quick_run_writes_benchmark_json(tmp_path):
    out = tmp_path / "bench_ops.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-m", "pytest", "bench/ops", "--quick", "-q", "-p", "no:cacheprovider",
                           "--device", "cpu", f"--benchmark-json={out}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    benchmarks = result["benchmarks"]
    from bench.ops import FAMILIES, select_cases

    assert {b["extra_info"]["family"] for b in benchmarks} == set(FAMILIES)
    assert {b["extra_info"]["op"] for b in benchmarks} == {c.op for c in select_cases("tiny", quick=True)}
    assert {b["extra_info"]["impl"] for b in benchmarks} >= {"eager", "sdpa"}
    for b in benchmarks:
        info = b["extra_info"]
        assert b["group"].startswith(info["op"] + ":") and info["shape"] in b["group"], b["group"]
        for key in FIGURES:
            assert isinstance(info[key], float) and math.isfinite(info[key]) and info[key] > 0, (key, b["name"])
        if info["kind"] == "backend":  # compared with the eager output on the same inputs
            assert "max_abs_err" in info or "mismatch" in info, b["name"]
            # Winograd (conv3x3's cpu backend) is off by ~1e-5 of the output's scale (~5 here): tests/test_conv.py
            tol = 1e-4 if (info["op"], info["impl"]) == ("conv3x3", "cpu") else 1e-5
            assert info.get("max_abs_err", 0.0) <= tol and info.get("mismatch", 0.0) == 0.0, info
        assert b["stats"]["rounds"] >= 1 and b["stats"]["median"] > 0
    assert result["machine_info"]["sam3lt"]["size"] == "tiny"
    assert result["sam3lt"]["ceilings"]["copy"]["GBps"] > 0


def test_bare_pytest_does_not_collect_the_benchmarks():
    ini = configparser.ConfigParser()
    ini.read(ROOT / "pytest.ini")
    assert ini["pytest"]["testpaths"].split() == ["tests"]
