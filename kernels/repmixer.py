"""Depthwise 1×K token convolution + bias (+ residual) in one pass: the RepMixer token mixer of the text encoder.

Layout: x (B, L, C) channels last with any strides; each program owns BLOCK_R flattened (batch, token) rows ×
BLOCK_C channels of the output and reads the K shifted input tiles it needs (zero outside [0, L) of each row's own
sequence, i.e. the reference's "same" padding of K//2 on
each side). Maths in fp32, one rounding to the input dtype at the store.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import is_interpreted, launch, launch_reason, next_pow2

MAX_TAPS = 63  # taps are unrolled (tl.static_range); the model uses K = 11 (token mixer) and 3/7 (conv FFN)


@triton.jit
def _dwconv_kernel(x_ptr, w_ptr, b_ptr, out_ptr,
                   L, C, n_rows, n_cblk,
                   s_xb, s_xl, s_xc, s_wc, s_wk, s_b,
                   K: tl.constexpr, RESIDUAL: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # rows are the flattened (batch, token) pairs, so short prompts do not leave most of a tile idle
    pid = tl.program_id(0)
    pid_c = pid % n_cblk
    pid_r = pid // n_cblk
    rows = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    rmask = rows < n_rows
    cmask = offs_c < C
    tok = rows % L
    row_base = (rows // L).to(tl.int64) * s_xb

    bias = tl.load(b_ptr + offs_c * s_b, mask=cmask, other=0.0).to(tl.float32)
    acc = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32) + bias[None, :]
    for k in tl.static_range(K):
        src = tok + (k - K // 2)
        lmask = rmask & (src >= 0) & (src < L)
        xv = tl.load(x_ptr + (row_base + src * s_xl)[:, None] + offs_c[None, :] * s_xc,
                     mask=lmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        wk = tl.load(w_ptr + offs_c * s_wc + k * s_wk, mask=cmask, other=0.0).to(tl.float32)
        acc += xv * wk[None, :]

    omask = rmask[:, None] & cmask[None, :]
    if RESIDUAL:
        acc += tl.load(x_ptr + (row_base + tok * s_xl)[:, None] + offs_c[None, :] * s_xc,
                       mask=omask, other=0.0).to(tl.float32)
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * C + offs_c[None, :], acc.to(out_ptr.dtype.element_ty), mask=omask)


def repmixer_dwconv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, residual: bool) -> torch.Tensor:
    """``[x +] dwconv1d(x, weight, "same" zero padding) + bias`` for x (B, L, C) (any strides), weight (C, K) with
    K odd, bias (C,). Returns (B, L, C) contiguous in x's dtype. fp32 accumulation."""
    batch, length, channels = x.shape
    taps = weight.shape[-1]
    out = torch.empty((batch, length, channels), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    rows = batch * length
    if is_interpreted(_dwconv_kernel):  # few, large programs: the interpreter's cost is per program and op
        block_r, block_c, warps = min(next_pow2(rows), 512), min(next_pow2(channels), 128), 4
    else:  # untuned: B·L is 77 per prompt, C = 512 in the model; small tiles keep a few dozen programs busy
        block_r, block_c, warps = min(next_pow2(rows), 32), min(next_pow2(channels), 64), 4
    n_cblk = triton.cdiv(channels, block_c)
    grid = (triton.cdiv(rows, block_r) * n_cblk,)
    launch(_dwconv_kernel, grid, x, weight, bias, out,
           length, channels, rows, n_cblk,
           x.stride(0), x.stride(1), x.stride(2), weight.stride(0), weight.stride(-1), bias.stride(0),
           K=taps, RESIDUAL=bool(residual), BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps)
    return out


MAX_BLOCK_L = 128  # the fused block kernel holds a whole prompt (L ≤ 77 in the model) in one tile


@triton.jit
def _block_kernel(x_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, mixed_ptr, ffn_ptr,
                  L, C, n_cblk,
                  s_xb, s_xl, s_xc, s_w1c, s_w1k, s_b1, s_w2c, s_w2k, s_b2,
                  K1: tl.constexpr, K2: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_C: tl.constexpr):
    # one program = one prompt × BLOCK_C channels, all L tokens: the second convolution reads the first one's
    # output of neighbouring tokens, which this same program has just written (a barrier makes it visible)
    pid = tl.program_id(0)
    pid_c = pid % n_cblk
    b = pid // n_cblk
    tok = tl.arange(0, BLOCK_L)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    lmask = tok < L
    cmask = offs_c < C
    omask = lmask[:, None] & cmask[None, :]
    x_base = x_ptr + b.to(tl.int64) * s_xb
    out_offs = (b.to(tl.int64) * L + tok)[:, None] * C + offs_c[None, :]

    acc = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    acc += tl.load(b1_ptr + offs_c * s_b1, mask=cmask, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K1):
        src = tok + (k - K1 // 2)
        m = (src >= 0) & (src < L)
        xv = tl.load(x_base + src[:, None] * s_xl + offs_c[None, :] * s_xc,
                     mask=m[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        acc += xv * tl.load(w1_ptr + offs_c * s_w1c + k * s_w1k, mask=cmask, other=0.0).to(tl.float32)[None, :]
    acc += tl.load(x_base + tok[:, None] * s_xl + offs_c[None, :] * s_xc, mask=omask, other=0.0).to(tl.float32)
    tl.store(mixed_ptr + out_offs, acc.to(mixed_ptr.dtype.element_ty), mask=omask)
    tl.debug_barrier()  # the stores above are read back, shifted, by other threads of this program

    acc2 = tl.zeros((BLOCK_L, BLOCK_C), dtype=tl.float32)
    acc2 += tl.load(b2_ptr + offs_c * s_b2, mask=cmask, other=0.0).to(tl.float32)[None, :]
    mixed_base = mixed_ptr + b.to(tl.int64) * L * C
    for k in tl.static_range(K2):
        src = tok + (k - K2 // 2)
        m = (src >= 0) & (src < L)
        mv = tl.load(mixed_base + src[:, None] * C + offs_c[None, :],
                     mask=m[:, None] & cmask[None, :], other=0.0).to(tl.float32)
        acc2 += mv * tl.load(w2_ptr + offs_c * s_w2c + k * s_w2k, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(ffn_ptr + out_offs, acc2.to(ffn_ptr.dtype.element_ty), mask=omask)


def repmixer_block_dwconv(x: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                          b2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-mixer conv (+ residual) and the conv FFN's depthwise conv of one RepMixer block in one launch:
    ``mixed = x + dwconv(x, w1) + b1``, ``ffn_in = dwconv(mixed, w2) + b2`` (mixed rounded to x's dtype first,
    as the reference). x (B, L, C) any strides with L ≤ MAX_BLOCK_L; returns two contiguous (B, L, C) tensors."""
    batch, length, channels = x.shape
    mixed = torch.empty((batch, length, channels), device=x.device, dtype=x.dtype)
    ffn_in = torch.empty_like(mixed)
    if mixed.numel() == 0:
        return mixed, ffn_in
    block_l = next_pow2(length)
    if is_interpreted(_block_kernel):
        block_c = min(next_pow2(channels), 128)
    else:  # untuned: a (≤128)×32 fp32 tile per program; C = 512 gives 16 programs per prompt
        block_c = min(next_pow2(channels), 32)
    n_cblk = triton.cdiv(channels, block_c)
    launch(_block_kernel, (batch * n_cblk,), x, w1, b1, w2, b2, mixed, ffn_in,
           length, channels, n_cblk,
           x.stride(0), x.stride(1), x.stride(2), w1.stride(0), w1.stride(-1), b1.stride(0),
           w2.stride(0), w2.stride(-1), b2.stride(0),
           K1=w1.shape[-1], K2=w2.shape[-1], BLOCK_L=block_l, BLOCK_C=block_c, num_warps=4)
    return mixed, ffn_in


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_repmixer_dwconv(x, weight, bias, residual=True) -> str | None:
    if weight.shape[1] > MAX_TAPS:
        return f"kernel size {weight.shape[1]} > {MAX_TAPS} (taps are unrolled)"
    return launch_reason((x, weight, bias), x.numel())


def supports_repmixer_block_dwconv(x, w1, b1, w2, b2) -> str | None:
    reason = supports_repmixer_dwconv(x, w1, b1) or supports_repmixer_dwconv(x, w2, b2)
    if reason is None and x.shape[1] > MAX_BLOCK_L:
        reason = f"prompt length {x.shape[1]} > {MAX_BLOCK_L} (one tile holds a whole prompt)"
    return reason
