"""``pytest bench/ops``: the per-op microbenchmarks (the cases of ``bench_<family>.py``) on pytest-benchmark.

Options (besides pytest-benchmark's own ``--benchmark-*``): ``--quick`` (seconds on the CPU: tiny shapes, fp32,
few rounds; on a GPU the real shapes with fewer rounds), ``--device``, ``--size``, ``--dtypes`` and
``--time-budget-s`` (tests that would start after it are skipped, so that the JSON is still written).
The root pytest.ini's ``testpaths = tests`` keeps a bare ``pytest`` from collecting this folder.
"""
from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass

import pytest
import torch

from ..common import BACKENDS, DTYPES, SHORT, Timer, free_cuda, is_oom, measure_ceilings, xformers_status
from . import _unavailable_reason, make_inputs, select_cases
from ._case import Case

# pytest-benchmark defaults replaced under --quick (and, on a GPU, its round length), unless given explicitly
QUICK_DEFAULTS = {"--benchmark-max-time": ("benchmark_max_time", "0.02"),
                  "--benchmark-min-rounds": ("benchmark_min_rounds", 3)}
GPU_MIN_TIME = ("--benchmark-min-time", "benchmark_min_time", "0.001")  # >= 1 ms per round: one sync amortised


def pytest_addoption(parser):
    group = parser.getgroup("sam3lt ops", "sam3lt per-op microbenchmarks (bench/ops)")
    group.addoption("--quick", action="store_true",
                    help="a quick run: on the CPU tiny shapes, fp32 and few rounds (seconds); on a GPU the real "
                         "shapes with few rounds")
    group.addoption("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: cuda if available")
    group.addoption("--size", default="auto", choices=["auto", "full", "cpu", "tiny"],
                    help="shape class: full (the model's real shapes), cpu (reduced), tiny; default full on a GPU, "
                         "cpu on the CPU, tiny on the CPU with --quick")
    group.addoption("--dtypes", default=None,
                    help="comma-separated dtypes (float32,bfloat16,float16); default float32,bfloat16, "
                         "float32 on the CPU with --quick")
    group.addoption("--time-budget-s", type=float, default=None,
                    help="skip the benchmarks that would start after this many seconds (the JSON is still written)")


def _given(config, flag: str) -> bool:
    args = list(config.invocation_params.args) + shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    return any(str(a) == flag or str(a).startswith(flag + "=") for a in args)


@dataclass
class Settings:
    device: torch.device
    size: str
    quick: bool
    dtypes: list[str]
    deadline: float | None  # time.time() after which the remaining benchmarks are skipped


SETTINGS = pytest.StashKey[Settings]()


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark's pytest_configure reads its options
def pytest_configure(config):
    if not hasattr(config.option, "quick"):  # this conftest was not loaded as an initial one
        return
    if not HAVE_PYTEST_BENCHMARK:
        raise pytest.UsageError("bench/ops needs pytest-benchmark: pip install pytest-benchmark (in the test extra)")
    quick = config.getoption("quick")
    name = config.getoption("device")
    device = torch.device("cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu")
    cuda = device.type == "cuda"
    size = config.getoption("size")
    if size == "auto":
        size = "full" if cuda else ("tiny" if quick else "cpu")
    dtypes = config.getoption("dtypes")
    dtypes = [d.strip() for d in dtypes.split(",") if d.strip()] if dtypes else (
        ["float32"] if quick and not cuda else ["float32", "bfloat16"])
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise pytest.UsageError(f"--dtypes: unknown {unknown}; expected some of {', '.join(DTYPES)}")
    budget = config.getoption("time_budget_s")
    config.stash[SETTINGS] = Settings(device, size, quick, dtypes, time.time() + budget if budget else None)
    if quick:
        for flag, (dest, value) in QUICK_DEFAULTS.items():
            if hasattr(config.option, dest) and not _given(config, flag):
                setattr(config.option, dest, value)
    flag, dest, value = GPU_MIN_TIME
    if cuda and hasattr(config.option, dest) and not _given(config, flag):
        setattr(config.option, dest, value)


def synchronized_clock() -> float:
    """pytest-benchmark's timer on a GPU: ``perf_counter`` after a synchronize, so a round of back-to-back calls
    is timed from the first launch to the end of the last kernel."""
    torch.cuda.synchronize()
    return time.perf_counter()


@dataclass
class Param:
    case: Case
    dtype: str
    impl: str  # a backend name, or the baseline's name
    baseline: object = None  # the Baseline, for a baseline

    @property
    def key(self) -> tuple:
        return self.case.op, self.case.name, self.dtype

    @property
    def group(self) -> str:
        return f"{self.case.op}: {self.case.name} [{self.case.shape}] {self.dtype}"


def _slug(text: str) -> str:
    out = "".join(c if c.isascii() and c.isalnum() else "_" for c in text.lower())
    return "_".join(part for part in out.split("_") if part)


def pytest_generate_tests(metafunc):
    if "op_case" not in metafunc.fixturenames:
        return
    settings = metafunc.config.stash[SETTINGS]
    marks = []
    if settings.device.type == "cuda" and not _given(metafunc.config, "--benchmark-timer"):
        marks = [pytest.mark.benchmark(timer=synchronized_clock)]
    params = []
    for case in select_cases(settings.size, settings.quick):
        for dtype in settings.dtypes:
            impls = [Param(case, dtype, b) for b in BACKENDS] + [Param(case, dtype, b.name, b) for b in case.baselines]
            for p in impls:
                params.append(pytest.param(p, marks=marks,
                                           id=f"{case.op}-{_slug(case.name)}-{SHORT[dtype]}-{_slug(p.impl)}"))
    metafunc.parametrize("op_case", params)


class Inputs:
    """One (case, dtype)'s inputs and eager reference output, shared by its backends and baselines."""

    def __init__(self, param: Param, device: torch.device):
        import sam3lt.ops as ops

        case = param.case
        self.first, self.call_with, self.sets = make_inputs(case, device, DTYPES[param.dtype])
        self.flops, self.bytes = float(case.flops(self.first)), float(case.bytes(self.first))
        self.reference, self.eager_ms = None, None
        if _unavailable_reason(case.op, "eager", self.first) is None:
            with torch.inference_mode():
                self.reference = getattr(ops, case.op)(*self.first, backend="eager")


class Env:
    """The session's device, settings, measured ceilings (lazily) and the current case's inputs."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.device = settings.device
        self.measured_ceilings = None  # bench.common.measure_ceilings, on first use
        self._xformers = None
        self._key, self._inputs = None, None

    @property
    def ceilings(self) -> dict:
        if self.measured_ceilings is None:
            self.measured_ceilings = measure_ceilings(self.device, Timer(self.device, self.settings.quick),
                                                      self.settings.quick)
        return self.measured_ceilings

    @property
    def xformers_reason(self) -> str | None:
        if self._xformers is None:
            self._xformers = (xformers_status(self.device)[1],)
        return self._xformers[0]

    def inputs(self, param: Param) -> Inputs:
        if self._key != param.key:
            self._key, self._inputs = None, None
            free_cuda()
            try:
                self._inputs = Inputs(param, self.device)
            except Exception as err:
                if is_oom(err):
                    free_cuda()
                    pytest.skip(f"out of memory making the inputs: {err}")
                raise
            self._key = param.key
        return self._inputs

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


ENV = pytest.StashKey[Env]()


@pytest.fixture(scope="session")
def bench_env(request):
    settings = request.config.stash[SETTINGS]
    if settings.device.type == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("--device cuda: no CUDA device here")
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 is fp32, as in the suite's ceilings (TF32 off)
        torch.backends.cudnn.allow_tf32 = False
    env = request.config.stash[ENV] = Env(settings)
    yield env
    free_cuda()


def _update_json(config, benchmarks, output_json):
    """The device ceilings the shares in ``extra_info`` are taken of, in the JSON's ``sam3lt`` entry."""
    env = config.stash.get(ENV, None)
    if env is not None and env.measured_ceilings is not None:
        output_json["sam3lt"] = {"ceilings": env.measured_ceilings}


def _update_machine_info(config, machine_info):
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return
    info = {"device": str(settings.device), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
            "size": settings.size, "quick": settings.quick, "dtypes": settings.dtypes}
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    if settings.device.type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(settings.device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(settings.device)))
    machine_info["sam3lt"] = info


try:  # pytest-benchmark's hooks, only where it is installed (pytest rejects unknown hooks)
    import pytest_benchmark  # noqa: F401
    HAVE_PYTEST_BENCHMARK = True
    pytest_benchmark_update_json = _update_json
    pytest_benchmark_update_machine_info = _update_machine_info
except ImportError:
    HAVE_PYTEST_BENCHMARK = False
