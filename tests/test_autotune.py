"""``auto`` that never picks a slower kernel: measured choices persist on disk per device and software, and
without a measurement CUDA inputs are served by evidence (vendor kernels for compute-bound ops, custom kernels for
memory-bound chains). Run on the CPU with fake CUDA tensors standing in for an H200 and recorded timings."""
import _interp  # noqa: F401  (first: decides how triton is imported)

import json
import os
import subprocess
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import sam3lt.ops as ops
from sam3lt import _ext
from sam3lt.ops import _backend, _tuning
from sam3lt.ops import autotune as _disk  # noqa: F401  (the module; sam3lt.ops.autotune is the function)

_disk = sys.modules["sam3lt.ops.autotune"]
H200 = _disk.identity("NVIDIA H200", (9, 0))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def h200(monkeypatch, tmp_path):
    """Fake CUDA tensors report an H200; the on-disk cache lives in tmp_path."""
    monkeypatch.setenv("SAM3LT_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("SAM3LT_BACKEND", raising=False)
    monkeypatch.setattr(_backend, "_global_choice", None)
    monkeypatch.setattr(_disk, "device_identity", lambda device: H200 if device.type == "cuda" else None)
    monkeypatch.setattr(_tuning, "_capturing", lambda args: False)
    monkeypatch.setattr(_ext, "_DEVICE_REASONS", {0: None})  # as on an H200: the extension has sm_90 code
    ops.clear_tuning()
    yield tmp_path
    ops.clear_tuning()


def _fake(*shapes, dtype=torch.float16):  # fp16: the interpreted triton has no bf16
    mode = FakeTensorMode()
    with mode:
        return mode, [torch.empty(*s, dtype=dtype, device="cuda") for s in shapes]


def _window_args():
    mode, (qkv, cos, sin) = _fake((1, 8, 8, 3 * 64), (64, 32), (64, 32))
    return mode, (qkv, cos.float(), sin.float(), 2, 0, None)


def _layer_norm_args():
    mode, (x, r, w, b) = _fake((4, 64), (4, 64), (64,), (64,))
    return mode, (x, r, w, b, 1e-5)


def _candidates(op, args):
    return [n for n, impl in _backend._REGISTRY[op].items() if impl.supports(*args) is None]


def test_evidence_without_measurement(h200):
    mode, args = _window_args()
    with mode:
        if "triton" not in _candidates("window_attention", args):
            pytest.skip("the triton backend cannot take fake CUDA inputs here (no triton)")
        info = ops.explain("window_attention", *args)
        assert info["eager"] == "runs" and info["triton"] == "available"
        assert info.rule.startswith("evidence, compute-bound") and "SDPA" in info.rule and "auto:" in repr(info)
    mode, args = _layer_norm_args()
    with mode:
        info = ops.explain("add_layer_norm", *args)
        assert info["triton"] == "runs" and info.rule.startswith("evidence, memory-bound")
    # CPU inputs keep the default order
    cpu = ops.explain("add_layer_norm", torch.randn(2, 8), torch.randn(2, 8), torch.randn(8), torch.randn(8), 1e-5)
    assert cpu.rule.startswith("default order") and cpu["eager"] == "runs"


def _recorded_timings(monkeypatch, op, ms: dict):
    """_time returns recorded milliseconds per backend (the fake tensors cannot be timed)."""
    by_fn = {_backend._REGISTRY[op][name].fn: t for name, t in ms.items() if name in _backend._REGISTRY[op]}
    calls = []
    monkeypatch.setattr(_tuning, "_time", lambda fn, args: calls.append(fn) or by_fn[fn])
    return calls


def test_autotune_persists_and_overrides_evidence(h200, monkeypatch):
    mode, args = _window_args()
    with mode:
        if "triton" not in _candidates("window_attention", args):
            pytest.skip("the triton backend cannot take fake CUDA inputs here (no triton)")
        timings = {"eager": 0.30, "triton": 0.12, "cuda": 0.20}
        calls = _recorded_timings(monkeypatch, "window_attention", timings)
        candidates = _candidates("window_attention", args)
        with ops.autotune():
            assert ops.select("window_attention", None, *args)[0] == "triton"
        assert len(calls) == len(candidates)
        files = list((h200 / "autotune").glob("*.json"))
        assert [f.name for f in files] == [os.path.basename(_disk.cache_file(H200))]
        assert "NVIDIA_H200-sm90-torch" in files[0].name
        data = json.loads(files[0].read_text())
        assert data["identity"] == H200
        (entry,) = data["choices"].values()
        assert entry == {"backend": "triton", "ms": {n: timings[n] for n in candidates}}
        # a fresh start of this process reads the file: no timing, same choice, the rule says where from
        ops.clear_tuning()
        info = ops.explain("window_attention", *args)
        assert info["triton"] == "runs" and info.rule.startswith("measured (on-disk cache")
        assert "triton 0.12 ms" in info.rule and len(calls) == len(candidates)
        # measured slower than the vendor kernel: never chosen, even where evidence prefers custom kernels
    mode, args = _layer_norm_args()
    with mode:
        _recorded_timings(monkeypatch, "add_layer_norm", {"eager": 0.010, "triton": 0.020, "cuda": 0.010})
        with ops.autotune():
            assert ops.select("add_layer_norm", None, *args)[0] == "eager"
        ops.clear_tuning()
        info = ops.explain("add_layer_norm", *args)
        assert info["triton"] != "runs" and info.rule.startswith("measured")


def test_cache_is_per_device_and_version(h200, monkeypatch):
    mode, args = _window_args()
    with mode:
        sig = _tuning._disk_key("window_attention", _tuning._signature(args))
        other = dict(H200, torch="0.0.0")
        _disk.store(_disk.cache_file(other), other, sig, "triton", {"eager": 1.0, "triton": 0.5})
        ops.clear_tuning()
        assert ops.explain("window_attention", *args).rule.startswith("evidence")  # other torch: not used
        _disk.store(_disk.cache_file(H200), H200, sig, "triton", {"eager": 1.0, "triton": 0.5})
        ops.clear_tuning()
        chosen = ops.select("window_attention", None, *args)[0]
        assert chosen == ("triton" if "triton" in _candidates("window_attention", args) else "eager")
        # a name given explicitly still wins
        assert ops.select("window_attention", "eager", *args)[0] == "eager"


def test_choices_persist_across_processes(h200):
    """A choice stored by one process is read by another through the plain dispatch."""
    mode, args = _layer_norm_args()
    with mode:
        sig = _tuning._disk_key("add_layer_norm", _tuning._signature(args))
    _disk.store(_disk.cache_file(H200), H200, sig, "eager", {"eager": 0.01, "triton": 0.02})
    code = ("import sys, torch\n"
            "from torch._subclasses.fake_tensor import FakeTensorMode\n"
            "import sam3lt.ops as ops\n"
            "disk = sys.modules['sam3lt.ops.autotune']\n"
            "disk.device_identity = lambda d: disk.identity('NVIDIA H200', (9, 0)) if d.type == 'cuda' else None\n"
            "import sam3lt._ext as ext; ext._DEVICE_REASONS[0] = None\n"
            "mode = FakeTensorMode()\n"
            "with mode:\n"
            "    x, r, w, b = (torch.empty(*s, dtype=torch.float16, device='cuda') for s in ((4, 64), (4, 64), (64,), (64,)))\n"
            "    info = ops.explain('add_layer_norm', x, r, w, b, 1e-5)\n"
            "print([k for k, v in info.items() if v == 'runs'][0], '|', info.rule)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    chosen, rule = proc.stdout.strip().splitlines()[-1].split(" | ", 1)
    assert chosen == "eager" and rule.startswith("measured (on-disk cache"), proc.stdout


def test_unreadable_cache_is_ignored(h200):
    path = _disk.cache_file(H200)
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write("{not json")
    mode, args = _layer_norm_args()
    with mode:
        assert ops.explain("add_layer_norm", *args).rule.startswith("evidence")


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SAM3LT_CACHE_DIR", str(tmp_path / "c"))
    assert _disk.cache_dir() == str(tmp_path / "c")
    assert _disk.cache_file(H200).startswith(str(tmp_path / "c" / "autotune"))
    monkeypatch.delenv("SAM3LT_CACHE_DIR")
    assert _disk.cache_dir().rstrip("/").endswith("sam3lt")


def test_every_op_with_a_custom_auto_backend_has_evidence():
    """A new op must say whether it is compute-bound (vendor first) or a memory-bound chain (custom first):
    without an entry, CUDA inputs would take the default custom-first order unmeasured."""
    missing = [op for op, impls in _backend._REGISTRY.items()
               if not op.startswith("_") and any(n != "eager" and i.auto for n, i in impls.items())
               and op not in _tuning.EVIDENCE]
    assert not missing, f"add these ops to sam3lt/ops/_tuning.py EVIDENCE: {missing}"
    for op, (rule, order) in _tuning.EVIDENCE.items():
        assert sorted(order) == sorted(ops.BACKENDS) and rule.startswith(("compute-bound", "memory-bound")), op


def test_s0_model_on_an_untuned_h200_is_served_by_evidence():
    """Every op call of a fake S0 forward on an untuned H200 is chosen by evidence: the vendor kernel for the
    compute-bound ops (bench/results/static/auto-h200.md lists the choices)."""
    from bench.static.auto_choices import explain_model

    rows = explain_model(images=1, prompts=1)
    assert {r["op"] for r in rows} >= {"window_attention", "masked_attention", "box_bias_attention", "linear",
                                       "add_layer_norm", "box_bias"}
    for r in rows:
        assert r["rule"].startswith("evidence, "), r
        if _tuning.EVIDENCE[r["op"]][1] == _tuning.VENDOR_FIRST:
            assert r["runs"] == "eager", r
    assert _disk.device_identity.__name__ == "device_identity"  # the stand-in H200 is gone afterwards
