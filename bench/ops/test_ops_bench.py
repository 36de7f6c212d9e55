"""Per-op microbenchmarks on pytest-benchmark: ``pytest bench/ops [--quick] [--benchmark-json=FILE]``.

One benchmark per (case of ``bench_<family>.cases``, dtype, implementation): every backend of the op (``eager`` =
the reference, ``triton``, ``cuda``; one the dispatch says cannot run the inputs is skipped with its reason) and
the case's baselines; one pytest-benchmark group per op, shape and dtype. ``extra_info`` has what a kernel
engineer reads: TFLOP/s, GB/s, their shares of the device ceilings measured in the session
(``bench.common.measure_ceilings``), the max abs error against the eager output on the same inputs, the
speedup over eager. On a GPU the timer synchronises before each clock read (a round is back-to-back calls on
inputs rotated past L2); on the CPU ``perf_counter``. The Triton backend runs on the CPU only in Triton's
interpreter (``TRITON_INTERPRET=1`` before triton is imported), and not under ``--quick`` (too slow).
"""
from __future__ import annotations

import time

import pytest
import torch

from ..common import DTYPES, error_text, is_oom
from . import _compare, _unavailable_reason, baseline_call, baseline_reason, figures


def _timed(benchmark, env, fn):
    try:
        with torch.inference_mode():
            fn()  # warm-up: compiles / caches whatever it needs, outside pytest-benchmark's calibration
            env.sync()
            benchmark(fn)
    except Exception as err:
        if is_oom(err):
            pytest.skip(f"out of memory: {error_text(err)}")
        raise


def test_op(benchmark, bench_env, op_case):
    """``op_case``: a ``conftest.Param`` (case, dtype, implementation)."""
    case, dtype, impl = op_case.case, op_case.dtype, op_case.impl
    benchmark.group = op_case.group
    if bench_env.settings.deadline is not None and bench_env.settings.deadline < time.time():
        pytest.skip("--time-budget-s exhausted")
    device = bench_env.device
    inputs = bench_env.inputs(op_case)
    info = {"family": case.family, "op": case.op, "case": case.name, "shape": case.shape, "dtype": dtype,
            "impl": impl, "kind": "baseline" if op_case.baseline is not None else "backend",
            "device": str(device), "size": bench_env.settings.size, "flops": inputs.flops, "bytes": inputs.bytes,
            "rotated_sets": len(inputs.sets)}
    if op_case.baseline is None:
        reason = _unavailable_reason(case.op, impl, inputs.first)
        if reason is not None:
            pytest.skip(f"{impl}: {reason}")
        if impl == "triton" and device.type == "cpu" and bench_env.settings.quick:
            pytest.skip("triton: Triton's interpreter on the CPU is too slow for --quick")
        import sam3lt.ops as ops

        op = getattr(ops, case.op)
        with torch.inference_mode():
            out = op(*inputs.first, backend=impl)
            info.update(_compare(inputs.reference, out) if inputs.reference is not None else
                        {"check": "no eager reference"})
            del out
        _timed(benchmark, bench_env, inputs.call_with(lambda *a: op(*a, backend=impl)))
    else:
        reason = baseline_reason(op_case.baseline, device, DTYPES[dtype], bench_env.xformers_reason)
        if reason is not None:
            pytest.skip(f"{impl}: {reason}")
        info["note"] = op_case.baseline.note
        _timed(benchmark, bench_env, baseline_call(op_case.baseline, inputs.sets))
    if benchmark.stats is not None:  # None under --benchmark-disable
        ms = benchmark.stats.stats.median * 1e3
        info.update(median_ms=ms, **figures(inputs.flops, inputs.bytes, ms, bench_env.ceilings, dtype))
        if impl == "eager":
            inputs.eager_ms = ms
        elif inputs.eager_ms:
            info["speedup_vs_eager"] = inputs.eager_ms / ms
    benchmark.extra_info.update(info)
