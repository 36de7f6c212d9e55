"""Shared helpers of the kernel modules (imports triton)."""
from __future__ import annotations

import torch
import triton

from . import float_tensors_on_one_device, interpret_requested

try:  # the interpreter's kernel type (TRITON_INTERPRET=1 makes @triton.jit return one)
    from triton.runtime.interpreter import InterpretedFunction as _InterpretedFunction
except ImportError:  # pragma: no cover
    _InterpretedFunction = ()

try:
    from torch._subclasses.fake_tensor import is_fake as _is_fake
except ImportError:  # pragma: no cover
    def _is_fake(t):
        return t.device.type == "meta"


def is_interpreted(kernel) -> bool:
    return bool(_InterpretedFunction) and isinstance(kernel, _InterpretedFunction)


@triton.jit
def _probe():
    pass


INTERPRETED = is_interpreted(_probe)  # the kernels were built for the interpreter (TRITON_INTERPRET=1 at import)
INT32_LIMIT = 2**31 - 1


def _max_offset(t: torch.Tensor) -> int:
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)


def launch_reason(tensors, out_numel: int = 0) -> str | None:
    """What every launcher needs: fp32/fp16/bf16 tensors on one device the kernels run on (CUDA, or the CPU in
    the interpreter, which has no bf16) and int32 offsets (``out_numel``: the output's element count)."""
    tensors = [t for t in tensors if t is not None]
    reason = float_tensors_on_one_device(tensors)
    if reason is not None:
        return reason
    device = tensors[0].device
    if device.type == "cpu":
        if not interpret_requested():
            return "inputs are on the CPU; the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"
        if not INTERPRETED:
            return ("TRITON_INTERPRET=1 was set after triton was imported; set it before the first import of "
                    "triton to run the kernels in the interpreter")
    elif device.type != "cuda":
        return f"inputs are on {device.type}; the Triton kernels need CUDA tensors"
    for t in tensors:
        if INTERPRETED and t.dtype == torch.bfloat16:
            return "bfloat16 is not supported by the Triton interpreter"
        if _max_offset(t) > INT32_LIMIT:
            return "a tensor spans more than 2**31 elements (the kernels index with int32)"
    if out_numel > INT32_LIMIT:
        return "the output has more than 2**31 elements (the kernels index with int32)"
    return None


try:
    from torch.utils._python_dispatch import _get_current_dispatch_mode as _current_dispatch_mode
except ImportError:  # pragma: no cover
    def _current_dispatch_mode():
        return True  # unknown: assume tracing


def plain_tensors(args) -> bool:
    """True when nothing traces these arguments: not under torch.compile, no torch_dispatch mode active, and
    every tensor a plain ``torch.Tensor`` (no fake / functional / proxy / subclass tensors)."""
    if torch.compiler.is_compiling() or _current_dispatch_mode() is not None:
        return False
    return all(type(a) is torch.Tensor for a in args if isinstance(a, torch.Tensor))


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch ``kernel[grid](*args, **kwargs)``.

    On plain tensors the kernel is launched directly. Otherwise (make_fx / torch.compile tracing a
    ``torch.library.triton_op`` body) a compiled kernel goes through ``torch.library.wrap_triton`` so that the
    launch is recorded; an interpreted kernel is skipped on fake tensors (the interpreter reads memory), which
    makes the op body its own fake implementation.
    """
    if plain_tensors(args):
        kernel[grid](*args, **kwargs)
    elif is_interpreted(kernel):
        if not any(isinstance(a, torch.Tensor) and _is_fake(a) for a in args):
            kernel[grid](*args, **kwargs)
    else:
        torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision for fp32 operands: follow torch's matmul setting (TF32 only when allowed)."""
    if dtype != torch.float32:
        return "ieee"  # ignored for 16-bit operands
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))
