"""Attention for the DETR heads: cross-attention with the separable box relative-position bias, and
multi-head attention with an optional key-padding mask (text cross-attention, self-attention)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks, _cpu, _cuda, _triton, _tuning
from ._backend import define, dispatch, register


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * dim)


def box_bias_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_y: torch.Tensor,
                                 bias_x: torch.Tensor) -> torch.Tensor:
    """Eager reference (the spec): materialises the (B, heads, Lq, Hg·Wg) bias. See :func:`box_bias_attention`.

    The bias is written contiguous (the same values): the sum of the box MLPs' permuted outputs otherwise takes
    their heads-innermost layout, which SDPA copies (~0.7 ms per layer on 2 CPU cores at 336²)."""
    y, x = bias_y.unsqueeze(-1), bias_x.unsqueeze(-2)
    if y.dtype != x.dtype or torch.compiler.is_compiling():  # the compiler picks the layout itself
        bias = y + x
    else:
        bias = torch.add(y, x, out=torch.empty(torch.broadcast_shapes(y.shape, x.shape), dtype=y.dtype,
                                               device=y.device))
    bias = bias.flatten(-2).to(q.dtype)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))


def _check_qkv(op, q, k, v) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.floating(op, name, t)
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{op}: expects q, k, v of shape (B, heads, L, D)")
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{op}: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{op}: q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})")


def check_box_bias_attention(q, k, v, bias_y, bias_x) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`box_bias_attention`."""
    op = "box_bias_attention"
    _check_qkv(op, q, k, v)
    _checks.floating(op, "bias_y", bias_y)
    _checks.floating(op, "bias_x", bias_x)
    if bias_y.dim() != 4 or bias_x.dim() != 4:
        raise ValueError(f"{op}: expects bias_y (B, heads, Lq, Hg) and bias_x (B, heads, Lq, Wg)")
    if bias_y.shape[:3] != q.shape[:3] or bias_x.shape[:3] != q.shape[:3]:
        raise ValueError(f"{op}: bias_y / bias_x leading dims must be (B, heads, Lq) = {tuple(q.shape[:3])}")
    if bias_y.shape[-1] * bias_x.shape[-1] != k.shape[2]:
        raise ValueError(f"{op}: keys ({k.shape[2]}) != Hg·Wg ({bias_y.shape[-1]}·{bias_x.shape[-1]})")
    _checks.same_device(op, (("q", q), ("k", k), ("v", v), ("bias_y", bias_y), ("bias_x", bias_x)))


def check_masked_attention(q, k, v, key_padding_mask=None) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`masked_attention`."""
    op = "masked_attention"
    _check_qkv(op, q, k, v)
    if key_padding_mask is not None:
        _checks.tensor(op, "key_padding_mask", key_padding_mask)
        if tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
            raise ValueError(f"{op}: key_padding_mask must be (B, Lk) = ({k.shape[0]}, {k.shape[2]}), "
                             f"got {tuple(key_padding_mask.shape)}")
        if key_padding_mask.dtype.is_complex:
            raise TypeError(f"{op}: unsupported key_padding_mask dtype {key_padding_mask.dtype}")
    _checks.same_device(op, (("q", q), ("k", k), ("v", v), ("key_padding_mask", key_padding_mask)))


def box_bias_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_y: torch.Tensor, bias_x: torch.Tensor,
                       backend: str | None = None) -> torch.Tensor:
    """Cross-attention of queries over an Hg×Wg token grid with an additive separable bias.

    ``softmax(q·kᵀ·D^-½ + bias) · v`` with ``bias[b, h, i, y·Wg + x] = bias_y[b, h, i, y] + bias_x[b, h, i, x]``.

    Args:
        q: (B, heads, Lq, D); k, v: (B, heads, Hg·Wg, D) (any strides; fp32/fp16/bf16).
        bias_y: (B, heads, Lq, Hg); bias_x: (B, heads, Lq, Wg) (any float dtype).
    Returns:
        (B, Lq, heads·D), heads merged, dtype of ``q``.
    """
    check_box_bias_attention(q, k, v, bias_y, bias_x)
    return dispatch("box_bias_attention", backend, q, k, v, bias_y, bias_x)


def masked_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                               key_padding_mask: torch.Tensor | None) -> torch.Tensor:
    """Eager reference (the spec). See :func:`masked_attention`."""
    mask = None if key_padding_mask is None else key_padding_mask[:, None, None, :].to(torch.bool)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


def masked_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None,
                     backend: str | None = None) -> torch.Tensor:
    """Multi-head attention with an optional key-padding mask.

    Args:
        q: (B, heads, Lq, D); k, v: (B, heads, Lk, D).
        key_padding_mask: (B, Lk), True/nonzero = valid key, or None (all valid). A batch entry with no valid
            key gives zeros: the reference's torch SDPA does so on the CPU (its math backend; other SDPA
            backends may give NaN), and the Triton kernel matches the CPU reference.
    Returns:
        (B, Lq, heads·D), heads merged, dtype of ``q``.
    """
    check_masked_attention(q, k, v, key_padding_mask)
    return dispatch("masked_attention", backend, q, k, v, key_padding_mask)


def _cuda_limits(q, k, tensors):
    return (_cuda.head_dim_reason(q.shape[-1]) or _cuda.launch_reason(tensors)
            or _cuda.fits_int32(q.shape[2], k.shape[2], q.shape[0] * q.shape[1]))


def _cuda_box_bias_attention(q, k, v, bias_y, bias_x):
    if bias_y.dtype != bias_x.dtype:
        return f"bias_y and bias_x dtypes differ ({bias_y.dtype}, {bias_x.dtype})"
    return _cuda_limits(q, k, (q, k, v, bias_y, bias_x))


def box_bias_attention_cpu(q, k, v, bias_y, bias_x):
    """The ``cpu`` backend: sam3lt's CPU attention kernel, the bias added per key from its two factors."""
    return _cpu.attention(q, k, v, bias_y=bias_y, bias_x=bias_x).flatten(2)


def masked_attention_cpu(q, k, v, key_padding_mask=None):
    """The ``cpu`` backend: sam3lt's CPU attention kernel (masked keys at -inf; none valid: zeros)."""
    mask = None if key_padding_mask is None else key_padding_mask.to(torch.bool)
    return _cpu.attention(q, k, v, key_mask=mask).flatten(2)


define("box_bias_attention", check_box_bias_attention)
register("box_bias_attention", "eager", box_bias_attention_reference)
register("box_bias_attention", "triton", *_triton.backend("box_bias_attention", "cross_attention"))
register("box_bias_attention", "cuda", *_cuda.backend("box_bias_attention", _cuda_box_bias_attention))
register("box_bias_attention", "cpu", box_bias_attention_cpu, lambda q, k, v, bias_y, bias_x: _cpu.attention_reason(
    "box_bias_attention", (q, k, v, bias_y, bias_x)))
define("masked_attention", check_masked_attention)
register("masked_attention", "eager", masked_attention_reference)
register("masked_attention", "triton", *_triton.backend("masked_attention", "cross_attention"))
register("masked_attention", "cuda", *_cuda.backend(
    "masked_attention", lambda q, k, v, key_padding_mask=None: _cuda_limits(q, k, (q, k, v))))
register("masked_attention", "cpu", masked_attention_cpu, lambda q, k, v, key_padding_mask=None: _cpu.attention_reason(
    "masked_attention", (q, k, v)))
for _op in ("box_bias_attention", "masked_attention"):
    _tuning.CPU_EVIDENCE[_op] = lambda args, op=_op: _cpu.attention_evidence(op, args[1].shape[2])
