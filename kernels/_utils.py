"""Shared helpers of the kernel modules (imports triton)."""
from __future__ import annotations

import torch
import triton

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


def launch(kernel, grid, *args, **kwargs) -> None:
    """Launch ``kernel[grid](*args, **kwargs)``.

    Compiled kernels go through ``torch.library.wrap_triton`` so that, inside a ``torch.library.triton_op``,
    make_fx / torch.compile record the launch (on real tensors inside the op this is the bare kernel).
    Interpreted kernels run directly on real tensors and are skipped on fake ones (the interpreter reads
    memory), which makes the op's fake implementation the launcher itself.
    """
    if is_interpreted(kernel):
        if any(isinstance(a, torch.Tensor) and _is_fake(a) for a in args):
            return
        kernel[grid](*args, **kwargs)
        return
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision for fp32 operands: follow torch's matmul setting (TF32 only when allowed)."""
    if dtype != torch.float32:
        return "ieee"  # ignored for 16-bit operands
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(max(int(n), 1))
