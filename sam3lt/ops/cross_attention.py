"""Attention for the DETR heads: cross-attention with the separable box relative-position bias, and
multi-head attention with an optional key-padding mask (text cross-attention, self-attention)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import dispatch


def _merge_heads(out: torch.Tensor) -> torch.Tensor:
    batch, heads, length, dim = out.shape
    return out.transpose(1, 2).reshape(batch, length, heads * dim)


def box_bias_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias_y: torch.Tensor,
                                 bias_x: torch.Tensor) -> torch.Tensor:
    """Eager reference (the spec): materialises the (B, heads, Lq, Hg·Wg) bias. See :func:`box_bias_attention`."""
    bias = (bias_y.unsqueeze(-1) + bias_x.unsqueeze(-2)).flatten(-2).to(q.dtype)
    return _merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=bias))


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
    return dispatch("masked_attention", backend, q, k, v, key_padding_mask)
