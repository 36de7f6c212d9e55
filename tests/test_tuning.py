"""Measured backend choice (``sam3lt.ops.autotune``): the fastest candidate is kept per op and input signature."""
from __future__ import annotations

import time

import pytest
import torch

import sam3lt
from sam3lt import ops
from sam3lt.ops import _backend, _tuning

OP = "_tuning_test_op"


@pytest.fixture
def toy_op():
    """An op with two implementations of chosen speeds: ``set_delays(eager=s, triton=s)``; the one registered
    with auto=False must still be a candidate."""
    delays = {"eager": 0.0, "triton": 0.0}
    calls = {"eager": 0, "triton": 0}

    def impl(name):
        def fn(x):
            calls[name] += 1
            time.sleep(delays[name])
            return x + 1
        return fn

    ops.register(OP, "eager", impl("eager"))
    ops.register(OP, "triton", impl("triton"), auto=False)
    ops.clear_tuning()
    yield delays, calls
    _backend._REGISTRY.pop(OP, None)
    ops.clear_tuning()


def test_fastest_backend_is_kept_per_signature(toy_op):
    delays, calls = toy_op
    delays.update(eager=0.004, triton=0.0)
    x = torch.randn(3)
    assert ops.select(OP, None, x)[0] == "eager"  # no tuning: the default order (triton is auto=False)
    with ops.autotune():
        assert ops.select(OP, None, x)[0] == "triton"
    assert calls["eager"] >= _tuning.REPS and calls["triton"] >= _tuning.REPS
    before = dict(calls)
    assert ops.select(OP, None, x)[0] == "triton"  # kept outside the context, without timing again
    assert calls == before
    # another signature is measured on its own
    delays.update(eager=0.0, triton=0.004)
    with ops.autotune():
        assert ops.select(OP, None, torch.randn(5))[0] == "eager"
    assert ops.select(OP, None, x)[0] == "triton"
    (row,) = [r for r in ops.tuned_choices() if r["op"] == OP and "(5,)" in r["signature"]]
    assert row["backend"] == "eager" and row["ms"]["triton"] > row["ms"]["eager"]
    # a name given explicitly wins over the measured choice
    assert ops.select(OP, "eager", x)[0] == "eager"
    ops.clear_tuning()
    assert ops.select(OP, None, x)[0] == "eager"


def test_failing_candidate_is_not_chosen(toy_op):
    def broken(x):
        raise RuntimeError("kernel failed")

    ops.register(OP, "triton", broken, auto=False)
    with ops.autotune():
        assert ops.select(OP, None, torch.randn(3))[0] == "eager"
    (row,) = [r for r in ops.tuned_choices() if r["op"] == OP]
    assert "kernel failed" in row["ms"]["triton error"]


def test_no_timing_while_compiling(toy_op, monkeypatch):
    delays, calls = toy_op
    monkeypatch.setattr(_backend, "_compiling", lambda: True)
    with ops.autotune():
        assert ops.select(OP, None, torch.randn(3))[0] == "eager"
    assert calls == {"eager": 0, "triton": 0} and not ops.tuned_choices()


def test_fast_path_with_tuning_equals_model():
    """tune=True on the CPU: only eager can run the model's ops there, so nothing is timed, and the result is
    the model's."""
    torch.manual_seed(0)
    model = sam3lt.Sam3LiteTextModel(sam3lt.Sam3LiteTextConfig.tiny())
    size = model.config.vision_config.backbone_config.image_size
    inputs = dict(pixel_values=torch.randn(1, 3, size, size), input_ids=torch.randint(1, 1000, (1, 32)))
    with torch.no_grad():
        ref = model(**inputs)
    out = sam3lt.optimize(model, dtype=torch.float32, tune=True)(**inputs)
    torch.testing.assert_close(out.pred_logits, ref.pred_logits, rtol=1e-4, atol=1e-5)
