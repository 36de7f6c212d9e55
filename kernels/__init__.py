"""Triton kernels behind ``sam3lt.ops`` (installed as ``sam3lt.kernels``).

One module per op family, each with ``@triton.jit`` kernels and plain-Python launchers that take and return
torch tensors (they allocate the output, pick the block sizes and launch through :func:`._utils.launch`, which
goes through ``torch.library.wrap_triton`` so that the ``sam3lt::`` custom ops stay traceable):

- :mod:`.repmixer`: depthwise 1×K token convolution + bias + residual (text encoder).
- :mod:`.window_attention`: windowed / global ViT self-attention with in-kernel 2-D RoPE and padding.
- :mod:`.box_attention`: flash attention with the separable box bias or a key-padding mask (DETR heads).
- :mod:`.upsample`: nearest upsample + add, the mask-product GEMM, bilinear-sigmoid-threshold to bool.
- :mod:`.layer_norm`: residual add fused with the following LayerNorm (ViT blocks).
- :mod:`.linear`: GEMM with a fused bias / GELU / ReLU / residual epilogue (MLPs).
- :mod:`.box_bias`: the DETR decoder's box relative-position bias (log deltas + 2-layer MLP), both axes.
- :mod:`.box_refine`: the DETR decoder's reference-box update (sigmoid of delta + inverse sigmoid) + box sine encoding.

This package itself is importable without Triton; only the submodules import it. The ops register them as
the ``triton`` backend in :mod:`sam3lt.ops._triton`.

Triton's interpreter (``TRITON_INTERPRET=1``, numpy on the CPU) is chosen when ``triton`` is *imported*
(its own library functions such as ``tl.sum`` are decorated then), so the variable has to be set before the
first ``import triton`` of the process; :func:`kernels_interpreted` tells which way the kernels were built.
"""
from __future__ import annotations

import importlib.util
import os

FAMILIES = ("repmixer", "window_attention", "box_attention", "upsample", "linear", "layer_norm", "box_bias",
            "box_refine")


def triton_missing() -> str | None:
    """None when Triton can be imported, else why not."""
    try:
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed"
    except (ImportError, ValueError) as exc:  # pragma: no cover
        return f"triton cannot be imported ({exc})"
    return None


def interpret_requested() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set now (read at every call)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def kernels_interpreted() -> bool:
    """True when the kernels were built for the interpreter (imports the kernel modules)."""
    from . import repmixer
    from ._utils import is_interpreted

    return is_interpreted(repmixer._dwconv_kernel)
