"""The CPU side of :func:`sam3lt.optimize`: pre-packed GEMM and convolution weights, and bf16 only where the CPU
computes it natively, and only where it costs the masks least.

A CPU forward is GEMMs (ViT, DETR), convolutions (FPN neck, pixel decoder) and attention; the rest (LayerNorms,
elementwise ops) is spread thin. The CPU path changes those three and leaves every other op as fp32 eager runs it:

- ``precision="bf16"``: in the plan's bf16 scope (:func:`default_bf16_modules`: the ViT layers, the fine FPN
  levels, the text encoder, the DETR encoder and decoder, the pixel decoder) every ``F.linear`` runs as a oneDNN
  bf16 GEMM (AMX or AVX-512 BF16 dot products, fp32 accumulation) and every convolution as oneDNN's bf16
  convolution, on weights converted and packed once; inputs are rounded to bf16. Outputs come back as fp32,
  except where the next op runs in bf16 anyway (:func:`bf16_scope`: the ViT's q/k/v, MLP hidden layers with
  their activation applied in the GEMM, FPN convolutions feeding the next one), which saves the casts. Attention
  (SDPA) runs in bf16. Outside the scope (the patch embedding, the FPN level the DETR reads, the mask decoder's
  own GEMMs, the scoring) GEMMs and convolutions run packed fp32: their bf16 rounding cost the masks most for
  their time. LayerNorms, GroupNorms, residuals and the mask product stay fp32. Everything in bf16 gave mask IoU
  0.9907 against fp32 eager on the bench model; bf16 GEMMs alone 0.9934; this scope 0.9937 at ~1.5x the speed of
  bf16 GEMMs alone.
- ``precision="fp32"``: the model as eager runs it on the CPU, whose ``cpu`` backend already packs: the ViT's
  and the MLPs' GEMMs as MKL's sgemm on weights packed once (``F.linear`` packs the weight inside every call),
  the 1×1 and 2×2-transposed convolutions and the patch embedding as MKL GEMMs, the attention (ViT windows with
  their RoPE, the DETR's self-attention and box-biased cross-attention) as sam3lt's kernel; no mode around the
  calls (the packing mode in fp32 cost ~1.5% of a forward). The plan adds the allocator setting below. Outside the bf16 plan's scope the same holds
  in bf16 plans, with the mode: every ``F.linear`` packed, every convolution oneDNN's packed one (channels-last).
- fp32 3×3 convolutions (the FPN neck's, the pixel decoder's: ``Conv3x3`` modules) run as sam3lt's Winograd
  F(4×4, 3×3) (the ``cpu`` backend of :func:`sam3lt.ops.conv3x3`, as in eager), 2.5-3x oneDNN's direct one, at
  ~1e-5 of the output's scale; ``winograd=False`` runs them as oneDNN's. The neck's fp32 2×2 transposed
  convolutions run as a GEMM (``ops.conv_transpose2x2``'s cpu backend). The bf16 scope's convolutions run in
  bf16 (oneDNN).
  ``dtype=torch.float32`` asks for the model's own numbers: then nothing is packed.

bf16 is chosen only where the CPU computes bf16 dot products natively (:func:`choose_precision`): elsewhere oneDNN
emulates them and a bf16 GEMM is ~7x *slower* than fp32 (measured here under ``ONEDNN_MAX_CPU_ISA=AVX2``).

The packing is a :class:`~torch.overrides.TorchFunctionMode` entered around each call of the fast path, so no
model code changes: it sees every ``F.linear`` (``nn.Linear`` modules, fused q/k/v slices, stacked DETR key/value
projections, RepMixer MLPs), ``F.conv2d`` / ``F.conv_transpose2d`` and SDPA, and swaps in the packed weight,
found by the weight's address, shape and strides (the model is frozen after ``optimize``, as for CUDA graphs).
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
from .ops import _cpu
from .ops.linear import _INPLACE

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


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def _packed_convolutions() -> bool:
    """Whether this torch has oneDNN's packed convolutions (``torch.ops.mkldnn._convolution_pointwise``, the ops
    inductor's CPU backend runs convolutions with): torch built with oneDNN, on x86."""
    try:
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._convolution_pointwise.default
                    and torch.ops.mkldnn._reorder_convolution_weight.default)
    except (AttributeError, RuntimeError):
        return False


_PACKED_CONVOLUTIONS = _packed_convolutions()
_CONVOLUTIONS = (torch.conv2d, torch.conv_transpose2d)  # what nn.Conv2d / nn.ConvTranspose2d call (F.conv2d, ...)


def _check_winograd(winograd) -> None:
    if not isinstance(winograd, bool):
        raise ValueError(f"winograd: expected True or False, got {winograd!r}")


def _route_convolutions(model, bf16_modules: tuple[str, ...], winograd: bool) -> str:
    """Route the model's ``Conv1x1`` / ``Conv3x3`` / ``ConvTranspose2x2`` modules: those of the bf16 scope (and, with
    ``winograd=False``, every Conv3x3) to their eager reference (``F.conv2d`` / ``F.conv_transpose2d``, which the
    plan runs as oneDNN's packed convolutions, bf16 or fp32); the others keep ``auto`` (the ``cpu`` backend on
    fp32: Winograd, MKL GEMMs). Returns what the fp32 3×3 ones run, in words."""
    from .model.common import Conv3x3, OpConvolution

    for name, m in model.named_modules():
        if isinstance(m, OpConvolution):
            in_bf16 = any(name == s or name.startswith(s + ".") for s in bf16_modules)
            m.backend = "eager" if in_bf16 or (isinstance(m, Conv3x3) and not winograd) else None
    if not winograd:
        return "oneDNN (winograd=False)"
    if _cpu.IMPORT_ERROR is not None:
        return f"oneDNN ({_cpu.IMPORT_ERROR})"
    return "Winograd F(4×4, 3×3) (sam3lt._cpu)"


def _pair(v) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(i) for i in v]


def _conv_args(func, args, kwargs) -> tuple | None:
    """(x, weight, bias, stride, padding, output_padding, dilation) of a 2-D convolution call, or None for what
    the packed path does not take (grouped, string padding, not 4-D)."""
    names = (("input", "weight", "bias", "stride", "padding", "dilation", "groups") if func is torch.conv2d else
             ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation"))
    call = {**dict(zip(names, args)), **kwargs}
    x, w = call["input"], call["weight"]
    if call.get("groups", 1) != 1 or isinstance(call.get("padding", 0), str) or x.dim() != 4 or w.dim() != 4:
        return None
    return (x, w, call.get("bias"), _pair(call.get("stride", 1)), _pair(call.get("padding", 0)),
            _pair(call.get("output_padding", 0)), _pair(call.get("dilation", 1)))


class PackedGemms(TorchFunctionMode):
    """Runs the GEMMs (``F.linear``), convolutions and attention of CPU inference calls on weights packed once (see
    the module docstring): in bf16 where the plan says so, in fp32 elsewhere."""

    def __init__(self, precision: str, frozen, bf16=None, bf16_outputs=(), bf16_attention: bool = True,
                 activations=()):
        """frozen: the tensors whose weights may be packed (a model's parameters and buffers; a weight that is a
        view of one of them counts). Any other weight, computed in the forward, runs unpacked: its address may be
        reused by another tensor later, so it cannot key a cache.

        Under ``precision="bf16"`` only: ``bf16``: the frozen tensors whose GEMMs and convolutions run in bf16
        (None: all of them); the other frozen weights run packed fp32 GEMMs and convolutions.
        ``bf16_outputs``: weights whose op hands its bf16 output on (its consumers run in bf16 anyway: another
        bf16 GEMM or convolution, attention); every other op returns fp32. ``bf16_attention``: SDPA on fp32
        inputs runs in bf16 too (SDPA with a bf16 input runs in bf16 always). ``activations``: (weight, "gelu" |
        "relu") pairs of bf16 GEMMs whose caller applies that activation in place on the output right away
        (:func:`sam3lt.ops.linear`'s eager reference): the GEMM applies it to its fp32 accumulator (a oneDNN
        post-op) and hands on bf16, and the caller's in-place call is skipped. Any other use of that output
        before the activation raises RuntimeError (it never happens in the model)."""
        super().__init__()
        if precision not in ("bf16", "fp32"):
            raise ValueError(f"precision: expected 'bf16' or 'fp32', got {precision!r}")
        self.precision = precision
        self._storages = _storages(frozen)
        self._bf16_storages = set() if precision == "fp32" else set(self._storages) if bf16 is None else _storages(bf16)
        if not self._bf16_storages <= self._storages:
            raise ValueError("bf16: expected tensors among frozen (the model's parameters and buffers)")
        self._bf16_out = {t.data_ptr() for t in bf16_outputs} if precision == "bf16" else set()
        self.bf16_attention = precision == "bf16" and bool(bf16_attention)
        self._activation = {}
        for w, name in activations:
            if name not in _INPLACE:
                raise ValueError(f"activations: expected 'gelu' or 'relu', got {name!r}")
            if precision == "bf16" and self._in_bf16(w):
                self._activation[(w.data_ptr(), tuple(w.shape))] = name
        self._pending: tuple | None = None  # (output, in-place activation the GEMM already applied)
        self.fused = 0  # activations applied inside a GEMM (counted, for tests)
        self._packed: dict[tuple, tuple] = {}
        self.unpacked = 0  # F.linear calls that ran unpacked (counted, for tests and benchmarks)
        self.convolutions = _PACKED_CONVOLUTIONS  # oneDNN's packed convolutions; False: torch's own run them
        self._declined: list = []  # the decline() blocks of the entries in force

    def __enter__(self):
        # the GEMMs on frozen weights are this mode's: ops.linear's cpu backend (MKL on packed weights, as here)
        # steps aside for them, so that the bf16 scope runs in bf16 and every GEMM is counted here (a stack:
        # the same mode may be entered again inside itself)
        declined = _cpu.decline(lambda op, tensors: "sam3lt.cpu.PackedGemms runs it" if op == "linear" and any(
            t.untyped_storage().data_ptr() in self._storages for t in tensors[1:2]) else None)
        declined.__enter__()
        self._declined.append(declined)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._declined.pop().__exit__(*exc)

    def _in_bf16(self, w: torch.Tensor) -> bool:
        return w.untyped_storage().data_ptr() in self._bf16_storages

    def _out(self, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return y if y.dtype == torch.float32 or w.data_ptr() in self._bf16_out else y.float()

    def _key(self, w: torch.Tensor, rows: int) -> tuple:
        # MKL packs for one batch size (another runs the unpacked weight); oneDNN's blocked layout fits any
        bf16 = self._in_bf16(w)
        return (w.data_ptr(), tuple(w.shape), w.stride(), 0 if bf16 else rows, bf16)

    def pack(self, w: torch.Tensor, b: torch.Tensor | None, rows: int) -> tuple:
        key = self._key(w, rows)
        packed = self._packed.get(key)
        if packed is None:
            with torch.inference_mode(False), torch.no_grad():
                if self._in_bf16(w):
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
        if self._in_bf16(w):
            pw, pb = self.pack(w, b, rows)
            act = self._activation.get((w.data_ptr(), tuple(w.shape)))
            if act is None:
                return self._out(torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), pw, pb, "none", [], ""), w)
            y = torch.ops.mkldnn._linear_pointwise(x.to(torch.bfloat16), pw, pb, act, [], "none" if act == "gelu" else "")
            self._pending = (y, _INPLACE[act])
            return y
        pw, wc = self.pack(w, b, rows)
        return torch.ops.mkl._mkl_linear(x.float().contiguous(), pw, wc, b, rows)

    def convolution(self, func, x, w, b, stride, padding, output_padding, dilation) -> torch.Tensor:
        """A 2-D convolution (or transposed one) as oneDNN's packed convolution; its output is channels-last
        (NHWC in memory, the layout oneDNN runs fastest: the next convolution reads it without a reorder)."""
        dtype = torch.bfloat16 if self._in_bf16(w) else torch.float32
        key = ("conv", w.data_ptr(), tuple(w.shape), w.stride(), dtype, tuple(stride), tuple(padding),
               tuple(output_padding), tuple(dilation))
        packed = self._packed.get(key)
        if packed is None:
            with torch.inference_mode(False), torch.no_grad():
                wd = w.detach().to(dtype).contiguous()
                if func is torch.conv2d:
                    pw = torch.ops.mkldnn._reorder_convolution_weight(wd, padding, stride, dilation, 1, list(x.shape))
                else:
                    pw = torch.ops.mkldnn._reorder_convolution_transpose_weight(
                        wd, padding, output_padding, stride, dilation, 1, list(x.shape))
                packed = (pw, None if b is None else b.detach().to(dtype))
            self._packed[key] = packed
        pw, pb = packed
        x = x.to(dtype)
        if func is torch.conv2d:
            y = torch.ops.mkldnn._convolution_pointwise(x, pw, pb, padding, stride, dilation, 1, "none", [], "")
        else:
            y = torch.ops.mkldnn._convolution_transpose_pointwise(x, pw, pb, padding, output_padding, stride,
                                                                  dilation, 1, "none", [], "")
        return self._out(y, w)

    def _bf16(self, t: torch.Tensor) -> torch.Tensor:
        """A frozen tensor (a weight, a constant bias) converted once; anything else converted per call."""
        if t.untyped_storage().data_ptr() not in self._storages:
            return t.to(torch.bfloat16)
        key = ("bf16", t.data_ptr(), tuple(t.shape), t.stride())
        if key not in self._packed:
            with torch.inference_mode(False), torch.no_grad():
                self._packed[key] = (t.detach().to(torch.bfloat16),)
        return self._packed[key][0]

    def _ours(self, x: torch.Tensor, w: torch.Tensor) -> bool:
        """Whether a call on input x and weight w takes the packed path: CPU inference on a frozen weight."""
        return (x.device.type == "cpu" and w.dtype == torch.float32 and x.dtype in (torch.float32, torch.bfloat16)
                and (x.dtype == torch.float32 or self._in_bf16(w)) and x.numel() > 0
                and w.untyped_storage().data_ptr() in self._storages
                and not (torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)))

    def _take_pending(self, func, args) -> bool:
        """Whether this call is the in-place activation a GEMM already applied (see ``activations``)."""
        y, op = self._pending
        if func is op and args and args[0] is y:
            self._pending = None
            self.fused += 1
            return True
        if getattr(func, "__name__", "") != "__get__" and any(a is y for a in args):
            self._pending = None
            raise RuntimeError(f"sam3lt.cpu.PackedGemms: a GEMM output with its activation fused was used by {func} "
                               "before the activation call it stands for")
        return False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._pending is not None and self._take_pending(func, args):
            return args[0]
        if func is F.linear:
            x, w = args[0], args[1] if len(args) > 1 else kwargs["weight"]
            b = args[2] if len(args) > 2 else kwargs.get("bias")
            if x.dim() >= 2 and self._ours(x, w):
                return self.linear(x, w, b)
            self.unpacked += 1
        elif func in _CONVOLUTIONS and self.convolutions:
            call = _conv_args(func, args, kwargs)
            if call is not None and self._ours(call[0], call[1]):
                return self.convolution(func, *call)
        elif func is F.scaled_dot_product_attention and self.precision == "bf16" and not torch.is_grad_enabled():
            q = args[0]
            tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor) and a.is_floating_point()]
            if q.device.type == "cpu" and (self.bf16_attention or any(t.dtype == torch.bfloat16 for t in tensors)) \
                    and all(t.dtype in (torch.float32, torch.bfloat16) for t in tensors):
                cast = [self._bf16(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
                kw = {k: self._bf16(v) if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                      for k, v in kwargs.items()}
                return func(*cast, **kw).to(q.dtype)
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
    packed: bool = True  # False: dtype=torch.float32 asked for the model's own numbers (eager, nothing routed)
    bf16_modules: tuple[str, ...] = ()  # precision "bf16": the submodules whose GEMMs, convolutions, attention run in bf16
    winograd: str = ""  # what the fp32 3×3 convolutions run (Winograd, or oneDNN and why); "" before optimize

    def describe(self) -> str:
        fp32 = "fp32 GEMMs (MKL) and convolutions (oneDNN, channels-last) on packed weights"
        scope = (f"bf16 GEMMs and convolutions (oneDNN, packed weights) in {', '.join(self.bf16_modules)}, "
                 f"attention in bf16; elsewhere {fp32}") if self.bf16_modules else f"{fp32} (bf16 in no module)"
        gemms = {"bf16": scope,
                 "fp32": "fp32, sam3lt's CPU kernels as eager runs them (MKL GEMMs on packed weights, attention "
                         "with RoPE / box bias fused, GEMM 1×1 and 2×2-transposed convolutions)"}.get(self.precision, f"{self.precision} model")
        if self.precision == "fp32" and not self.packed:
            gemms = "fp32 as eager runs it (dtype=float32: the model's own numbers)"
        if self.winograd and self.precision in ("bf16", "fp32"):
            gemms += f"; fp32 3×3 convolutions: {self.winograd}"
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


def default_bf16_modules(model) -> tuple[str, ...]:
    """The submodules the bf16 plan runs in bf16 by default: the ViT layers, the FPN levels finer than the one the
    DETR reads, the text encoder and its projection, the DETR encoder and decoder, and the mask decoder's pixel
    decoder: nearly all of a forward's time.

    In fp32 stay the ops whose rounding costs the masks most for their time. Measured on the bench model
    (bench/cpu_optimize.py, mask IoU against fp32 eager, 336², 8 ViT layers): everything in bf16 0.9907; bf16
    GEMMs only (the previous plan) 0.9934; bf16 only in the mask decoder's GEMMs 0.9961, only in the patch
    embedding 0.9928 (with bf16 GEMMs elsewhere), only in the FPN level the DETR reads 0.9926. This scope (with
    :func:`bf16_scope`'s bf16 hand-offs and fused activations): 0.9937-0.9972 over 3 random models x 2 inputs,
    scores within 2.2e-4 (bf16 GEMMs everywhere: 0.9934-0.9969, 2.9e-4)."""
    levels = len(model.config.vision_config.scale_factors) - 1  # the coarsest is unused
    return ("vision_encoder.backbone.layers", *(f"vision_encoder.neck.fpn_layers.{i}" for i in range(levels - 1)),
            "text_encoder", "text_projection", "detr_encoder", "detr_decoder", "mask_decoder.pixel_decoder")


def _check_modules(model, modules) -> None:
    if isinstance(modules, str) or not all(isinstance(m, str) for m in modules):
        raise TypeError(f"bf16_modules: expected a sequence of submodule names, got {modules!r}")
    for name in modules:
        try:
            model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"bf16_modules: the model has no submodule {name!r}") from None


def bf16_scope(model, modules=None) -> tuple[list[torch.Tensor], list[torch.Tensor], list[tuple]]:
    """The bf16 plan's scope in ``model``: (the tensors whose GEMMs and convolutions run in bf16, the weights
    whose bf16 output goes on to the next op as it is, the (weight, activation) pairs whose activation the GEMM
    applies: the MLPs' fc1 and the ReLU MLPs' hidden layers, all called through :func:`sam3lt.ops.linear`).

    ``modules``: names of submodules (None: :func:`default_bf16_modules`). Every other GEMM and convolution runs packed
    fp32. Outputs kept in bf16: the ViT's fused q/k/v (its consumers, RoPE and attention, run in fp32 and bf16
    anyway), the MLPs' fc1 (its activation runs in bf16, then fc2 rounds its input to bf16 anyway) and every FPN
    convolution but a level's last one (the next one is a convolution or a GELU). Measured: no change of the
    bench model's mask IoU."""
    from .model.common import MLP, DecoderMLP
    from .model.vision import FPNLayer, ViTAttention

    modules = default_bf16_modules(model) if modules is None else modules
    _check_modules(model, modules)
    # the decoder's box-bias MLPs run in ops.box_bias (F.linear, F.relu out of place): outputs kept, no activation
    box_bias = {id(m) for m in model.modules() for m in (getattr(m, "box_rpb_embed_x", None),
                                                           getattr(m, "box_rpb_embed_y", None)) if m is not None}
    tensors, outputs, activations = [], [], []
    for name in modules:
        scope = model.get_submodule(name)
        tensors += [*scope.parameters(), *scope.buffers()]
        for module in scope.modules():
            if isinstance(module, ViTAttention):
                outputs.append(module.qkv.weight)
            elif isinstance(module, MLP):
                outputs.append(module.fc1.weight)
                if module.fused_act is not None:  # MLP.forward: ops.linear(..., activation=fused_act)
                    activations.append((module.fc1.weight, module.fused_act))
            elif isinstance(module, DecoderMLP):
                # DecoderMLP.forward: ops.linear(..., activation="relu") for the hidden layers; only the last one
                # hands bf16 on (ops.linear checks that x and the weight share a dtype; nn.Linear does not)
                last_hidden = module.layer1 if module.layer3 is None else module.layer2
                outputs.append(last_hidden.weight)
                if id(module) not in box_bias:
                    activations.append((last_hidden.weight, "relu"))
            elif isinstance(module, FPNLayer):
                convs = [m for m in (*module.scale_layers, module.proj1, module.proj2)
                         if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
                outputs += [m.weight for m in convs[:-1]]
    return tensors, outputs, activations


def optimize(model, *, precision: str = "auto", dtype: torch.dtype | None = None, threads: int | None = None,
             bf16_modules=None,
             compile: bool = False, keep_memory: bool = True, image_batches=(1,), prompt_buckets=(1, 4, 16, 64),
             seq_len: int = 32, copy_outputs: bool = True, tune: bool = False, winograd: bool = True):
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
        winograd: True: the fp32 3×3 convolutions (``Conv3x3``) keep sam3lt's Winograd F(4×4, 3×3) (the ``cpu``
            backend of ``sam3lt.ops.conv3x3``, as in eager: 2.5-3x oneDNN's direct convolution, error ~1e-5 of the
            output's scale); False: oneDNN's packed direct convolution (the eager reference's numbers).
    """
    _check_winograd(winograd)  # before prepare changes the model
    if bf16_modules is not None:
        _check_modules(model, bf16_modules)
    allocator = keep_freed_memory() if keep_memory else "malloc unchanged"
    if dtype is None or dtype == torch.float32:
        chosen = plan("fp32" if dtype == torch.float32 else precision, threads, compile, allocator)
        if dtype == torch.float32:  # the model's own numbers: eager as it is (its convolutions not rerouted)
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
    fast.gemms = None
    if model_dtype == torch.float32 and chosen.packed:
        if chosen.precision == "bf16":
            modules = default_bf16_modules(model) if bf16_modules is None else tuple(bf16_modules)
            scope = bf16_scope(model, modules)  # after prepare: folding makes new tensors
            fast.cpu_plan = chosen = dataclasses.replace(chosen, bf16_modules=modules)
            fast.gemms = PackedGemms("bf16", [*model.parameters(), *model.buffers()], *scope[:2],
                                     bf16_attention=bool(modules), activations=scope[2])
        # fp32: the cpu backend's kernels as eager runs them (MKL on packed weights, Winograd, GEMM convolutions),
        # without a mode around every torch call (PackedGemms in fp32 cost ~1.5% of a forward over eager)
        routed = _route_convolutions(model, chosen.bf16_modules, winograd)
        fast.cpu_plan = chosen = dataclasses.replace(chosen, winograd=routed)
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
