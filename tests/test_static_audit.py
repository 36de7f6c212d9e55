"""The static kernel audit (bench/static): its parsers and occupancy model on known inputs, the violation and
allowlist logic on synthetic rows, and one quick real run (the attention kernels at 1 image x 4 prompts for
sm_90) that must fail on an injected launch-limit violation. CI runs the full audit (.ci/run)."""
import json
import os
import subprocess
import sys

import pytest

from _interp import MODE
from bench.static import arch as arch_mod
from bench.static import metrics, report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
H200 = arch_mod.get(90)

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_attn_kernel' for 'sm_90a'
ptxas info    : Function properties for _attn_kernel
    328 bytes stack frame, 328 bytes spill stores, 324 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z3fooPf' for 'sm_90'
ptxas info    : Function properties for _Z3fooPf
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 0 barriers, 1024 bytes smem, 360 bytes cmem[0]
"""
SASS = """\t\tFunction : _attn_kernel
        /*0010*/                   LDSM.16.M88.4 R4, [R2] ;
        /*0020*/              @!P0 LDGSTS.E.BYPASS.128 [R3], desc[UR4][R6.64] ;
        /*0030*/                   HGMMA.64x64x16.F32.BF16 R24, gdesc[UR4], RZ ;
        /*0040*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0050*/                   LDL.64 R10, [R1+0x8] ;
        /*0060*/                   MUFU.EX2 R3, R3 ;
        /*0070*/                   LDS.U16 R3, [R2] ;
\t\tFunction : _Z3fooPf
        /*0010*/                   LDG.E R2, desc[UR4][R2.64] ;
"""


def test_parse_ptxas_and_sass():
    info = metrics.parse_ptxas(PTXAS_LOG)
    assert info["_attn_kernel"] == {"regs": 255, "spill_stores": 328, "spill_loads": 324, "stack": 328,
                                    "static_smem": 0}
    assert info["_Z3fooPf"]["regs"] == 32 and info["_Z3fooPf"]["static_smem"] == 1024
    counts = metrics.parse_sass(SASS)
    attn = counts["_attn_kernel"]
    assert (attn["ldsm"], attn["ldgsts"], attn["wgmma"], attn["hmma"], attn["ldl"], attn["ex2"], attn["lds"]) == \
        (1, 1, 1, 1, 1, 1, 1)
    assert counts["_Z3fooPf"]["ldg"] == 1 and counts["_Z3fooPf"]["lds"] == 0


def test_occupancy_and_waves():
    # the numbers: 142 registers x 256 threads leave one CTA per SM; 92 x 256 two
    assert metrics.occupancy(H200, 142, 256, 81920) == (1, "registers")
    assert metrics.occupancy(H200, 92, 256, 32768)[0] == 2
    assert metrics.occupancy(H200, 32, 128, 0) == (16, "threads")
    assert metrics.occupancy(H200, 64, 128, 240 * 1024) == (0, "launch limit")  # > 227 KiB per block
    assert metrics.waves(H200, 328, 2) == pytest.approx(1.24, abs=0.01)
    assert metrics.wave_efficiency(H200, 328, 2) == pytest.approx(328 / 528)
    est = metrics.roofline_estimate(H200, {"hmma": 8, "ex2": 4}, 264, 2, 0, head_dim=32)
    assert est["factors"] == {"grid": 1.0, "tensor path": 0.6, "pipelining": 0.7, "spills": 1.0, "exp": 0.5}
    assert metrics.roofline_estimate(H200, {"ldg": 4}, 10, 8, 0)["share_est"] is None


def _row(**kw):
    row = {"backend": "triton", "kernel": "_attn_kernel", "binary": "h1", "config": {"HAS_BIAS": True, "BLOCK_M": 64},
           "grid": [32, 8], "ctas": 256, "regs": 255, "threads": 128, "smem": 45056, "spill_stores": 328,
           "spill_loads": 324, "stack": 328, "sass": {"wgmma": 6}, "scenarios": ["1x4"], "model_runs": True}
    row.update(kw)
    return report._finish(H200, row)


ALLOW = [{"arch": 90, "backend": "triton", "kernel": "_attn_kernel", "kind": "spill", "match": {"HAS_BIAS": True},
          "max_spill_bytes": 328, "reason": "known"}]


def test_spill_in_model_kernel_fails_unless_allowlisted():
    found = report.violations(H200, [_row()])
    assert [v["kind"] for v in found] == ["spill"]
    assert report.check(found, [], 90)["new"] == found
    checked = report.check(found, ALLOW, 90)
    assert not checked["new"] and checked["allowed"][0]["reason"] == "known"
    # more spilling than recorded, or another config, is new again
    assert report.check(report.violations(H200, [_row(spill_stores=400)]), ALLOW, 90)["new"]
    assert report.check(report.violations(H200, [_row(config={"HAS_BIAS": False})]), ALLOW, 90)["new"]
    # a kernel the model does not run may spill; a fixed kernel leaves its entry stale
    assert report.violations(H200, [_row(model_runs=False)]) == []
    fixed = report.check(report.violations(H200, [_row(spill_stores=0, spill_loads=0)]), ALLOW, 90)
    assert fixed["new"] == [] and fixed["stale"] == ALLOW


def test_launch_limit_violations():
    too_big = report.violations(H200, [_row(spill_stores=0, spill_loads=0, smem=240 * 1024)])
    assert [v["kind"] for v in too_big] == ["launch-limit"]
    grid = report.violations(H200, [_row(spill_stores=0, spill_loads=0, grid=[1, 70000], model_runs=False)])
    assert [v["kind"] for v in grid] == ["launch-limit"] and "65535" in grid[0]["detail"]
    assert report.check(too_big, ALLOW, 90)["new"] == too_big  # a spill entry does not cover it


def test_allowlist_entries_need_reasons(tmp_path):
    path = tmp_path / "allow.json"
    path.write_text(json.dumps([{**ALLOW[0], "reason": " "}]))
    with pytest.raises(ValueError, match="reason"):
        report.load_allowlist(str(path))
    assert all(e["reason"] for e in report.load_allowlist())  # the repository's own list


def _nvidia_reason():
    if MODE == "no-triton":
        return "triton is not installed"
    from triton.backends import backends

    return None if "nvidia" in backends else "this triton has no NVIDIA backend"


@pytest.mark.skipif(_nvidia_reason() is not None, reason=str(_nvidia_reason()))
def test_quick_audit_fails_on_a_new_violation(tmp_path):
    """A real (quick) run with the per-block shared memory pretended to be 48 KiB: the 56 KiB window-attention
    binary becomes a launch-limit violation no allowlist entry covers, so the audit must exit 1 and name it;
    recomputed at the real limit, the repository's allowlist covers whatever the kernels show today."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "bench.static", "--arch", "90", "--quick", "--no-cuda",
                           "--out", str(tmp_path), "--smem-limit", str(48 * 1024)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "NEW launch-limit: triton _window_attn_kernel" in proc.stdout, proc.stdout[-2000:]
    rep = json.loads((tmp_path / "sm90.json").read_text())
    assert {r["kernel"] for r in rep["rows"]} == {"_attn_kernel", "_window_attn_kernel"}
    window = [r for r in rep["rows"] if r["kernel"] == "_window_attn_kernel"]
    assert all(r["regs"] > 0 and r["smem"] > 48 * 1024 and r["sass"]["wgmma"] > 0 for r in window)
    assert "| triton | _window_attn_kernel |" in (tmp_path / "sm90.md").read_text()
    rows = [report._finish(H200, dict(r)) for r in rep["rows"]]
    assert all(r["ctas_per_sm"] >= 1 for r in rows)
    assert report.check(report.violations(H200, rows), report.load_allowlist(), 90)["new"] == []
