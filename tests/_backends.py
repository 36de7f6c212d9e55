"""The backends the family tests (``tests/test_<op>.py``) run their kernel cases on: every backend registered for
the op in :mod:`sam3lt.ops` (``_backend._REGISTRY``) but eager (the reference), so that a backend registered for
an op is tested by its family's cases. Import it after ``_interp``.

:func:`targets` gives the pytest params of the fixture ``target`` (tests/conftest.py), one per backend and dtype
it runs here; a test calls ``ops.<op>(..., backend=target.backend)`` on inputs made on ``target.device``:

- ``triton``: on the GPU (fp32/fp16/bf16), else in Triton's interpreter on the CPU (fp32/fp16; see _interp.py).
- ``cuda``: on a CUDA GPU, fp32/fp16/bf16: the kernels of ``sam3lt._C`` (csrc/), or, for ops without a kernel
  (``_cuda.torch_ops()``), their reference on torch's CUDA kernels. On a GPU machine an unusable extension fails
  the tests, unless its build was skipped on purpose (``SAM3LT_SKIP_CUDA_BUILD=1``).
- ``cuda-emu``: the cuda backend with the extension's kernels (``_cuda.kernel_ops()``) replaced, for the test, by
  the same kernel sources and host code compiled for the CPU against csrc/emu/cuda_emu.h
  (``torch.ops.sam3lt_emu.*``, :func:`build_emulator`), which runs every CUDA thread as a fiber with real
  barrier, warp-shuffle, ldmatrix / mma.sync fragment and cp.async semantics. Threads run in a random order
  seeded from the test id (a missing barrier changes results; tests/test_cuda_backend.py checks that other
  orders give bit-identical outputs), outputs are allocated between guard bytes (out-of-bounds writes fail) and filled with NaN first (elements
  never written). For every op whose cuda backend is made of the extension's kernels (composites such as
  ``repmixer_block_dwconv`` too), on any machine; fp32/fp16/bf16. ``SAM3LT_SKIP_EMULATION=1`` skips it.
- ``cpu``: the CPU kernels of ``sam3lt._cpu`` (csrc/cpu/), fp32 CPU tensors. A missing extension skips them,
  or fails them where it must exist (``SAM3LT_REQUIRE_CPU_EXT=1``, as CI sets).

A backend that cannot run here is collected once per case (in its first dtype) and skipped with the reason.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import pytest
import torch

import _interp
import seeds
from sam3lt.ops import _backend, _cuda

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = torch.cuda.is_available()
ALL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ORDERS = {"forward": 0, "reverse": 1, "random": 2}  # the emulator's thread orders (set_schedule)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Target:
    name: str            # the test id: "triton", "cuda", "cuda-emu"
    backend: str         # the sam3lt.ops backend the test asks for
    device: str          # where the test makes its inputs
    dtypes: tuple
    skip: str | None = None  # why it cannot run here

    @property
    def emulated(self) -> bool:
        return self.name == "cuda-emu"

    def __str__(self) -> str:
        return self.name


def _triton_target() -> Target:
    skip = "triton is not installed" if _interp.MODE == "no-triton" else None
    return Target("triton", "triton", _interp.DEVICE, tuple(_interp.DTYPES), skip)


def _cuda_targets(op: str) -> list[Target]:
    out = [Target("cuda", "cuda", "cuda", ALL_DTYPES, None if GPU else "the cuda backend needs a CUDA GPU")]
    if op not in _cuda.torch_ops():  # its cuda backend is made of the extension's kernels: the emulator runs it
        skip = "SAM3LT_SKIP_EMULATION is set" if _flag("SAM3LT_SKIP_EMULATION") else None
        out.append(Target("cuda-emu", "cuda", "cpu", ALL_DTYPES, skip))
    return out


def _cpu_target() -> Target:
    from sam3lt.ops import _cpu

    skip = None if _flag("SAM3LT_REQUIRE_CPU_EXT") else _cpu.IMPORT_ERROR  # required: run, and fail on the reason
    return Target("cpu", "cpu", "cpu", (torch.float32,), skip)


def op_targets(op: str) -> list[Target]:
    """The targets of ``op``: one per backend registered for it (eager excepted; cuda twice: GPU and emulator).
    A backend this file does not know yet runs on the test device, in the test dtypes."""
    out = []
    for backend in _backend._REGISTRY[op]:
        if backend == "triton":
            out.append(_triton_target())
        elif backend == "cuda":
            out += _cuda_targets(op)
        elif backend == "cpu":
            out.append(_cpu_target())
        elif backend != "eager":
            out.append(Target(backend, backend, _interp.DEVICE, tuple(_interp.DTYPES)))
    return out


def _dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def targets(op: str, dtypes: bool = False):
    """pytest params for ``parametrize("target", ..., indirect=True)``, or with ``dtypes=True`` for
    ``parametrize("target, dtype", ..., indirect=["target"])``: each target of ``op`` in each dtype it runs here."""
    params = []
    for t in op_targets(op):
        marks = [pytest.mark.skip(reason=f"{t.name}: {t.skip}")] if t.skip else []
        if not dtypes:
            params.append(pytest.param(t, marks=marks, id=t.name))
            continue
        for d in t.dtypes[:1] if t.skip else t.dtypes:
            params.append(pytest.param(t, d, marks=marks, id=f"{t.name}-{str(d).removeprefix('torch.')}"))
    return params


# ---------------------------------------------------------------- the emulator

def build_emulator() -> None:
    """Compile csrc/emu/emu_ops.cpp and every csrc/*.cu, as one C++ unit, for the CPU: torch.ops.sam3lt_emu.*
    (about 30 s with two cores, then cached under build/; needs a C++ compiler)."""
    if hasattr(torch.ops, "sam3lt_emu") and hasattr(torch.ops.sam3lt_emu, "selftest"):
        return
    from torch.utils import cpp_extension

    version = torch.__version__.replace("+", "_").replace(".", "_")
    build = os.path.join(REPO, "build", f"sam3lt_emu_torch{version}")
    os.makedirs(build, exist_ok=True)
    parts = [os.path.join(REPO, "csrc", "emu", "emu_ops.cpp")] + sorted(glob.glob(os.path.join(REPO, "csrc", "*.cu")))
    unit = os.path.join(build, "emu_all.cpp")
    text = "".join(f'#include "{p}"\n' for p in parts)
    if not os.path.exists(unit) or open(unit).read() != text:  # rewritten only when the list changes (no rebuild)
        with open(unit, "w") as f:
            f.write(text)
    cpp_extension.load(name="sam3lt_emu", sources=[unit],
                       extra_cflags=["-O2", "-DSAM3LT_EMULATE"], extra_include_paths=[os.path.join(REPO, "csrc")],
                       build_directory=build, is_python_module=False, verbose=False)


_emulation_error: str | None = None


def require_emulator() -> None:
    """Skip when SAM3LT_SKIP_EMULATION is set, else build the emulator (the first test to need it reports the
    build log; the rest fail briefly)."""
    global _emulation_error
    if _flag("SAM3LT_SKIP_EMULATION"):
        pytest.skip("SAM3LT_SKIP_EMULATION is set")
    if _emulation_error is not None:
        pytest.fail(f"the emulated kernels failed to build: {_emulation_error[:2000]}")
    try:
        build_emulator()
    except Exception as exc:
        _emulation_error = f"{type(exc).__name__}: {exc}"
        raise


def require_cuda_extension() -> None:
    """Skip without a GPU; on a GPU an unusable extension fails (skips where its build was skipped on purpose)."""
    if not GPU:
        pytest.skip("needs a CUDA GPU")
    available, reason = _cuda.status()
    if not available:
        if _flag("SAM3LT_SKIP_CUDA_BUILD"):
            pytest.skip(f"the CUDA extension was not built (SAM3LT_SKIP_CUDA_BUILD): {reason}")
        pytest.fail(f"a CUDA GPU is present but the cuda backend is unavailable: {reason}")


def emulate_cuda(monkeypatch) -> None:
    """For the rest of the test, the cuda backend's kernels are the emulator's (on CPU tensors; torch's own
    ops, ``_cuda.torch_ops()``, are left as they are: they need CUDA tensors)."""
    for op in _cuda.kernel_ops():
        impl = _backend._REGISTRY[op]["cuda"]
        monkeypatch.setattr(impl, "fn", getattr(torch.ops.sam3lt_emu, op))
        monkeypatch.setattr(impl, "supports", lambda *args: None)


def prepare(target: Target, request, monkeypatch) -> Target:
    """The body of the fixture ``target``: makes ``target`` runnable for this test."""
    if target.emulated:
        require_emulator()
        emulate_cuda(monkeypatch)
        torch.ops.sam3lt_emu.set_schedule(ORDERS["random"], seeds.for_test(request.node.nodeid))
    elif target.name == "cuda":
        require_cuda_extension()
    return target
