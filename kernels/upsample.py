"""Mask-path kernels: nearest upsample + skip add, the mask-product GEMM, and sigmoid → bilinear → threshold to bool.

Index maths follows torch's kernels exactly (fp32 scales ``in / out``):

- nearest: ``src = min(floor(dst · (in/out)), in − 1)``;
- bilinear, ``align_corners=False``: ``src = max((dst + 0.5) · (in/out) − 0.5, 0)``, ``i0 = floor(src)``,
  ``i1 = i0 + (i0 < in − 1)``, ``λ1 = src − i0``; ``out = λy0·(λx0·p00 + λx1·p01) + λy1·(λx0·p10 + λx1·p11)``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import triton
import triton.language as tl

from ._utils import dot_precision, is_interpreted, launch, launch_reason, next_pow2


def _fp32_scale(in_size: int, out_size: int) -> float:
    """torch's ``(float)in / out`` in fp32, as a Python float (exactly representable in fp32)."""
    return float(np.float32(in_size) / np.float32(out_size))


def _round_to(dtype: torch.dtype, value: float) -> float:
    """``value`` rounded to ``dtype`` (round to nearest even), as a Python float; host arithmetic only."""
    if dtype == torch.float16:
        return float(np.float16(value))
    bits = int(np.array(value, dtype=np.float32).view(np.uint32))
    if dtype == torch.bfloat16 and (bits & 0x7F800000) != 0x7F800000:
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return float(np.array(bits, dtype=np.uint32).view(np.float32))
    return float(np.float32(value))


def _config(height: int, width: int, interpreted: bool) -> tuple[int, int]:
    if interpreted:  # whole small planes per program
        return min(next_pow2(height), 64), min(next_pow2(width), 64)
    return min(next_pow2(height), 8), min(next_pow2(width), 128)


# ---------------------------------------------------------------- nearest upsample + add

@triton.jit
def _nearest_add_kernel(x_ptr, skip_ptr, out_ptr, C, h, w, H, W, n_hblk, n_wblk,
                        s_xb, s_xc, s_xh, s_xw, s_sb, s_sc, s_sh, s_sw, scale_h, scale_w,
                        BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)
    pid_w = pid % n_wblk
    pid_h = (pid // n_wblk) % n_hblk
    plane = pid // (n_wblk * n_hblk)
    b = (plane // C).to(tl.int64)
    c = (plane % C).to(tl.int64)
    oy = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    sy = tl.minimum(tl.floor(oy.to(tl.float32) * scale_h).to(tl.int32), h - 1)
    sx = tl.minimum(tl.floor(ox.to(tl.float32) * scale_w).to(tl.int32), w - 1)
    mask = (oy < H)[:, None] & (ox < W)[None, :]
    xv = tl.load(x_ptr + b * s_xb + c * s_xc + sy[:, None] * s_xh + sx[None, :] * s_xw, mask=mask, other=0.0)
    sv = tl.load(skip_ptr + b * s_sb + c * s_sc + oy[:, None] * s_sh + ox[None, :] * s_sw, mask=mask, other=0.0)
    res = xv.to(tl.float32) + sv.to(tl.float32)
    tl.store(out_ptr + plane.to(tl.int64) * H * W + oy[:, None] * W + ox[None, :],
             res.to(out_ptr.dtype.element_ty), mask=mask)


def upsample_nearest_add(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Launcher. x (B, C, h, w), skip (B, C, H, W), same dtype, any strides -> (B, C, H, W) contiguous."""
    batch, channels, h, w = x.shape
    height, width = skip.shape[-2:]
    out = torch.empty((batch, channels, height, width), device=skip.device, dtype=skip.dtype)
    if out.numel() == 0:
        return out
    block_h, block_w = _config(height, width, is_interpreted(_nearest_add_kernel))
    n_hblk, n_wblk = triton.cdiv(height, block_h), triton.cdiv(width, block_w)
    grid = (batch * channels * n_hblk * n_wblk,)
    launch(_nearest_add_kernel, grid, x, skip, out, channels, h, w, height, width, n_hblk, n_wblk,
           *x.stride(), *skip.stride(), _fp32_scale(h, height), _fp32_scale(w, width),
           BLOCK_H=block_h, BLOCK_W=block_w, num_warps=4)
    return out


# ---------------------------------------------------------------- mask product (batched GEMM)

@triton.jit
def _mask_product_kernel(a_ptr, p_ptr, out_ptr, Q, C, HW, W, n_qblk,
                         s_ab, s_aq, s_ac, s_pb, s_pc, s_ph, s_pw,
                         BLOCK_Q: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         DOT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)  # query block fastest: programs in flight share the pixel tile
    b = tl.program_id(1).to(tl.int64)
    pid_q = pid % n_qblk
    pid_n = pid // n_qblk
    offs_q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    qmask = offs_q < Q
    nmask = offs_n < HW
    pix = (offs_n // W) * s_ph + (offs_n % W) * s_pw
    a_rows = a_ptr + b * s_ab + offs_q[:, None] * s_aq
    p_cols = p_ptr + b * s_pb + pix[None, :]
    dtype = a_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_Q, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, C, BLOCK_K):
        kk = k0 + offs_k
        kmask = kk < C
        a = tl.load(a_rows + kk[None, :] * s_ac, mask=qmask[:, None] & kmask[None, :], other=0.0)
        p = tl.load(p_cols + kk[:, None] * s_pc, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc = tl.dot(a.to(dtype), p.to(dtype), acc, input_precision=DOT_PRECISION)
    out_ptrs = out_ptr + b * Q * HW + offs_q[:, None] * HW + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=qmask[:, None] & nmask[None, :])


def mask_product(mask_embed: torch.Tensor, pixel_embed: torch.Tensor) -> torch.Tensor:
    """Launcher. mask_embed (B, Q, C), pixel_embed (B, C, H, W), same dtype, any strides -> (B, Q, H, W)
    contiguous, fp32 accumulation."""
    batch, queries, channels = mask_embed.shape
    height, width = pixel_embed.shape[-2:]
    out = torch.empty((batch, queries, height, width), device=mask_embed.device, dtype=mask_embed.dtype)
    if out.numel() == 0:
        return out
    if channels == 0:
        return out.zero_()
    if is_interpreted(_mask_product_kernel):
        block_q, block_n, block_k, warps, stages = max(16, min(64, next_pow2(queries))), 128, 64, 4, 1
    elif mask_embed.dtype == torch.float32:
        block_q, block_n, block_k, warps, stages = 64, 64, 32, 4, 3
    else:
        block_q, block_n, block_k, warps, stages = 64, 128, 64, 4, 3
    block_k = max(16, min(block_k, next_pow2(channels)))
    hw = height * width
    n_qblk = triton.cdiv(queries, block_q)
    grid = (n_qblk * triton.cdiv(hw, block_n), batch)
    launch(_mask_product_kernel, grid, mask_embed, pixel_embed, out, queries, channels, hw, width, n_qblk,
           *mask_embed.stride(), *pixel_embed.stride(),
           BLOCK_Q=block_q, BLOCK_N=block_n, BLOCK_K=block_k, DOT_PRECISION=dot_precision(mask_embed.dtype),
           num_warps=warps, num_stages=stages)
    return out


# ---------------------------------------------------------------- sigmoid -> bilinear -> threshold

@triton.jit
def _masks_to_binary_kernel(x_ptr, out_ptr, h, w, H, W, n_hblk, n_wblk, s_n, s_h, s_w,
                            scale_h, scale_w, threshold,
                            BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    pid = tl.program_id(0)
    pid_w = pid % n_wblk
    pid_h = (pid // n_wblk) % n_hblk
    n = (pid // (n_wblk * n_hblk)).to(tl.int64)
    dtype = x_ptr.dtype.element_ty
    oy = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
    ox = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)
    fy = tl.maximum((oy.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
    fx = tl.maximum((ox.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
    y0 = fy.to(tl.int32)  # fy >= 0: truncation is floor
    x0 = fx.to(tl.int32)
    ly1 = fy - y0.to(tl.float32)
    lx1 = fx - x0.to(tl.float32)
    ly0 = 1.0 - ly1
    lx0 = 1.0 - lx1
    y1 = y0 + (y0 < h - 1).to(tl.int32)
    x1 = x0 + (x0 < w - 1).to(tl.int32)
    mask = (oy < H)[:, None] & (ox < W)[None, :]
    base = x_ptr + n * s_n
    r0 = y0[:, None] * s_h
    r1 = y1[:, None] * s_h
    c0 = x0[None, :] * s_w
    c1 = x1[None, :] * s_w
    # sigmoid in fp32, rounded to the input dtype like the reference's sigmoid output
    p00 = tl.sigmoid(tl.load(base + r0 + c0, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    p01 = tl.sigmoid(tl.load(base + r0 + c1, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    p10 = tl.sigmoid(tl.load(base + r1 + c0, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    p11 = tl.sigmoid(tl.load(base + r1 + c1, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    val = (ly0[:, None] * (lx0[None, :] * p00 + lx1[None, :] * p01)
           + ly1[:, None] * (lx0[None, :] * p10 + lx1[None, :] * p11))
    val = val.to(dtype).to(tl.float32)
    tl.store(out_ptr + n * H * W + oy[:, None] * W + ox[None, :], val > threshold, mask=mask)


def masks_to_binary(mask_logits: torch.Tensor, size: Sequence[int], threshold: float) -> torch.Tensor:
    """Launcher. mask_logits (N, h, w) float, any strides; size (H, W) -> (N, H, W) bool, written directly
    (the full-size probabilities are never stored)."""
    count, h, w = mask_logits.shape
    height, width = int(size[0]), int(size[1])
    out = torch.empty((count, height, width), device=mask_logits.device, dtype=torch.bool)
    if out.numel() == 0:
        return out
    # the reference compares a tensor of the input dtype with a Python scalar: the scalar is rounded to that dtype
    thr = _round_to(mask_logits.dtype, threshold)
    block_h, block_w = _config(height, width, is_interpreted(_masks_to_binary_kernel))
    n_hblk, n_wblk = triton.cdiv(height, block_h), triton.cdiv(width, block_w)
    grid = (count * n_hblk * n_wblk,)
    launch(_masks_to_binary_kernel, grid, mask_logits, out, h, w, height, width, n_hblk, n_wblk,
           *mask_logits.stride(), _fp32_scale(h, height), _fp32_scale(w, width), thr,
           BLOCK_H=block_h, BLOCK_W=block_w, num_warps=4)
    return out


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_upsample_nearest_add(x, skip) -> str | None:
    return launch_reason((x, skip), skip.numel())


def supports_mask_product(mask_embed, pixel_embed) -> str | None:
    out_numel = mask_embed.shape[0] * mask_embed.shape[1] * pixel_embed.shape[2] * pixel_embed.shape[3]
    return launch_reason((mask_embed, pixel_embed), out_numel)


def supports_masks_to_binary(mask_logits, size, threshold=0.5) -> str | None:
    return launch_reason((mask_logits,), mask_logits.shape[0] * int(size[0]) * int(size[1]))
