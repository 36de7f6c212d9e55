"""The CPU side of :func:`sam3lt.optimize`: pre-packed GEMM weights, and bf16 GEMMs only where the CPU has them.

On the CPU the GEMMs are ~75% of a forward; the rest (convolutions, attention, LayerNorms, elementwise ops) is
spread thin. So the CPU path changes the GEMMs and leaves every other op as the fp32 eager model runs it:

- ``precision="bf16"``: every ``F.linear`` runs as a oneDNN bf16 GEMM (AMX or AVX-512 BF16 dot products, fp32
  accumulation) on weights converted and packed into oneDNN's blocked layout once; its input is rounded to bf16,
  its output comes back as fp32. Attention (SDPA) runs in bf16 the same way. Activations, LayerNorms,
  convolutions and the mask product stay fp32.
  The whole model in bf16 is faster still but rounds every activation: on the random test models its masks agree
  with fp32 eager at IoU ~0.984, under the fast path's 0.99 rule; bf16 GEMMs alone keep IoU >= 0.99.
- ``precision="fp32"``: every ``F.linear`` runs as MKL's packed sgemm on weights packed once (``F.linear``
  packs the weight inside every call; equal up to the last bits of rounding). ``dtype=torch.float32`` asks for
  the model's own numbers: then the GEMMs stay unpacked.

bf16 is chosen only where the CPU computes bf16 dot products natively (:func:`choose_precision`): elsewhere oneDNN
emulates them and a bf16 GEMM is ~7x *slower* than fp32 (measured here under ``ONEDNN_MAX_CPU_ISA=AVX2``).

The packing is a :class:`~torch.overrides.TorchFunctionMode` entered around each call of the fast path, so no
model code changes: it sees every ``F.linear`` (``nn.Linear`` modules, fused q/k/v slices, stacked DETR key/value
projections, RepMixer MLPs) and swaps in the packed weight, found by the weight's storage address, shape and
strides (the model is frozen after ``optimize``, as for CUDA graphs).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .fast import DEVICE_PLANS, FastSam3LiteText, prepare

log = logging.getLogger("sam3lt.cpu")

PRECISIONS = ("auto", "bf16", "fp32")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which oneDNN has no bf16 dot-product instructions
_ONEDNN_NO_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (None where it cannot be read: not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def native_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 dot products natively, as (answer, the evidence in words).

    All of: the CPU reports ``avx512_bf16`` or ``amx_bf16``; torch's CPU capability is AVX-512 (or above); oneDNN
    is not capped below its bf16 ISAs by ``ONEDNN_MAX_CPU_ISA``; oneDNN says it supports bf16."""
    flags = cpu_flags()
    capability = torch.backends.cpu.get_cpu_capability()
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if flags is None:
        return False, "the CPU flags are unreadable (no /proc/cpuinfo)"
    found = [f for f in _CPU_BF16_FLAGS if f in flags]
    if not found:
        return False, "the CPU reports neither avx512_bf16 nor amx_bf16"
    if not capability.startswith("AVX512"):
        return False, f"torch's CPU capability is {capability}, not AVX512"
    if cap in _ONEDNN_NO_BF16:
        return False, f"ONEDNN_MAX_CPU_ISA={cap} caps oneDNN below its bf16 instructions"
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False, "oneDNN reports no bf16 support"
    return True, f"the CPU reports {' and '.join(found)}, torch capability {capability}"


def choose_precision(precision: str = "auto") -> tuple[str, str]:
    """("bf16" | "fp32", why). ``auto``: bf16 GEMMs where the CPU has native bf16 dot products, else fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    native, evidence = native_bf16()
    if precision == "auto":
        return ("bf16", f"auto: bf16 GEMMs ({evidence})") if native else ("fp32", f"auto: fp32 ({evidence})")
    if precision == "bf16" and not native:
        warnings.warn(f"sam3lt.optimize: bf16 GEMMs requested, but {evidence}: oneDNN emulates bf16 there, several "
                      f"times slower than fp32", RuntimeWarning, stacklevel=3)
    return precision, f"requested ({evidence})"


class PackedGemms(TorchFunctionMode):
    """Runs fp32 ``F.linear`` calls on CPU tensors with weights packed once (see the module docstring)."""

    def __init__(self, precision: str, frozen):
        """frozen: the tensors whose weights may be packed (a model's parameters and buffers; a weight that is a
        view of one of them counts). Any other weight, computed in the forward, runs unpacked: its address may be
        reused by another tensor later, so it cannot key a cache."""
        super().__init__()
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision: expected 'bf16' or 'fp32', got {precision!r}")
        self.precision = precision
        self._storages = {t.untyped_storage().data_ptr() for t in frozen}
        self._packed: dict[tuple, tuple] = {}
        self.unpacked = 0  # F.linear calls that ran unpacked (counted, for tests and benchmarks)
        # other ops run in bf16 under the bf16 plan: attention (measured: no change of mask IoU on the bench
        # model, 0.9934). Not the convolutions: in bf16 they take the bench model's IoU to 0.9906, too near 0.99.
        self.extra: set = {F.scaled_dot_product_attention} if precision == "bf16" else set()

    def _key(self, w: torch.Tensor, rows: int) -> tuple:
        # MKL packs for one batch size (another runs the unpacked weight); oneDNN's blocked layout fits any
        return (w.data_ptr(), tuple(w.shape), w.stride(), rows if self.precision == "fp32" else 0)

    def pack(self, w: torch.Tensor, b: torch.Tensor | None, rows: int) -> tuple:
        key = self._key(w, rows)
        packed = self._packed.get(key)
        if packed is None:
            with torch.inference_mode(False), torch.no_grad():
                if self.precision == "bf16":
                    wb = w.detach().to(torch.bfloat16).contiguous()
                    packed = (torch.ops.mkldnn._reorder_linear_weight(wb, None),
                              None if b is None else b.detach().to(torch.bfloat16))
                else:
                    wc = w.detach().contiguous()
                    packed = (torch.ops.mkl._mkl_reorder_linear_weight(wc, rows), wc)
            self._packed[key] = packed
        return packed

    def linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        rows = x.numel() // max(1, x.shape[-1])
        if self.precision == "bf16":
            pw, pb = self.pack(w, b, rows)
            return torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), pw, pb, "none", [], "").float()
        pw, wc = self.pack(w, b, rows)
        return torch.ops.mkl._mkl_linear(x.contiguous(), pw, wc, b, rows)

    def _bf16(self, t: torch.Tensor) -> torch.Tensor:
        """A frozen tensor (a weight, a constant bias) converted once; anything else converted per call."""
        if t.untyped_storage().data_ptr() not in self._storages:
            return t.to(torch.bfloat16)
        key = ("bf16", t.data_ptr(), tuple(t.shape), t.stride())
        if key not in self._packed:
            with torch.inference_mode(False), torch.no_grad():
                self._packed[key] = (t.detach().to(torch.bfloat16),)
        return self._packed[key][0]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.precision == "bf16" and func in self.extra and args[0].dtype == torch.float32 \
                and args[0].device.type == "cpu" and not torch.is_grad_enabled():
            cast = [self._bf16(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
            kw = {k: self._bf16(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                  for k, v in kwargs.items()}
            return func(*cast, **kw).float()
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if (x.device.type == "cpu" and x.dtype == w.dtype == torch.float32 and x.dim() >= 2 and x.numel()
                    and w.untyped_storage().data_ptr() in self._storages
                    and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad))):
                return self.linear(x, w, b)
            self.unpacked += 1
        return func(*args, **kwargs)


_MALLOC_STATE: dict[str, object] = {}
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc's largest mmap threshold on 64-bit


def keep_freed_memory() -> str:
    """Make glibc's malloc serve buffers up to 32 MiB from its heap and keep freed memory there (process-wide, once).

    Why: by default glibc maps every buffer above its mmap threshold (128 KiB, raised on the fly up to 32 MiB)
    fresh from the OS and unmaps it on free, and trims the heap top; the next forward then touches new pages, one
    page fault per 4 KiB, inside whichever op first writes the buffer (a GEMM's bias copy, a dtype cast). At the
    benchmark size that is 7,000-20,000 faults per forward, and in a VM under load each costs microseconds:
    measured here, a forward's CPU time fell ~2x with no faults (bench/cpu_optimize.py). The price: the process
    keeps its peak heap (the fast path's working set) instead of returning it between calls.
    Returns what was done, in words (not glibc: nothing)."""
    if "result" in _MALLOC_STATE:
        return _MALLOC_STATE["result"]
    import ctypes
    import ctypes.util

    result = "malloc unchanged (not glibc)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):
            ok = libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
            result = ("glibc malloc keeps freed buffers (mmap threshold 32 MiB, no trimming)" if ok else
                      "malloc unchanged (glibc refused mallopt)")
    except OSError:
        pass
    _MALLOC_STATE["result"] = result
    log.info("sam3lt.cpu: %s", result)
    return result


@dataclass(frozen=True)
class CpuPlan:
    """What the CPU fast path does, and why (``FastSam3LiteText.cpu_plan``; also in its repr and logged once)."""

    precision: str  # "bf16": bf16 GEMMs, fp32 activations; "fp32": packed fp32 GEMMs
    reason: str
    threads: int
    compiled: bool
    allocator: str = "malloc unchanged"
    packed: bool = True  # False: dtype=torch.float32 asked for the model's own numerics (F.linear as it is)

    def describe(self) -> str:
        gemms = {"bf16": "bf16 GEMMs (oneDNN, packed weights) and attention, fp32 activations",
                 "fp32": "fp32 GEMMs (MKL, packed weights)"}.get(self.precision, f"{self.precision} model")
        if self.precision == "fp32" and not self.packed:
            gemms = "fp32 GEMMs (unpacked: dtype=float32 keeps the model's numerics)"
        if self.compiled:
            gemms = "stages compiled by inductor (its own fp32 GEMMs)"
        return f"{gemms}; {self.threads} threads; compiled={self.compiled}; {self.allocator}; {self.reason}"


def plan(precision: str = "auto", threads: int | None = None, compiled: bool = False,
         allocator: str = "malloc unchanged") -> CpuPlan:
    """Decide the CPU plan (and set torch's thread count when ``threads`` is given: process-wide)."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected a positive integer, got {threads!r}")
        torch.set_num_threads(threads)
    chosen, reason = choose_precision(precision)
    result = CpuPlan(chosen, reason, torch.get_num_threads(), compiled, allocator)
    log.info("sam3lt.optimize on the CPU: %s", result.describe())
    return result


def _fast_class():
    class CpuFastSam3LiteText(FastSam3LiteText):
        """:class:`~sam3lt.fast.FastSam3LiteText` on the CPU: each call runs under the plan's packed GEMMs (fp32
        models; a bf16/fp16 model runs its GEMMs in its own dtype, unpacked). ``cpu_plan`` says what was chosen."""

        cpu_plan: CpuPlan
        gemms: PackedGemms | None

        def __call__(self, *args, **kwargs):
            with self._gemm_mode():
                return super().__call__(*args, **kwargs)

        def encode_image(self, pixel_values):
            with self._gemm_mode():
                return super().encode_image(pixel_values)

        def encode_text(self, input_ids, attention_mask=None):
            with self._gemm_mode():
                return super().encode_text(input_ids, attention_mask)

        def _gemm_mode(self):
            # compiled stages pack their own weights (and a mode would be traced into them): no mode around them
            if self.gemms is None or self.compiled:
                return contextlib.nullcontext()
            return self.gemms

        def __repr__(self) -> str:
            return super().__repr__()[:-1] + f", cpu_plan={self.cpu_plan.describe()!r})"

    return CpuFastSam3LiteText


def optimize(model, *, precision: str = "auto", dtype: torch.dtype | None = None, threads: int | None = None,
             compile: bool = False, keep_memory: bool = True, image_batches=(1,), prompt_buckets=(1, 4, 16, 64),
             seq_len: int = 32, copy_outputs: bool = True, tune: bool = False):
    """:func:`sam3lt.optimize` for the CPU (``sam3lt.optimize`` calls it for a CPU device).

    Args:
        precision: "auto" (bf16 GEMMs where the CPU has native bf16 dot products, else fp32), "bf16" or "fp32".
            Used with an fp32 model (``dtype`` None or float32); the activations stay fp32 either way.
        dtype: None / torch.float32 (the model stays fp32; ``dtype=float32`` means the model's own fp32 numerics:
            unpacked GEMMs, as ``F.linear`` runs them), or
            torch.bfloat16 / torch.float16 to cast the whole model (every activation rounded: less accurate).
        threads: torch's intra-op thread count (process-wide; default: torch's, one per core).
        compile: ``torch.compile`` the stages (inductor's C++ backend); if inductor cannot build them, one warning
            and the uncompiled stages run.
        keep_memory: :func:`keep_freed_memory` (process-wide glibc malloc setting; the largest single gain here).
        image_batches, prompt_buckets, seq_len, copy_outputs, tune: as in :func:`sam3lt.optimize`.
    """
    allocator = keep_freed_memory() if keep_memory else "malloc unchanged"
    if dtype is None or dtype == torch.float32:
        chosen = plan("fp32" if dtype == torch.float32 else precision, threads, compile, allocator)
        if dtype == torch.float32:  # MKL's packed sgemm rounds differently in the last bits: not the model's numbers
            chosen = dataclasses.replace(chosen, packed=False)
        model_dtype = torch.float32
    else:
        if threads is not None:
            plan("fp32", threads)  # validates and sets the thread count
        native, evidence = native_bf16()
        if dtype == torch.bfloat16 and not native:
            warnings.warn(f"sam3lt.optimize: a bf16 model on a CPU where {evidence}: oneDNN emulates bf16 there, "
                          f"several times slower than fp32 (leave dtype unset to let the CPU path decide)",
                          RuntimeWarning, stacklevel=3)
        chosen = CpuPlan(str(dtype).replace("torch.", ""), f"requested dtype ({evidence})",
                         torch.get_num_threads(), compile, allocator)
        model_dtype = dtype
    prepare(model, model_dtype, torch.device("cpu"))
    fast = _fast_class()(model, cuda_graphs=False, compile=False, image_batches=image_batches,
                         prompt_buckets=prompt_buckets, seq_len=seq_len, copy_outputs=copy_outputs, tune=tune)
    fast.cpu_plan = chosen
    frozen = [*model.parameters(), *model.buffers()]
    fast.gemms = PackedGemms(chosen.precision, frozen) if model_dtype == torch.float32 and chosen.packed else None
    if compile:
        _compile_stages(fast)
    return fast


def _compile_stages(fast) -> None:
    """Compile the stages with inductor; a stage whose compilation fails runs uncompiled, after one warning."""
    state = {"warned": False}

    def guarded(name, raw):
        compiled = torch.compile(raw, dynamic=False)

        def uncompiled(*args):
            with fast.gemms or contextlib.nullcontext():
                return raw(*args)

        def run(*args):
            if state.get(name) == "eager":
                return uncompiled(*args)
            try:
                return compiled(*args)
            except Exception as err:  # inductor could not build (no C++ compiler, unsupported op, ...)
                state[name] = "eager"
                torch._dynamo.reset()
                if not state["warned"]:
                    state["warned"] = True
                    fast.cpu_plan = dataclasses.replace(fast.cpu_plan, compiled=False,
                                                        reason=f"{fast.cpu_plan.reason}; torch.compile failed")
                    warnings.warn(f"sam3lt.optimize: torch.compile failed on the CPU ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200]}); running uncompiled", RuntimeWarning)
                return uncompiled(*args)
        return run

    fast._fns = {name: guarded(name, raw) for name, raw in fast._raw.items()}
    fast.compiled = True


DEVICE_PLANS["cpu"] = optimize
