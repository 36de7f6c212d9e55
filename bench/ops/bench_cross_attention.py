"""DETR attention: ``sam3lt.ops.box_bias_attention`` (decoder image cross-attention, 200 queries + presence
token over the 72×72 = 5184-token grid, 8 heads of 32, with the separable log-scale box bias) and
``sam3lt.ops.masked_attention`` (encoder self-attention 5184², encoder→prompt cross-attention with a
key-padding mask, decoder self-attention 201²).

Baselines do only the attention core on the same q, k, v: bare SDPA (for the box bias: with the dense
(B, heads, Lq, Lk) bias materialised once outside the timing, and without any bias), and xformers where it
imports and runs (dense bias, or no mask).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._case import Baseline, Case, nbytes, randn

HEADS, HEAD_DIM = 8, 32
# size class -> (grid side, queries incl. the presence token, prompt tokens)
SIZES = {"full": (72, 201, 32), "cpu": (24, 201, 32), "tiny": (16, 21, 32)}  # cpu: the 336² model


def _box_make(grid, queries):
    def make(device, dtype, gen):
        q = randn(gen, 1, HEADS, queries, HEAD_DIM, device=device, dtype=dtype)
        k = randn(gen, 1, HEADS, grid * grid, HEAD_DIM, device=device, dtype=dtype)
        v = randn(gen, 1, HEADS, grid * grid, HEAD_DIM, device=device, dtype=dtype)
        bias_y = randn(gen, 1, HEADS, queries, grid, device=device, dtype=dtype)
        bias_x = randn(gen, 1, HEADS, queries, grid, device=device, dtype=dtype)
        return q, k, v, bias_y, bias_x
    return make


def _masked_make(lq, lk, valid: int | None):
    def make(device, dtype, gen):
        q = randn(gen, 1, HEADS, lq, HEAD_DIM, device=device, dtype=dtype)
        k = randn(gen, 1, HEADS, lk, HEAD_DIM, device=device, dtype=dtype)
        v = randn(gen, 1, HEADS, lk, HEAD_DIM, device=device, dtype=dtype)
        mask = None
        if valid is not None:
            mask = torch.zeros(1, lk, dtype=torch.bool, device=device)
            mask[:, :valid] = True
        return q, k, v, mask
    return make


def _attn_flops(args):
    q, k = args[0], args[1]
    return 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]


def _attn_bytes(args):
    q = args[0]
    return nbytes(*args) + nbytes(q)  # inputs + output (same size as q)


def _dense_bias(args):
    q, k, v, bias_y, bias_x = args
    return (bias_y.unsqueeze(-1) + bias_x.unsqueeze(-2)).flatten(-2).to(q.dtype).contiguous()


def _sdpa_dense(args):
    q, k, v = args[:3]
    return (lambda q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b)), (q, k, v, _dense_bias(args))


def _sdpa_nobias(args):
    return F.scaled_dot_product_attention, tuple(args[:3])


def _bmhk(*tensors):
    return tuple(t.transpose(1, 2).contiguous() for t in tensors)


def _xformers_dense(args):
    import xformers.ops as xops
    q, k, v = _bmhk(*args[:3])
    bias = _dense_bias(args)
    return (lambda q, k, v, b: xops.memory_efficient_attention(q, k, v, attn_bias=b)), (q, k, v, bias)


def _sdpa_masked(args):
    q, k, v, mask = args
    attn_mask = None if mask is None else mask[:, None, None, :]
    return (lambda q, k, v, m: F.scaled_dot_product_attention(q, k, v, attn_mask=m)), (q, k, v, attn_mask)


def _xformers_plain(args):
    import xformers.ops as xops
    return xops.memory_efficient_attention, _bmhk(*args[:3])


BOX_BASELINES = [
    Baseline("sdpa+dense bias", _sdpa_dense, "SDPA with the (B, heads, Lq, Lk) bias materialised beforehand"),
    Baseline("sdpa (no bias)", _sdpa_nobias, "SDPA without the bias: the floor for this shape"),
    Baseline("xformers+dense bias", _xformers_dense, "xformers memory_efficient_attention with a dense bias"),
]
MASKED_BASELINES = [Baseline("sdpa", _sdpa_masked, "bare SDPA with the same boolean key mask")]
PLAIN_BASELINES = MASKED_BASELINES + [Baseline("xformers", _xformers_plain, "xformers memory_efficient_attention")]


def cases(size: str) -> list[Case]:
    grid, queries, prompt = SIZES[size]
    keys = grid * grid
    heads = f"{HEADS}×d{HEAD_DIM}"
    return [
        Case("cross_attention", "box_bias_attention", "DETR decoder image cross-attention (box bias)",
             f"{queries} queries × {keys} keys ({grid}×{grid}), {heads}, bias {grid}+{grid}",
             _box_make(grid, queries), _attn_flops, _attn_bytes, BOX_BASELINES),
        Case("cross_attention", "masked_attention", "DETR encoder self-attention",
             f"{keys} × {keys}, {heads}, no mask", _masked_make(keys, keys, None), _attn_flops, _attn_bytes,
             PLAIN_BASELINES),
        Case("cross_attention", "masked_attention", "DETR encoder → prompt cross-attention",
             f"{keys} × {prompt} keys (8 valid), {heads}", _masked_make(keys, prompt, 8), _attn_flops,
             _attn_bytes, MASKED_BASELINES),
        Case("cross_attention", "masked_attention", "DETR decoder self-attention",
             f"{queries} × {queries}, {heads}, no mask", _masked_make(queries, queries, None), _attn_flops,
             _attn_bytes, PLAIN_BASELINES, quick=False),
    ]
