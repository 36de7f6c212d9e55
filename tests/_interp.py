"""Where the Triton kernel tests of ``tests/test_<op>.py`` run, and shared helpers (the tolerance rule,
:func:`check_close`). Import it before ``sam3lt``; the backends each family test runs on are tests/_backends.py.

- With CUDA: on the GPU (fp32/fp16/bf16), compiled kernels.
- Without CUDA: in Triton's interpreter (fp32/fp16; it has no bf16). The interpreter is chosen when ``triton``
  is first imported, so:
    * if ``triton`` is not imported yet (this file runs first, e.g. ``pytest tests/test_<op>.py``), it is
      imported here with ``TRITON_INTERPRET=1`` and the variable is then put back as it was, so that other
      tests in the process keep the eager fallback; the kernel tests set it again around each test
      (fixture ``interpreter_env``);
    * if ``triton`` was already imported for the GPU (e.g. ``torchvision`` imports it through
      ``torch._dynamo`` when another test module imports the model first), the kernel tests of each module run
      once in a child ``pytest`` with ``TRITON_INTERPRET=1``, and each test here reports its own outcome from
      the child's junit report (see :func:`kernel_test`).
"""
from __future__ import annotations

import functools
import inspect
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET

import pytest
import torch

import seeds

# CUDA tests unless the interpreter is asked for explicitly
CUDA = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
_CHILD_FLAG = "SAM3LT_OPS_TEST_CHILD"


def _setup() -> str:
    if CUDA:
        return "cuda"
    wanted = os.environ.get("TRITON_INTERPRET")
    if "triton" not in sys.modules:
        os.environ["TRITON_INTERPRET"] = "1"
        try:
            import triton  # noqa: F401  (decorates triton.language for the interpreter)
            import sam3lt.ops  # noqa: F401  (builds and registers the kernels)
        except ImportError:
            return "no-triton"
        finally:
            if wanted is None:
                os.environ.pop("TRITON_INTERPRET", None)
            else:
                os.environ["TRITON_INTERPRET"] = wanted
    import sam3lt.ops._triton as tri

    if tri.TRITON_MISSING is not None:
        return "no-triton"
    return "interpret" if tri.INTERPRETED else "subprocess"


MODE = _setup()
DEVICE = "cuda" if CUDA else "cpu"
# dtypes the kernels are tested in here (the interpreter has no bf16)
DTYPES = [torch.float32, torch.float16, torch.bfloat16] if CUDA else [torch.float32, torch.float16]
# absolute slack of the error bound |out − ref64| ≤ 2·|ref_lowp − ref64| + ATOL, per dtype (stated once here)
ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def interpreter_env(monkeypatch):
    """Kernel tests on the CPU: TRITON_INTERPRET=1 during the test (the triton backend accepts CPU tensors)."""
    if MODE == "interpret":
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    yield


def seed_for(request) -> torch.Generator:
    """A generator seeded from the test id (tests/seeds.py): fresh inputs per test, reproducible per test."""
    return seeds.gen_for(request)


def randn(gen, *shape, dtype=torch.float32, scale=1.0, device=None):
    """Random normal values (never all zeros) on ``device`` (default: the test device)."""
    return (torch.randn(*shape, generator=gen) * scale).to(device=device or DEVICE, dtype=dtype)


def check_close(out: torch.Tensor, ref64: torch.Tensor, ref_lowp: torch.Tensor, dtype: torch.dtype, what=""):
    """Flash-attention style bound: max|out − ref64| ≤ 2·max|ref_lowp − ref64| + ATOL[dtype]."""
    assert out.shape == ref64.shape, (out.shape, ref64.shape)
    assert out.dtype == dtype, (out.dtype, dtype)
    err = (out.double() - ref64.double()).abs().max().item()
    ref_err = (ref_lowp.double() - ref64.double()).abs().max().item()
    bound = 2 * ref_err + ATOL[dtype]
    assert err <= bound, f"{what} {dtype}: max error {err:.3g} > 2·{ref_err:.3g} + {ATOL[dtype]:g}"


# ---------------------------------------------------------------- subprocess delegation

_child_results: dict[str, dict[str, tuple[str, str]]] = {}


def _run_child(path: str) -> dict[str, tuple[str, str]]:
    if path in _child_results:
        return _child_results[path]
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "junit.xml")
        env = dict(os.environ, TRITON_INTERPRET="1", **{_CHILD_FLAG: "1"})
        cmd = [sys.executable, "-m", "pytest", path, "-q", "-p", "no:cacheprovider", "-o", "addopts=",
               f"--junitxml={report}"]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(path))))
        results: dict[str, tuple[str, str]] = {}
        if os.path.exists(report):
            for case in ET.parse(report).getroot().iter("testcase"):
                outcome, text = "passed", ""
                for child in case:
                    if child.tag in ("failure", "error"):
                        outcome, text = "failed", (child.get("message") or "") + "\n" + (child.text or "")
                    elif child.tag == "skipped":
                        outcome, text = "skipped", child.get("message") or ""
                results[case.get("name")] = (outcome, text)
        results["__log__"] = ("log", proc.stdout[-4000:] + proc.stderr[-4000:])
    _child_results[path] = results
    return results


def _report_from_child(request) -> None:
    results = _run_child(str(request.node.path))
    name = request.node.name
    if name not in results:
        pytest.fail(f"the interpreter subprocess did not report {name}:\n{results['__log__'][1]}")
    outcome, text = results[name]
    if outcome == "failed":
        pytest.fail(f"failed in the interpreter subprocess:\n{text}", pytrace=False)
    if outcome == "skipped":
        pytest.skip(text)


def kernel_test(fn):
    """Decorator for tests that run kernels: skip without Triton (a test over the ``target`` fixture skips its
    triton target only, see _backends.py), delegate to the interpreter subprocess when this process's triton was
    built for the GPU (see the module docstring)."""
    if MODE == "no-triton":
        if "target" in inspect.signature(fn).parameters:
            return fn
        return pytest.mark.skip(reason="triton is not installed")(fn)
    if MODE != "subprocess":
        return fn

    sig = inspect.signature(fn)
    params = [p for p in sig.parameters.values() if p.name != "request"]
    params.append(inspect.Parameter("request", inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(fn)
    def delegated(*args, request, **kwargs):
        _report_from_child(request)

    delegated.__signature__ = sig.replace(parameters=params)
    return delegated


def needs_cuda(reason="needs CUDA"):
    return pytest.mark.skipif(not CUDA, reason=reason)
