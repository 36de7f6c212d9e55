"""Shared pieces of the benchmark suite: the run context, timers, device ceilings, peak memory, environment.

Timing methods (recorded in every result as ``method``):

- GPU, single ops: ``triton.testing.do_bench`` (it flushes L2 before every call; the median and the 20th/80th
  percentiles of the timed calls after its warm-up), over inputs rotated through enough copies to exceed
  twice the L2 size where one set would fit in L2.
- GPU, layers and whole models: CUDA events around each call, synchronising after each one (latency as a
  caller sees it, launch overhead included, as in ``/work/shared/notes/hf_anchor.py``), median of N calls
  after a warm-up; the wall-clock median is recorded too.
- CPU: ``time.perf_counter`` around each call, median of N calls after a warm-up.

N adapts to the cost of a call: at least ``min_reps``, at most ``reps``, and no more than fit in the time
budget of the case.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
BACKENDS = ("eager", "triton", "cuda", "cpu")
SCHEMA = "sam3lt-bench/1"
NOT_MEASURED = "not yet measured"


def dtype_name(dtype: torch.dtype) -> str:
    return {v: k for k, v in DTYPES.items()}[dtype]


# ------------------------------------------------------------------------------------------------ timing
@dataclass
class Timing:
    ms: float  # median
    p20: float
    p80: float
    reps: int | None
    method: str
    wall_ms: float | None = None  # GPU layers/models: median wall clock of the synchronised calls
    min_ms: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    if len(values) == 1:
        return values[0]
    pos = q * (len(values) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


class Timer:
    """Times a zero-argument callable on the run's device (see the module docstring for the methods)."""

    def __init__(self, device: torch.device, quick: bool, reps: int | None = None, warmup: int | None = None,
                 budget_s: float | None = None):
        self.device = device
        self.cuda = device.type == "cuda"
        self.quick = quick
        self.reps = reps or (5 if quick else 10)
        self.warmup = warmup if warmup is not None else (1 if quick and not self.cuda else 3)
        self.min_reps = min(3, self.reps)
        self.budget_s = budget_s or ((2.0 if quick else 5.0) if self.cuda else (0.5 if quick else 3.0))
        # do_bench: warm-up and measurement time in ms
        self.bench_ms = (10, 40) if quick else (25, 100)

    def describe(self) -> dict:
        if self.cuda:
            ops = f"triton.testing.do_bench(warmup={self.bench_ms[0]} ms, rep={self.bench_ms[1]} ms), median"
            calls = (f"CUDA events per call, synchronised after each; median of {self.min_reps}..{self.reps} "
                     f"calls after up to {self.warmup} warm-up calls, within {self.budget_s:g} s per case")
        else:
            ops = calls = (f"time.perf_counter per call; median of {self.min_reps}..{self.reps} calls after "
                           f"{self.warmup} warm-up call(s), within {self.budget_s:g} s per case")
        return {"ops": ops, "layers_and_models": calls}

    def op(self, fn: Callable[[], object]) -> Timing:
        """A single op (microbenchmark)."""
        if self.cuda:
            from triton.testing import do_bench

            med, p20, p80 = do_bench(fn, warmup=self.bench_ms[0], rep=self.bench_ms[1], quantiles=[0.5, 0.2, 0.8])
            return Timing(float(med), float(p20), float(p80), None, "do_bench")
        return self._cpu(fn, self.budget_s)

    def call(self, fn: Callable[[], object], budget_s: float | None = None) -> Timing:
        """A layer, a model forward or a post-processing call."""
        budget = budget_s or self.budget_s
        return self._cuda_events(fn, budget) if self.cuda else self._cpu(fn, budget)

    def _counts(self, first_s: float, budget: float) -> tuple[int, int]:
        first_s = max(first_s, 1e-6)
        reps = max(self.min_reps, min(self.reps, int(budget / first_s)))
        warmup = min(self.warmup, max(0, int(budget / 4 / first_s)))
        return warmup, reps

    def _cpu(self, fn, budget) -> Timing:
        start = time.perf_counter()
        fn()  # first call: compiles/caches whatever it needs; also sizes the run
        warmup, reps = self._counts(time.perf_counter() - start, budget)
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), reps, "perf_counter",
                      min_ms=min(times))

    def _cuda_events(self, fn, budget) -> Timing:
        sync = torch.cuda.synchronize
        sync()
        start = time.perf_counter()
        fn()
        sync()
        warmup, reps = self._counts(time.perf_counter() - start, budget)
        for _ in range(warmup):
            fn()
        sync()
        times, walls = [], []
        for _ in range(reps):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            wall = time.perf_counter()
            begin.record()
            fn()
            end.record()
            sync()
            walls.append((time.perf_counter() - wall) * 1e3)
            times.append(begin.elapsed_time(end))
        return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), reps, "cuda_events",
                      statistics.median(walls), min(times))


def l2_bytes(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    props = torch.cuda.get_device_properties(device)
    return int(getattr(props, "L2_cache_size", 0) or 50 * 2**20)


def rotating(make: Callable[[int], tuple], set_bytes: int, device: torch.device, cap_bytes: int = 2**30):
    """(call_with, sets): input sets to cycle through so that consecutive calls do not find their inputs in L2.

    ``make(i)`` builds the i-th set; as many sets are built as needed to exceed twice the L2 size (at most 32,
    and at most ``cap_bytes`` in all); on the CPU one set.
    """
    count = 1
    l2 = l2_bytes(device)
    if l2 and set_bytes < 2 * l2:
        count = min(32, max(2, math.ceil(2 * l2 / max(set_bytes, 1)) + 1), max(1, cap_bytes // max(set_bytes, 1)))
    sets = [make(i) for i in range(count)]
    state = {"i": 0}

    def call_with(fn):
        def run():
            args = sets[state["i"]]
            state["i"] = (state["i"] + 1) % count
            return fn(*args)
        return run

    return call_with, sets


# ------------------------------------------------------------------------------------------------ ceilings
def measure_ceilings(device: torch.device, timer: Timer, quick: bool) -> dict:
    """Device ceilings measured in this run: a large device-to-device copy (bytes read + written) and a large
    matmul per dtype (bf16, and fp32 with TF32 off on GPU)."""
    out: dict = {"copy": {}, "matmul": {}}
    cuda = device.type == "cuda"
    numel = (2**28 if not quick else 2**26) if cuda else (2**26 if not quick else 2**24)  # fp32 elements
    x = torch.randn(numel, device=device)
    y = torch.empty_like(x)
    t = timer.op(lambda: y.copy_(x))
    out["copy"] = {"bytes": 2 * x.numel() * 4, "ms": t.ms, "GBps": 2 * x.numel() * 4 / t.ms / 1e6,
                   "what": f"y.copy_(x), {x.numel() * 4 / 2**20:.0f} MiB fp32, bytes read + written"}
    x = y = None  # free before the matmuls
    dtypes = ("bfloat16", "float32")  # bf16 on the CPU too: with AMX/AVX512-BF16 it beats the fp32 ceiling
    for name in dtypes:
        if cuda:
            n = 8192 if not quick or name == "bfloat16" else 4096
        else:  # a CPU without bf16 dot products (AVX2) emulates bf16 at a few GFLOP/s: keep that matmul small
            n = 2048 if name == "float32" else (512 if quick else 1024)
        a = torch.randn(n, n, device=device, dtype=DTYPES[name])
        b = torch.randn_like(a)
        t = timer.op(lambda: a @ b)
        out["matmul"][name] = {"n": n, "ms": t.ms, "TFLOPs": 2 * n**3 / t.ms / 1e9,
                               "what": f"{n}x{n} @ {n}x{n} {name}" + (", TF32 off" if cuda and name == "float32"
                                                                     else "")}
        a = b = None
    return out


def compute_ceiling(ceilings: dict, dtype: str) -> tuple[float | None, str | None]:
    mm = ceilings.get("matmul", {})
    if dtype in mm:
        return mm[dtype]["TFLOPs"], dtype
    if "float32" in mm:
        return mm["float32"]["TFLOPs"], "float32"
    return None, None


# ------------------------------------------------------------------------------------------------ memory
class PeakMemory:
    """Peak memory of a block: ``torch.cuda.max_memory_allocated`` on GPU; on the CPU the process's peak
    resident set (VmHWM, reset through /proc/self/clear_refs; whole process: weights and Python included),
    or None ("n/a") where that is not available."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.kind = "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS of the process (VmHWM)"
        self.ok = True
        if not self.cuda and self._hwm() is None:
            self.ok, self.kind = False, "n/a"

    @staticmethod
    def _status(key: str = "VmHWM:") -> int | None:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith(key):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    _hwm = _status

    def current(self) -> int | None:
        """Now: bytes allocated by torch on GPU; the resident set on the CPU."""
        if self.cuda:
            return int(torch.cuda.memory_allocated())
        return self._status("VmRSS:") if self.ok else None

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        elif self.ok:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.ok, self.kind = False, "n/a"

    def peak(self) -> int | None:
        if self.cuda:
            torch.cuda.synchronize()
            return int(torch.cuda.max_memory_allocated())
        return self._hwm() if self.ok else None


# ------------------------------------------------------------------------------------------------ environment
def _version(module: str) -> str | None:
    try:
        mod = __import__(module)
        return str(getattr(mod, "__version__", "unknown"))
    except Exception:
        return None


def git_info() -> dict:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True, cwd=root,
                                         stderr=subprocess.DEVNULL).strip()
        dirty = bool(subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"], text=True,
                                             cwd=root, stderr=subprocess.DEVNULL).strip())
        return {"commit": commit, "dirty": dirty}
    except Exception:
        return {"commit": "unknown", "dirty": None}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment(device: torch.device) -> dict:
    env = {
        "python": sys.version.split()[0], "torch": torch.__version__, "triton": _version("triton"),
        "transformers": _version("transformers"), "torchvision": _version("torchvision"),
        "sam3lt": _version("sam3lt"), "xformers": _version("xformers"), "matplotlib": _version("matplotlib"),
        "platform": platform.platform(), "cpu": _cpu_model(), "cpu_threads": torch.get_num_threads(),
        "cuda_runtime": torch.version.cuda, "load_average_at_start": loadavg(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(device=torch.cuda.get_device_name(device), device_kind="cuda",
                   capability=".".join(map(str, torch.cuda.get_device_capability(device))),
                   sm_count=props.multi_processor_count, memory_GiB=round(props.total_memory / 2**30, 1),
                   l2_MiB=round(l2_bytes(device) / 2**20, 1))
    else:
        threads = env["cpu_threads"]
        env.update(device=f"CPU: {env['cpu']} ({threads} torch thread{'s' if threads != 1 else ''} of "
                          f"{os.cpu_count()} cores)", device_kind="cpu", cpu_cores=os.cpu_count())
    return env


def xformers_status(device: torch.device):
    """(xformers.ops or None, reason): xformers only counts if it imports *and* runs a small call here."""
    try:
        import xformers.ops as xops
    except Exception as err:  # not installed, or a broken build
        return None, f"xformers does not import ({type(err).__name__}: {str(err)[:120]})"
    try:
        q = torch.randn(1, 16, 2, 32, device=device, dtype=torch.float32 if device.type == "cpu" else torch.bfloat16)
        xops.memory_efficient_attention(q, q, q)
    except Exception as err:
        return None, f"xformers imports but fails at run time here ({type(err).__name__}: {str(err)[:120]})"
    return xops, None


# ------------------------------------------------------------------------------------------------ context
@dataclass
class Context:
    """Everything a section needs: device, sizes, dtypes, timer, progress bar, deadline."""

    device: torch.device
    size: str  # "full" (real model shapes), "cpu" (reduced for the CPU) or "tiny" (CPU --quick)
    quick: bool
    dtypes: list[str]
    backends: list[str]
    timer: Timer
    progress: object = None
    deadline: float | None = None  # time.time() after which remaining cases are skipped
    notes: list[str] = field(default_factory=list)
    compile_on_cpu: bool = False  # run the fast-compile section on the CPU too (minutes)
    fast_reference: dict | None = None  # the fp32 eager outputs the fast path's accuracy is measured against

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() > self.deadline

    def tick(self, text: str = "") -> None:
        if self.progress is not None:
            self.progress.set_postfix_str(text[:60], refresh=False)
            self.progress.update(1)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()


def error_text(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text[:300]


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def clock() -> float:
    return time.time()


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
