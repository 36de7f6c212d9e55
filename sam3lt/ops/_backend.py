"""Backend selection for ``sam3lt.ops``.

The choice comes from, in order of precedence: the ``backend=`` argument of an op call, the innermost
:func:`use_backend` context, the last :func:`set_backend` call, the ``SAM3LT_BACKEND`` environment variable, and
``auto``. ``auto`` takes, in order: a measured choice for the op and input signature (:func:`sam3lt.ops.autotune`,
in this process or from the on-disk cache of the device); on CUDA inputs without one, evidence
(``_tuning.EVIDENCE``: the vendor kernel, SDPA / cuBLAS, for compute-bound ops; the custom kernels for chains of
small memory-bound ops); on CPU inputs, for the ops in ``_tuning.CPU_EVIDENCE``, the shapes where the ``cpu``
kernel was measured faster (the attention ops: 64 to 768 keys); otherwise the order of :data:`BACKENDS`, ``cuda`` (compiled ``sam3lt._C``) → ``triton``
→ ``cpu`` (compiled ``sam3lt._cpu``, CPU tensors) → ``eager``, taking the first that can run the inputs. :func:`explain` names the rule.

An op's public function checks its arguments once (``check_args`` in its module, registered with
:func:`define`: a ``TypeError`` / ``ValueError`` naming the argument) and then dispatches. Each backend registers,
per op, an implementation and a ``supports(*args) -> str | None`` check of *its own* limits (devices, dtypes, head
dims, int32 sizes) on valid arguments: ``None`` when it can take them, else a readable reason. Under ``auto`` a backend that
cannot take an input is skipped and the next one runs; a backend that is *missing* altogether (package not
installed, extension not built: :func:`set_missing_check`) is reported by one warning per backend, the first
time it would have served inputs on its device (CUDA; the CPU for ``cpu``) (never while ``torch.compile`` traces: a warning would break the graph).
:func:`explain` says which backend runs an op on given inputs and why the others do not. A backend forced by
name that cannot run raises :class:`BackendUnavailable` with its reason; a backend chosen for the process or a
:func:`use_backend` block serves the ops it implements and ``auto`` runs the others (``cpu`` has the conv
family, ``linear`` and the attention ops; the conv family has no GPU backend). An implementation registered with
``auto=False`` runs only when its backend is asked for by name (``auto`` passes over it silently): for a
kernel that works but is not the fastest choice, e.g. the Triton mask-product GEMM against cuBLAS. Inside
:func:`sam3lt.ops.autotune` the ``auto`` choice is measured instead, per op and input signature, among every
backend that can take the inputs (``auto=False`` ones included; :mod:`sam3lt.ops._tuning`).

The selection is plain Python that ``torch.compile`` traces (and guards on); the non-eager implementations
are ``sam3lt::`` custom ops, so a compiled model has no graph break at an op call.
"""
from __future__ import annotations

import contextlib
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import _tuning

BACKENDS = ("cuda", "triton", "cpu", "eager")
_CHOICES = ("auto",) + BACKENDS


class BackendUnavailable(RuntimeError):
    """A backend forced by name cannot run the given inputs."""


@dataclass
class _Impl:
    fn: Callable
    supports: Callable[..., str | None]
    auto: bool = True


_REGISTRY: dict[str, dict[str, _Impl]] = {}
_CHECKS: dict[str, Callable[..., None]] = {}
_state = threading.local()
_global_choice: str | None = None
_warned: set[str] = set()
_MISSING_CHECKS: dict[str, Callable[[], str | None]] = {}


def _check_choice(name: str, where: str) -> str:
    name = name.lower().strip()
    if name not in _CHOICES:
        raise ValueError(f"{where}: unknown backend {name!r}; expected one of {', '.join(_CHOICES)}")
    return name


def define(op: str, check_args: Callable[..., None]) -> None:
    """Declare ``op`` with its argument check (raises TypeError / ValueError naming the argument)."""
    _CHECKS[op] = check_args


def _check_args(op: str, args) -> None:
    check = _CHECKS.get(op)
    if check is not None:
        check(*args)


def register(op: str, backend: str, fn: Callable, supports: Callable[..., str | None] | None = None,
             auto: bool = True) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op`` (``supports`` returns None or a reason).

    With ``auto=False`` the implementation is used only when ``backend`` is chosen by name.
    """
    backend = _check_choice(backend, "register")
    if backend == "auto":
        raise ValueError("register: 'auto' is not a backend")
    _REGISTRY.setdefault(op, {})[backend] = _Impl(fn, supports or (lambda *a, **k: None), bool(auto))


def set_backend(name: str) -> None:
    """Set the process-wide default backend: "auto", "cuda", "triton", "cpu" or "eager"."""
    global _global_choice
    _global_choice = _check_choice(name, "set_backend")


def get_backend() -> str:
    """The backend choice in force for an op call without ``backend=``."""
    stack = getattr(_state, "stack", None)
    if stack:
        return stack[-1]
    if _global_choice is not None:
        return _global_choice
    return _check_choice(os.environ.get("SAM3LT_BACKEND", "auto"), "SAM3LT_BACKEND")


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: ops called inside use backend ``name`` (thread-local, nestable)."""
    name = _check_choice(name, "use_backend")
    stack = getattr(_state, "stack", None)
    if stack is None:
        stack = _state.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _compiling() -> bool:
    """True while torch.compile traces: warnings.warn would break the graph there, so the fallback is silent."""
    try:
        import torch

        return torch.compiler.is_compiling()
    except (ImportError, AttributeError):  # pragma: no cover
        return False


def set_missing_check(backend: str, check: Callable[[], str | None]) -> None:
    """Tell the dispatch how to ask whether ``backend`` is missing altogether (package not installed, extension
    not built): ``check()`` returns None when present, else why not."""
    _MISSING_CHECKS[_check_choice(backend, "set_missing_check")] = check


def _warn_missing(backend: str, args) -> None:
    """``auto`` warns once per backend when a backend that would serve these inputs' device (CUDA; the CPU for
    ``cpu``) is missing. A backend that merely does not take these inputs (CPU tensors for a GPU backend, an
    unsupported dtype or shape) is passed over silently: that is the dispatch working, not a problem to report."""
    on_cpu = backend == "cpu"
    if backend in _warned or not any(isinstance(a, torch.Tensor) and (a.device.type == "cpu") == on_cpu for a in args):
        return
    check = _MISSING_CHECKS.get(backend)
    reason = check() if check is not None else None
    if reason is not None:
        _warned.add(backend)
        warnings.warn(f"sam3lt: the {backend} backend is unavailable ({reason}); falling back to the next backend",
                      stacklevel=4)


def backend_reason(op: str, backend: str, args) -> str | None:
    """None if ``backend`` can run ``op`` on these (valid) arguments, else why not."""
    impl = _REGISTRY.get(op, {}).get(backend)
    if impl is None:
        return f"the {backend} backend has no implementation of {op}"
    return impl.supports(*args)


def unavailable_reason(op: str, backend: str, *args) -> str | None:
    """None if ``backend`` can run ``op`` on these inputs, else why not (invalid arguments: what is wrong)."""
    try:
        _check_args(op, args)
    except (TypeError, ValueError) as exc:
        return str(exc)
    return backend_reason(op, backend, args)


def _choose(op: str, backend: str | None, args) -> tuple[str, Callable, str]:
    """(backend name, implementation, the rule that chose it) for ``op`` on these inputs."""
    choice = get_backend() if backend is None else _check_choice(backend, f"{op}(backend=...)")
    if backend is None and choice not in ("auto", "eager") and choice not in _REGISTRY.get(op, {}):
        choice = "auto"  # a process-wide / context backend with no implementation of this op: auto runs it
    if choice != "auto":
        reason = backend_reason(op, choice, args)
        if reason is not None:
            raise BackendUnavailable(f"{op}: backend {choice!r} cannot run these inputs: {reason}")
        return choice, _REGISTRY[op][choice].fn, f"chosen by name ({choice!r})"
    compiling = _compiling()
    # a measured choice for these inputs (sam3lt.ops.autotune, in this process or in the on-disk cache)
    if op in _tuning.TUNED_OPS or _tuning.tuning_active() or _tuning.has_disk_choices(op, args, compiling):
        candidates = {name: impl.fn for name, impl in _REGISTRY.get(op, {}).items() if impl.supports(*args) is None}
        tuned = _tuning.lookup(op, args, candidates, compiling)
        if tuned is not None:
            return tuned[0], candidates[tuned[0]], tuned[1]
    order, rule = _tuning.evidence_order(op, args, BACKENDS)
    passed_over = []
    for name in order:
        impl = _REGISTRY.get(op, {}).get(name)
        if impl is None or not impl.auto:
            continue
        if impl.supports(*args) is None:
            return name, impl.fn, rule + (f"; passed over {', '.join(passed_over)}" if passed_over else "")
        passed_over.append(name)
        if not compiling:
            _warn_missing(name, args)
    raise BackendUnavailable(f"{op}: no backend can run these inputs")


def select(op: str, backend: str | None, *args) -> tuple[str, Callable]:
    """The backend name and implementation that will run ``op`` on these inputs."""
    name, fn, _ = _choose(op, backend, args)
    return name, fn


class Explanation(dict):
    """:func:`explain`'s answer: backend -> "runs" / "available" / why not, and ``rule``: why ``auto`` chose."""

    rule: str = ""

    def __repr__(self) -> str:
        return f"{dict.__repr__(self)} (auto: {self.rule})"


def explain(op: str, *args) -> Explanation:
    """For each backend, "runs" / "available" or the reason it cannot run ``op`` on these inputs (for users
    asking why a kernel did not run), and in ``.rule`` which rule of ``auto`` chose the one that runs: a measured
    choice (sam3lt.ops.autotune, this process or the on-disk cache), evidence (CUDA inputs: the vendor kernel
    for compute-bound ops, custom kernels for memory-bound chains), or the default order. Invalid arguments
    raise the op's TypeError / ValueError."""
    _check_args(op, args)
    out = Explanation()
    for name in BACKENDS:
        reason = backend_reason(op, name, args)
        out[name] = "available" if reason is None else reason
    chosen, _, out.rule = _choose(op, "auto", args)
    out[chosen] = "runs"
    return out


def dispatch(op: str, backend: str | None, *args):
    """Run ``op`` with the selected backend (its arguments already checked by the op's public function)."""
    return select(op, backend, *args)[1](*args)
