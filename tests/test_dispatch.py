"""Backend selection of sam3lt.ops: set_backend / use_backend / SAM3LT_BACKEND / per-call backend=, errors, fallback."""
import _interp  # noqa: F401  (first: decides how triton is imported)

import os
import subprocess
import sys
import warnings

import pytest
import torch

import sam3lt.ops as ops
from sam3lt.ops import _backend


@pytest.fixture(autouse=True)
def clean_state(monkeypatch):
    monkeypatch.delenv("SAM3LT_BACKEND", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # CPU tensors: the triton backend must refuse them
    monkeypatch.setattr(_backend, "_global_choice", None)
    monkeypatch.setattr(_backend, "_warned", set())
    yield


@pytest.fixture
def toy_op():
    """A throwaway op with a triton impl that never supports its input and an eager impl."""
    name = "toy_op_for_tests"
    calls = []
    ops.register(name, "eager", lambda x: calls.append("eager") or x + 1)
    ops.register(name, "triton", lambda x: calls.append("triton") or x + 2,
                 supports=lambda x: None if x.dtype == torch.float64 else "only float64 here")
    yield name, calls
    _backend._REGISTRY.pop(name, None)


def _dwconv_args():
    return torch.randn(2, 5, 8), torch.randn(8, 3), torch.randn(8)


def test_default_is_auto():
    assert ops.get_backend() == "auto"


def test_env_var(monkeypatch):
    monkeypatch.setenv("SAM3LT_BACKEND", "eager")
    assert ops.get_backend() == "eager"
    monkeypatch.setenv("SAM3LT_BACKEND", " Triton ")
    assert ops.get_backend() == "triton"


def test_precedence(monkeypatch, toy_op):
    name, calls = toy_op
    x = torch.randn(3, dtype=torch.float64)
    monkeypatch.setenv("SAM3LT_BACKEND", "triton")
    ops.set_backend("eager")  # set_backend beats the environment
    assert ops.get_backend() == "eager"
    with ops.use_backend("triton"):  # the context beats set_backend
        assert ops.get_backend() == "triton"
        with ops.use_backend("eager"):  # nested: innermost wins
            assert ops.get_backend() == "eager"
        assert ops.get_backend() == "triton"
        assert _backend.select(name, None, x)[0] == "triton"
        assert _backend.select(name, "eager", x)[0] == "eager"  # per-call beats everything
    assert ops.get_backend() == "eager"
    assert _backend.select(name, None, x)[0] == "eager"
    _backend.dispatch(name, "triton", x)
    _backend.dispatch(name, None, x)
    assert calls == ["triton", "eager"]


def test_use_backend_restores_on_error():
    with pytest.raises(KeyError):
        with ops.use_backend("eager"):
            raise KeyError
    assert ops.get_backend() == "auto"


@pytest.mark.parametrize("how", ["set_backend", "use_backend", "call", "env"])
def test_unknown_backend_name(how, monkeypatch):
    x, w, b = _dwconv_args()
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        if how == "set_backend":
            ops.set_backend("fast")
        elif how == "use_backend":
            with ops.use_backend("fast"):
                pass
        elif how == "call":
            ops.repmixer_dwconv(x, w, b, backend="fast")
        else:
            monkeypatch.setenv("SAM3LT_BACKEND", "fast")
            ops.repmixer_dwconv(x, w, b)


def test_forced_backend_without_implementation(toy_op):
    name, _ = toy_op
    with pytest.raises(ops.BackendUnavailable, match=f"cuda backend has no implementation of {name}"):
        _backend.dispatch(name, "cuda", torch.randn(3))


def test_context_backend_serves_only_the_ops_it_implements(toy_op):
    """A process-wide / use_backend choice with no implementation of an op leaves that op to auto (a model runs end
    to end under use_backend("cpu"), whose backend has one op); asked for by name in the call, it raises."""
    name, calls = toy_op
    x = torch.randn(3)
    with ops.use_backend("cpu"):
        assert torch.equal(_backend.dispatch(name, None, x), x + 1)
        with pytest.raises(ops.BackendUnavailable, match=f"cpu backend has no implementation of {name}"):
            _backend.dispatch(name, "cpu", x)
    assert calls == ["eager"]


def test_forced_cuda_on_cpu_tensors_raises():
    x, w, b = _dwconv_args()
    with pytest.raises(ops.BackendUnavailable, match="backend 'cuda' cannot run these inputs"):
        ops.repmixer_dwconv(x, w, b, backend="cuda")


def test_forced_triton_on_cpu_raises_with_reason():
    x, w, b = _dwconv_args()
    with pytest.raises(ops.BackendUnavailable, match="backend 'triton' cannot run these inputs") as info:
        with ops.use_backend("triton"):
            ops.repmixer_dwconv(x, w, b)
    assert "CPU" in str(info.value) or "triton is not installed" in str(info.value)


def test_auto_falls_back_silently_for_inputs_a_backend_does_not_take(toy_op):
    name, calls = toy_op
    x = torch.randn(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # passing over a backend that does not take the input is not a problem
        for _ in range(3):
            assert torch.equal(_backend.dispatch(name, None, x), x + 1)
    assert calls == ["eager"] * 3
    assert torch.equal(_backend.dispatch(name, None, x.double()), x.double() + 2)  # supported: triton runs
    assert ops.explain(name, x) == {"cuda": "the cuda backend has no implementation of toy_op_for_tests",
                                    "triton": "only float64 here",
                                    "cpu": "the cpu backend has no implementation of toy_op_for_tests", "eager": "runs"}


def test_missing_backend_warns_once_for_accelerator_inputs(toy_op, monkeypatch):
    name, calls = toy_op
    monkeypatch.setitem(_backend._MISSING_CHECKS, "triton", lambda: "triton is not installed")
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        _backend.dispatch(name, None, torch.randn(3))  # CPU inputs: a GPU backend's absence is no news
        assert not rec
        for _ in range(3):
            _backend.dispatch(name, None, torch.empty(3, device="meta"))  # stands in for CUDA inputs
    msgs = [str(r.message) for r in rec]
    assert msgs == ["sam3lt: the triton backend is unavailable (triton is not installed); "
                    "falling back to the next backend"], msgs


def test_auto_fallback_real_op_on_cpu_is_silent():
    x, w, b = _dwconv_args()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y1 = ops.repmixer_dwconv(x, w, b)
        y2 = ops.repmixer_dwconv(x, w, b)
    assert torch.equal(y1, ops.repmixer_dwconv_reference(x, w, b, True)) and torch.equal(y1, y2)


def test_auto_false_is_only_used_by_name(toy_op):
    name, calls = toy_op
    ops.register(name, "triton", lambda x: calls.append("triton") or x + 2, auto=False)
    x = torch.randn(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # passing over an auto=False impl is silent
        _backend.dispatch(name, None, x)
    _backend.dispatch(name, "triton", x)
    assert calls == ["eager", "triton"]


def test_register_rejects_bad_names():
    with pytest.raises(ValueError):
        ops.register("whatever", "fast", lambda: None)
    with pytest.raises(ValueError):
        ops.register("whatever", "auto", lambda: None)


def test_mask_product_auto_uses_torch_matmul():
    a, p = torch.randn(1, 3, 4), torch.randn(1, 4, 2, 2)
    assert _backend.select("mask_product", None, a, p)[0] == "eager"


@pytest.mark.parametrize("case, reason", [
    ("int", "must be a floating-point tensor"),
    ("odd_head_dim", "odd head dim"),
    ("bad_tables", "cos/sin must be"),
    ("even_taps", "even kernel size"),
    ("box_keys", "Hg·Wg"),
    ("mask_shape", "key_padding_mask must be"),
])
def test_triton_supports_reasons(case, reason):
    r = _backend.unavailable_reason
    if case == "int":
        got = r("upsample_nearest_add", "triton", torch.ones(1, 1, 2, 2, dtype=torch.int32),
                torch.ones(1, 1, 4, 4, dtype=torch.int32))
    elif case == "odd_head_dim":
        got = r("window_attention", "triton", torch.randn(1, 4, 4, 3 * 6), torch.randn(16, 3), torch.randn(16, 3),
                2, 4, None)
    elif case == "bad_tables":
        got = r("window_attention", "triton", torch.randn(1, 4, 4, 3 * 16), torch.randn(9, 16), torch.randn(9, 16),
                1, 4, None)
    elif case == "even_taps":
        got = r("repmixer_dwconv", "triton", torch.randn(1, 3, 4), torch.randn(4, 4), torch.randn(4), True)
    elif case == "box_keys":
        q = torch.randn(1, 2, 3, 16)
        got = r("box_bias_attention", "triton", q, torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16),
                torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3))
    else:
        q = torch.randn(1, 2, 3, 16)
        got = r("masked_attention", "triton", q, q, q, torch.ones(1, 5, dtype=torch.bool))
    if "triton is not installed" not in str(got):
        assert got is not None and reason in got, got


def test_importable_without_triton():
    code = ("import sys; sys.modules['triton'] = None\n"
            "import sam3lt.kernels, sam3lt.ops as ops, torch\n"
            "from sam3lt.ops import _backend\n"
            "x = torch.randn(1, 3, 4)\n"
            "assert sam3lt.kernels.triton_missing() is not None\n"
            "print(_backend.unavailable_reason('repmixer_dwconv', 'triton', x, torch.randn(4, 3), torch.randn(4), True))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "triton" in proc.stdout
