"""Residual add fused with the following LayerNorm: ``s = x + residual``, ``normed = layer_norm(s) · w + b``.

Layout: rows are all leading dims flattened; each program owns BLOCK_R rows × the whole channel dim (BLOCK_C =
next_pow2(C) ≥ C, masked), so mean and variance are one in-register reduction per row. The sum is rounded to the
input dtype and stored, and the statistics are taken from that *rounded* sum (fp32), because the reference
layer-norms the stored sum. Biased variance from the centred values (two-pass in registers, as torch's), one
rounding of the output at the store.

Strides: the launcher views each input as (rows, C) with ``reshape`` (a view whenever the leading dims collapse
to one row stride, e.g. channels sliced out of a wider tensor; a copy otherwise) and passes the row and column
strides to the kernel. Outputs are contiguous, of x's shape and dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import is_interpreted, launch, launch_reason, next_pow2

MAX_CHANNELS = 8192  # one row lives in registers (ViT 1024, DETR 256)


@triton.jit
def _add_ln_kernel(x_ptr, r_ptr, w_ptr, b_ptr, sum_ptr, out_ptr, n_rows, C, eps,
                   s_xr, s_xc, s_rr, s_rc, s_w, s_b,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.arange(0, BLOCK_C)
    rmask = rows < n_rows
    cmask = cols < C
    mask = rmask[:, None] & cmask[None, :]
    rows64 = rows.to(tl.int64)
    x = tl.load(x_ptr + rows64[:, None] * s_xr + cols[None, :] * s_xc, mask=mask, other=0.0).to(tl.float32)
    r = tl.load(r_ptr + rows64[:, None] * s_rr + cols[None, :] * s_rc, mask=mask, other=0.0).to(tl.float32)
    # fp32 add of two values of the input dtype, rounded once: torch's own x + residual
    s = (x + r).to(sum_ptr.dtype.element_ty)
    dst = rows64[:, None] * C + cols[None, :]
    tl.store(sum_ptr + dst, s, mask=mask)
    s = s.to(tl.float32)
    mean = tl.sum(s, axis=1) / C
    d = tl.where(mask, s - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(d * d, axis=1) / C + eps)
    w = tl.load(w_ptr + cols * s_w, mask=cmask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + cols * s_b, mask=cmask, other=0.0).to(tl.float32)
    y = d * rstd[:, None] * w[None, :] + b[None, :]
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=mask)


def _config(rows: int, channels: int, interpreted: bool) -> tuple[int, int, int]:
    block_c = next_pow2(channels)
    # GPU (untuned): ~4K elements per program, 4 rows of C = 1024 (ViT), 16 of C = 256 (DETR), 4 warps;
    # interpreter: large tiles, few programs
    per_program = 65536 if interpreted else 4096
    block_r = max(1, min(per_program // block_c, next_pow2(rows)))
    return block_r, block_c, 4 if block_r * block_c <= 4096 else 8


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Launcher. x, residual (..., C) of one dtype, any strides; weight, bias (C,). Returns (sum, normed), both
    contiguous of x's shape and dtype; fp32 statistics."""
    channels = x.shape[-1]
    out_sum = torch.empty(x.shape, device=x.device, dtype=x.dtype)
    out = torch.empty_like(out_sum)
    if out.numel() == 0:
        return out_sum, out
    x2, r2 = x.reshape(-1, channels), residual.reshape(-1, channels)
    rows = x2.shape[0]
    block_r, block_c, warps = _config(rows, channels, is_interpreted(_add_ln_kernel))
    launch(_add_ln_kernel, (triton.cdiv(rows, block_r),), x2, r2, weight, bias, out_sum, out, rows, channels,
           float(eps), *x2.stride(), *r2.stride(), weight.stride(0), bias.stride(0),
           BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps)
    return out_sum, out


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_add_layer_norm(x, residual, weight, bias, eps=1e-5) -> str | None:
    if x.shape[-1] > MAX_CHANNELS:
        return f"{x.shape[-1]} channels > {MAX_CHANNELS} (a row is normalised in registers)"
    if weight.dtype not in (x.dtype, torch.float32):
        return f"weight dtype {weight.dtype} is neither x's ({x.dtype}) nor float32"
    return launch_reason((x, residual, weight, bias))  # rows are indexed in int64: no output limit
