"""The ViT's 2-D axial RoPE applied once to the q and k parts of a fused QKV tensor (``rope_qkv``).

"Rotate each key once per layer" (issue 13): this op rotates each token once and leaves an attention kernel (or
SDPA) nothing to do but attend; the Triton window_attention runs the same kernel on the token grid
(``kernels/rope.py``: ``rope_qk_grid``) before its attention kernel. The maths is window_attention's RoPE
(:func:`sam3lt.ops.window_attention.apply_rope`), on the token sequences window_attention_reference attends over.
"""
from __future__ import annotations

import torch

from . import _checks, _cuda, _triton
from ._backend import define, dispatch, register
from .window_attention import apply_rope


def check_args(qkv, cos, sin, num_heads) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`rope_qkv`."""
    op = "rope_qkv"
    _checks.floating(op, "qkv", qkv)
    _checks.floating(op, "cos", cos)
    _checks.floating(op, "sin", sin)
    _checks.integer(op, "num_heads", num_heads, 1)
    if qkv.dim() != 3:
        raise ValueError(f"{op}: qkv must be (N, T, 3·C) token sequences, got {tuple(qkv.shape)}")
    tokens, three_c = qkv.shape[1], qkv.shape[2]
    if three_c % (3 * num_heads) != 0:
        raise ValueError(f"{op}: qkv channels {three_c} are not 3 × num_heads ({num_heads}) × head_dim")
    head_dim = three_c // (3 * num_heads)
    if head_dim % 2:
        raise ValueError(f"{op}: num_heads {num_heads} gives an odd head_dim {head_dim} (RoPE rotates pairs)")
    for name, table in (("cos", cos), ("sin", sin)):
        if tuple(table.shape) != (tokens, head_dim):
            raise ValueError(f"{op}: {name} must be (T, head_dim) = ({tokens}, {head_dim}), got {tuple(table.shape)}")
    _checks.same_device(op, (("qkv", qkv), ("cos", cos), ("sin", sin)))


def rope_qkv_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Eager reference (the spec): window_attention_reference's ``apply_rope`` on q and k, v unchanged. See
    :func:`rope_qkv`."""
    q, k, v = qkv.unflatten(-1, (3, num_heads, -1)).unbind(2)  # each (N, T, heads, D)
    cos, sin = cos[:, None], sin[:, None]  # (T, 1, D): one table row per token, shared by the heads
    return torch.stack((apply_rope(q, cos, sin), apply_rope(k, cos, sin), v), dim=2).flatten(2)


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
             backend: str | None = None) -> torch.Tensor:
    """Rotate the q and k heads of fused QKV token sequences with RoPE; v is copied unchanged.

    Defined on token sequences, as window_attention_reference attends: for global attention the
    (B, H, W, 3·C) grid viewed as (B, H·W, 3·C) (a free view) with the global tables; for windowed attention the
    partitioned windows (N = B·windows, T = window_size², padded tokens already holding ``pad_value``) with the
    window tables. For each token t, head h of q and of k, channel pair (e, o) = (2i, 2i + 1), in fp32:

        out_e = x_e·cos[t, e] − x_o·sin[t, e],    out_o = x_o·cos[t, o] + x_e·sin[t, o]

    rounded once to qkv's dtype (HF ``apply_rotary_pos_emb_2d``; ``sam3lt.model.vision.rope_tables`` builds the
    tables).

    Args:
        qkv: (N, T, 3·C) channels [q | k | v], each C = num_heads·D head-major, D even; fp32/fp16/bf16, any
            strides.
        cos, sin: (T, D) RoPE tables (fp32 in the model), one row per token of the sequence.
        num_heads: heads per q / k / v.
    Returns:
        (N, T, 3·C) contiguous, qkv's dtype: rotated q, rotated k, v.
    """
    check_args(qkv, cos, sin, num_heads)
    return dispatch("rope_qkv", backend, qkv, cos, sin, num_heads)


define("rope_qkv", check_args)
register("rope_qkv", "eager", rope_qkv_reference)
register("rope_qkv", "triton", *_triton.backend("rope_qkv", "rope"))  # kernels/rope.py: rope_qkv, supports_rope_qkv
register("rope_qkv", "cuda", *_cuda.torch_backend(rope_qkv_reference), auto=False)  # no CUDA kernel yet
