"""GEMM with a fused epilogue: ``out = act(x @ weight.T + bias) (+ residual)``.

x (..., K) is viewed as (M, K) with ``reshape`` (a view whenever the leading dims flatten, e.g. a slice along K or
a contiguous batch; otherwise one copy) and read through its two strides; weight (N, K) is read as its transpose
through its strides (no copy; a transposed view is fine). The accumulator is fp32; bias, activation (exact GELU
``0.5·y·(1 + erf(y/√2))`` or ReLU) and residual are applied to it in fp32 and the result is rounded once, at the
store (the eager reference rounds after the GEMM, the activation and the add).

Tile order: GROUP_M row blocks share each column sweep (the Triton matmul tutorial's swizzle) so that a wave of
programs reuses the same weight tiles from L2. Out-of-range rows/columns are wrapped (``% M``, ``% N``) for the
loads, which then need no M/N masks, and masked at the store; K is masked only when ragged (EVEN_K).

Block sizes come from a small fixed table (:func:`config`) rather than ``@triton.autotune``: autotuning would
benchmark inside CUDA-graph capture and in the interpreter. The call sites that matter are chosen by timing
elsewhere, against cuBLAS.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._utils import dot_precision, is_interpreted, launch, launch_reason, next_pow2

ACTIVATIONS = {None: 0, "gelu": 1, "relu": 2}


@triton.jit
def _linear_kernel(x_ptr, w_ptr, b_ptr, r_ptr, out_ptr, M, N, K,
                   s_xm, s_xk, s_wn, s_wk, s_b, s_rm, s_rn,
                   HAS_BIAS: tl.constexpr, ACT: tl.constexpr, HAS_RES: tl.constexpr, EVEN_K: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                   DOT_PRECISION: tl.constexpr):
    pid = tl.program_id(0)
    n_mblk = tl.cdiv(M, BLOCK_M)
    n_nblk = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * n_nblk
    first_m = (pid // per_group) * GROUP_M
    group_m = tl.minimum(n_mblk - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_m
    pid_n = (pid % per_group) // group_m

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + (offs_m % M)[:, None] * s_xm + offs_k[None, :] * s_xk
    w_ptrs = w_ptr + offs_k[:, None] * s_wk + (offs_n % N)[None, :] * s_wn  # (BLOCK_K, BLOCK_N) tile of weight.T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(x_ptrs)
            b = tl.load(w_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(x_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(w_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        x_ptrs += BLOCK_K * s_xk
        w_ptrs += BLOCK_K * s_wk

    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n * s_b, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
    if ACT == 1:  # exact GELU; tl.math.erf exists in triton 3.0+ and in the interpreter
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    elif ACT == 2:
        acc = tl.maximum(acc, 0.0)
    if HAS_RES:
        acc += tl.load(r_ptr + offs_m[:, None] * s_rm + offs_n[None, :] * s_rn, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs_m[:, None] * N + offs_n[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


def _config(m: int, n: int, k: int, dtype: torch.dtype, interpreted: bool) -> dict:
    """Block sizes and launch settings (sm_80 and sm_90 share the table: each entry fits sm_80's shared memory).

    - interpreter: the largest tiles (numpy runs a whole tile per step; the program count dominates);
    - 16-bit, M > 1024: 128×128×64, 8 warps, 3 stages (<= 96 KiB of shared memory), the tutorial's large-GEMM tile;
    - 16-bit, smaller M: 64×128×64 (or a 16..32-row tile for a few tokens), 4 warps, 4 stages: more programs;
    - fp32 (TF32 or IEEE dot): K tiles of 32, since operands take twice the shared memory.
    """
    def fit(block, size):  # tl.dot needs every tile dim >= 16
        return max(16, min(block, next_pow2(size)))

    if interpreted:
        bm, bn, bk, warps, stages = 128, 128, 128, 4, 1
    elif dtype == torch.float32:
        bm, bn, bk, warps, stages = (128, 128, 32, 8, 3) if m > 1024 else (64, 64, 32, 4, 3)
    elif m > 1024:
        bm, bn, bk, warps, stages = 128, 128, 64, 8, 3
    else:
        bm, bn, bk, warps, stages = 64, 128, 64, 4, 4
    return dict(BLOCK_M=fit(bm, m), BLOCK_N=fit(bn, n), BLOCK_K=fit(bk, k), GROUP_M=8,
                num_warps=warps, num_stages=stages)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None,
           residual: torch.Tensor | None) -> torch.Tensor:
    """Launcher. x (..., K), weight (N, K), bias (N,) or None, residual (..., N) or None, one dtype, any strides
    -> (..., N) contiguous."""
    k = x.shape[-1]
    n = weight.shape[0]
    m = math.prod(x.shape[:-1])
    out = torch.empty((*x.shape[:-1], n), device=x.device, dtype=x.dtype)
    if out.numel() == 0:
        return out
    x2 = x.reshape(m, k)
    res = residual.reshape(m, n) if residual is not None else None
    cfg = _config(m, n, k, x.dtype, is_interpreted(_linear_kernel))
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    launch(_linear_kernel, grid, x2, weight, weight if bias is None else bias, weight if res is None else res, out,
           m, n, k, *x2.stride(), *weight.stride(), bias.stride(0) if bias is not None else 0,
           *(res.stride() if res is not None else (0, 0)),
           HAS_BIAS=bias is not None, ACT=ACTIVATIONS[activation], HAS_RES=res is not None,
           EVEN_K=k % cfg["BLOCK_K"] == 0, DOT_PRECISION=dot_precision(x.dtype), **cfg)
    return out


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_linear(x, weight, bias=None, activation=None, residual=None) -> str | None:
    rows = x.shape[:-1].numel()
    # x may be copied by the launcher's reshape (an expanded x): its element count must fit int32 too
    return launch_reason((x, weight, bias, residual), max(rows * weight.shape[0], x.numel()))
