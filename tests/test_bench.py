"""The benchmark suite (bench/): a quick CPU run through ``sam3lt bench`` at small sizes, checking that its outputs
are well formed (JSON keys, markdown table rows, finite positive numbers, the PNG), the report and README
generators, and the device script's syntax (its CPU dry run is the slow test)."""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers", reason="the benchmark compares against HF transformers (test extra)")

from sam3lt.cli import bench_suite, main  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ["vision backbone", "neck", "text encoder", "geometry encoder", "DETR encoder", "DETR decoder",
              "scoring", "mask decoder"]
QUICK = ["bench", "--quick", "--device", "cpu", "--threads", "1", "--dtypes", "float32", "--batches", "1,2",
         "--prompts", "1,2", "--reps", "3", "--case-budget-s", "0.1", "--no-progress", "--plot", "pillow"]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "cpu-quick"
    assert main(QUICK + ["--out", str(out)]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_json_is_well_formed(quick_run):
    out, result = quick_run
    assert result["schema"] == "sam3lt-bench/1"
    for key in ("schema", "run", "env", "settings", "ceilings", "sections", "gpu"):
        assert key in result, key
    for key in ("name", "date", "commit", "quick", "size", "reduced_sizes", "plot"):
        assert key in result["run"], key
    assert result["run"]["size"] == "tiny" and result["run"]["reduced_sizes"] is True and result["run"]["quick"]
    for key in ("device", "device_kind", "python", "torch", "triton", "transformers"):
        assert result["env"][key], key
    assert result["env"]["device_kind"] == "cpu"
    assert "reduced" in result["settings"]["size_note"]
    assert result["gpu"]["status"] == "not yet measured"
    assert _positive(result["ceilings"]["copy"]["GBps"])
    assert _positive(result["ceilings"]["matmul"]["float32"]["TFLOPs"])
    assert set(result["sections"]) == {"ops", "layers", "e2e", "compile"}
    assert all(s["complete"] for s in result["sections"].values())
    for name in ("ops", "layers", "e2e", "compile"):
        assert (out / f"{name}.json").is_file()


def _records(result, section):
    return [r for s in result["sections"].values() for r in s["records"] if r.get("section") == section]


def test_ops_records(quick_run):
    _, result = quick_run
    ops = _records(result, "ops")
    eager = [r for r in ops if r["impl"] == "eager"]
    assert {r["op"] for r in eager} == {"window_attention", "box_bias_attention", "masked_attention",
                                       "repmixer_dwconv", "upsample_nearest_add", "mask_product", "masks_to_binary"}
    for r in ops:
        assert r["status"] in ("ok", "unavailable", "error", "skipped", "oom"), r
        if r["status"] == "ok":
            for key in ("ms", "p20", "p80", "flops", "bytes", "TFLOPs", "GBps", "frac_compute", "frac_bandwidth"):
                assert _positive(r[key]), (key, r)
        else:
            assert r["reason"], r
    assert all(r["status"] == "ok" for r in eager), [r for r in eager if r["status"] != "ok"]
    # on the CPU the dispatch says why the triton backend cannot run, instead of crashing
    triton = [r for r in ops if r["impl"] == "triton"]
    assert triton and all(r["status"] == "unavailable" and r["reason"] for r in triton)
    # bare SDPA is measured beside the attention ops
    assert any(r["impl"] == "sdpa" and r["status"] == "ok" for r in ops if r["op"] == "window_attention")


def test_layer_and_e2e_records(quick_run):
    _, result = quick_run
    layers = _records(result, "layers")
    for impl in ("sam3lt:eager", "hf:eager"):
        got = {r["component"]: r for r in layers if r["impl"] == impl}
        for comp in COMPONENTS + ["post-processing", "full forward"]:
            assert got[comp]["status"] == "ok" and _positive(got[comp]["ms"]), (impl, comp, got.get(comp))
    compiled = [r for r in layers if r["impl"] == "hf:compile"]
    assert compiled and all(r["status"] == "skipped" and "skipped on CPU" in r["reason"] for r in compiled)
    e2e = [r for r in _records(result, "e2e") if r.get("status") == "ok"]
    seen = {(r["impl"], r["images"], r["prompts"]) for r in e2e}
    for impl in ("sam3lt:eager", "hf:eager"):
        assert {(impl, 1, 1), (impl, 2, 2), (impl, 1, 2)} <= seen, seen
    for r in e2e:
        assert _positive(r["ms"]) and _positive(r["images_per_s"]) and _positive(r["prompts_per_s"])
    hf_two_prompts = next(r for r in e2e if r["impl"] == "hf:eager" and r["kind"] == "prompts" and r["prompts"] == 2)
    assert hf_two_prompts["images_in_call"] == 2  # HF needs the image repeated per prompt


def _table_rows(md: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0].strip("*") == first_cell:
            rows.append(cells)
    return rows


def test_markdown_tables(quick_run):
    out, _ = quick_run
    md = (out / "bench.md").read_text()
    summary = (out / "summary.md").read_text()
    assert "CPU run at reduced sizes" in md and "not yet measured" in md and "not yet measured" in summary
    gpu_rows = [line for line in summary.splitlines() if line.startswith("| latency, batch 1")]
    assert gpu_rows and "not yet measured" in gpu_rows[0]  # GPU rows say so; no number is made up
    header = next(line for line in md.splitlines() if line.startswith("| component |"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    eager_col, hf_col = columns.index("sam3lt eager (ms)"), columns.index("HF eager (ms)")
    for comp in COMPONENTS + ["full forward", "post-processing"]:
        rows = _table_rows(md, comp)
        assert rows, comp
        for cells in rows:
            for col in (eager_col, hf_col):
                value = float(cells[col])
                assert math.isfinite(value) and value > 0, (comp, cells)
    speedup = [c for c in _table_rows(md, "full forward")[0] if c.endswith("×")]
    assert speedup and all(float(c.rstrip("×")) > 0 for c in speedup)
    assert re.search(r"^\| memory bandwidth \| [0-9.]+ GB/s \|", md, re.M)
    assert re.search(r"^\| window_attention \| .* \| eager \| [0-9.]+ \| [0-9.]+ \|", md, re.M)
    assert "skipped on CPU" in md
    assert (out / "speedups.png").is_file()
    from PIL import Image

    with Image.open(out / "speedups.png") as png:
        assert png.format == "PNG" and png.width > 100 and png.height > 100


def test_report_only_reproduces_the_tables(quick_run, tmp_path):
    out, _ = quick_run
    copy = tmp_path / "run"
    copy.mkdir()
    for name in ("ops", "layers", "e2e", "compile"):
        (copy / f"{name}.json").write_text((out / f"{name}.json").read_text())
    assert main(["bench", "--report-only", "--out", str(copy), "--plot", "pillow"]) == 0
    assert (copy / "bench.md").read_text() == (out / "bench.md").read_text()
    assert (copy / "summary.md").read_text() == (out / "summary.md").read_text()


def test_update_readme_includes_the_run(quick_run, tmp_path):
    out, _ = quick_run
    suite = bench_suite()
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import update_readme
    finally:
        sys.path.remove(str(ROOT / "bench"))
    results = tmp_path / "results"
    results.mkdir()
    (results / "table.md").write_text("| a | b |\n|---|---|\n| 1 | 2 |\n")
    run = results / out.name
    run.mkdir()
    for name in ("summary.md", "bench.md", "results.json", "speedups.png"):
        (run / name).write_bytes((out / name).read_bytes())
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{update_readme.BEGIN}\nold\n{update_readme.END}\n\ntail\n")
    update_readme.update(readme, results)
    text = readme.read_text()
    assert "\nold\n" not in text and text.endswith("tail\n") and "| 1 | 2 |" in text
    assert f"**{out.name}**" in text and "sam3lt benchmark" in text and "speedups.png" in text
    assert text.index("table.md") < text.index(f"**{out.name}**")
    assert suite is not None


def test_scenarios_share_the_single_prompt_case():
    e2e = sys.modules["sam3lt_bench.e2e"] if "sam3lt_bench.e2e" in sys.modules else None
    if e2e is None:
        bench_suite()
        import importlib

        e2e = importlib.import_module("sam3lt_bench.e2e")
    got = e2e.scenarios([1, 4, 8], [1, 4, 16, 64])
    assert got.count(("images", 1, 1)) == 1 and ("prompts", 1, 1) not in got
    assert [g for g in got if g[0] == "prompts"] == [("prompts", 1, 4), ("prompts", 1, 16), ("prompts", 1, 64)]


def test_bench_without_a_source_checkout(tmp_path):
    env = {**os.environ, "SAM3LT_BENCH_DIR": str(tmp_path / "nowhere")}
    proc = subprocess.run([sys.executable, "-m", "sam3lt.cli", "bench", "--quick"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "source checkout" in proc.stderr


def test_gpu_check_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(ROOT / "bench" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--cpu-dry-run" in proc.stdout


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(tmp_path):
    """The device script end to end on the CPU (pip --dry-run, pytest --collect-only, small bench sections)."""
    env = {**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu-dry-run"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    stages = (tmp_path / "out" / "stages.tsv").read_text().splitlines()[1:]
    got = {line.split("\t")[0]: line.split("\t")[1] for line in stages}
    for name in ("env", "build", "probe", "tests", "bench-ops", "bench-layers", "bench-e2e", "bench-compile",
                 "report"):
        assert got.get(name) == "0", (name, stages)
    result = json.loads((tmp_path / "out" / "bench" / "results.json").read_text())
    assert set(result["sections"]) == {"ops", "layers", "e2e", "compile"}
    assert "gpu_check" in (tmp_path / "out" / "SUMMARY.md").read_text()
