"""Triton kernels compiled for a CUDA target without a GPU: ptxas report and SASS per distinct binary.

A stand-in driver reports the target (the method of the old tests/_gpu_compile_check.py); each recorded launch
is compiled with ``kernel.warmup`` (TTIR -> PTX -> ptxas -> cubin, never launched) on CPU tensors of the
recorded shapes and strides. Triton caches a binary per specialisation, so launches that differ only in their
grid or sizes share one compile; the ptxas log is captured once per binary (``knobs.nvidia.dump_ptxas_log``).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import time

import torch

from . import metrics


class StandInDriver:
    """Just enough of a Triton driver for compiling (never for launching)."""

    def __init__(self, capability: int):
        self.capability = capability

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget

        return GPUTarget("cuda", self.capability, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        return torch.device("cuda", 0)


def install_driver(capability: int) -> None:
    """Must run before the kernels are first compiled; TRITON_INTERPRET must be unset before triton's import."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("bench.static: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    from triton.runtime import driver

    driver.set_active(StandInDriver(capability))


def materialise(m):
    """A CPU tensor of a recorded tensor's shape, strides and dtype (untouched memory: only its pointer and
    alignment matter to the compiler); other arguments as recorded."""
    if isinstance(m, tuple) and m and m[0] == "tensor":
        _, shape, stride, dtype = m
        return torch.empty_strided(shape, stride, dtype=getattr(torch, dtype))
    return m


def compile_launch(kernel, launch, binaries: dict, cuobjdump: str) -> str:
    """Compile one recorded launch; returns its binary's hash (metrics in ``binaries[hash]``)."""
    import triton

    args = [materialise(a) for a in launch.args]
    log = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(log):
        triton.knobs.nvidia.dump_ptxas_log = True
        try:
            compiled = kernel.warmup(*args, grid=launch.grid, **launch.kwargs)
        finally:
            triton.knobs.nvidia.dump_ptxas_log = False
    h = compiled.hash
    if h not in binaries:
        ptxas = metrics.parse_ptxas(log.getvalue())
        info = ptxas.get(compiled.metadata.name) or next(iter(ptxas.values()), None)
        if info is None:
            raise RuntimeError(f"{launch.kernel}: no ptxas report captured (was it compiled before?)")
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            sass = metrics.sass_of(f.name, cuobjdump)
        meta = compiled.metadata
        binaries[h] = {**info, "sass": next(iter(sass.values()), {}), "num_warps": meta.num_warps,
                       "num_stages": meta.num_stages, "threads": 32 * meta.num_warps, "smem": meta.shared,
                       "compile_s": round(time.perf_counter() - start, 2)}
    return h


def audit(recorder, kernel_filter=None) -> tuple[list[dict], dict]:
    """One row per recorded launch (grid, config, binary hash) and the binaries' metrics."""
    import triton

    cuobjdump = triton.knobs.nvidia.cuobjdump.path
    binaries: dict[str, dict] = {}
    rows = []
    for launch in recorder.launches.values():
        if kernel_filter and launch.kernel not in kernel_filter:
            continue
        h = compile_launch(recorder.kernels[launch.kernel], launch, binaries, cuobjdump)
        config = {k: v for k, v in launch.kwargs.items() if k not in ("num_warps", "num_stages", "DOT_PRECISION")}
        rows.append({"backend": "triton", "kernel": launch.kernel, "family": launch.family, "grid": list(launch.grid),
                     "ctas": int(torch.Size(launch.grid).numel()), "config": config, "binary": h,
                     "scenarios": sorted(launch.scenarios), "model_runs": launch.model_runs,
                     "launches": launch.count})
    return rows, binaries
