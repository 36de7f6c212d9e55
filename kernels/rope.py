"""RoPE on the q and k parts of fused QKV tokens, one pass over the tensor: ``rope_qkv`` (``sam3lt.ops.rope_qkv``,
token sequences, v copied) and ``rope_qk_grid`` (window_attention's first pass: the (B, H, W, 3·C) token grid,
each token rotated at its place in its window, q and k only).

Grid (token block, sequence, part): part 0 rotates the q heads, part 1 the k heads, part 2 (``rope_qkv`` only)
copies v. Token t of a sequence is grid cell (t // grid_w, t % grid_w) (a plain sequence is one row), and its
table row is t, or with WINDOWED its place in its win × win window. A program loads its (BLOCK_T, D) cos/sin rows
once (fp32) and loops over the heads of its part, each a (BLOCK_T, D) tile read as contiguous rows (vector loads
when the channel stride is 1) and split into its even/odd channel pairs in registers (``tl.reshape`` +
``tl.split``: no second gather load of the partner channel); math in fp32, one rounding to the output dtype.
Parts × token blocks give ~300-500 programs for one 1008² image (72×72 tokens) at BLOCK_T = 32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import is_interpreted, launch, launch_reason, next_pow2

MAX_HEAD_DIM = 256  # a (BLOCK_T, D) fp32 tile and its tables stay in registers


@triton.jit
def _rope_qkv_kernel(qkv_ptr, cos_ptr, sin_ptr, out_ptr, T, C, num_heads, grid_w, win,
                     s_n, s_y, s_x, s_c, s_cos_t, s_cos_d, s_sin_t, s_sin_d, s_out_t,
                     HEAD_DIM: tl.constexpr, HALF_P: tl.constexpr, BLOCK_T: tl.constexpr,
                     WINDOWED: tl.constexpr):
    BLOCK_D: tl.constexpr = 2 * HALF_P
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    n = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)  # 0: q, 1: k, 2: v
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_t < T)[:, None] & (offs_d < HEAD_DIM)[None, :]
    y = offs_t // grid_w  # token t of sequence n is grid cell (y, x) (a plain sequence: grid_w = T, y = 0)
    x = offs_t % grid_w
    if WINDOWED:  # table row: the token's place in its win × win window (row-major)
        row = (y % win) * win + x % win
    else:
        row = offs_t
    src = qkv_ptr + n * s_n + (y * s_y + x * s_x)[:, None] + offs_d[None, :] * s_c
    dst = out_ptr + n * T * s_out_t + offs_t[:, None] * s_out_t + offs_d[None, :]
    ch0 = part * C
    if part < 2:
        cos = tl.load(cos_ptr + row[:, None] * s_cos_t + offs_d[None, :] * s_cos_d, mask=mask, other=0.0)
        sin = tl.load(sin_ptr + row[:, None] * s_sin_t + offs_d[None, :] * s_sin_d, mask=mask, other=0.0)
        cos_e, cos_o = tl.split(tl.reshape(cos.to(tl.float32), (BLOCK_T, HALF_P, 2)))
        sin_e, sin_o = tl.split(tl.reshape(sin.to(tl.float32), (BLOCK_T, HALF_P, 2)))
        for h in range(num_heads):
            ch = ch0 + h * HEAD_DIM
            x_in = tl.load(src + ch * s_c, mask=mask, other=0.0).to(tl.float32)
            x_e, x_o = tl.split(tl.reshape(x_in, (BLOCK_T, HALF_P, 2)))
            out = tl.join(x_e * cos_e - x_o * sin_e, x_o * cos_o + x_e * sin_o)  # (BLOCK_T, HALF_P, 2)
            tl.store(dst + ch, tl.reshape(out, (BLOCK_T, BLOCK_D)).to(out_ptr.dtype.element_ty), mask=mask)
    else:
        for h in range(num_heads):
            ch = ch0 + h * HEAD_DIM
            tl.store(dst + ch, tl.load(src + ch * s_c, mask=mask, other=0.0), mask=mask)


def _config(tokens: int, head_dim: int, interpreted: bool) -> dict:
    """Block sizes. GPU: 32 tokens × D per tile (2048 values for D = 64: 16 per thread at 4 warps, 16-byte
    loads in bf16). Interpreter: as many tokens as fit a 64Ki tile (the program count dominates there)."""
    half_p = next_pow2(head_dim // 2)
    if interpreted:
        block_t = min(next_pow2(tokens), max(1, 65536 // (2 * half_p)))
    else:
        block_t = min(32, next_pow2(tokens))
    return dict(HALF_P=half_p, BLOCK_T=block_t, num_warps=4)


def rope_qkv(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Launcher. qkv (N, T, 3·C) any strides; cos/sin (T, D) any strides and float dtype. Returns (N, T, 3·C)
    contiguous in qkv's dtype."""
    seqs, tokens, three_c = qkv.shape
    out = torch.empty((seqs, tokens, three_c), device=qkv.device, dtype=qkv.dtype)
    _launch(qkv, cos, sin, num_heads, out, 3, tokens, 0, (qkv.stride(0), 0, qkv.stride(1), qkv.stride(2)))
    return out


def rope_qk_grid(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
                 window_size: int) -> torch.Tensor:
    """window_attention's first pass: qkv (B, H, W, 3·C) any strides -> (B, H, W, 2·C) contiguous, the q and k
    heads rotated once (v is not copied: the attention reads it from qkv). cos/sin (T, D): with
    ``window_size > 0`` the window tables (T = window_size²), token (y, x) taking row
    (y mod ws)·ws + x mod ws, its place in its window; with 0 the global tables (T = H·W, row y·W + x)."""
    batch, height, width, three_c = qkv.shape
    out = torch.empty((batch, height, width, 2 * three_c // 3), device=qkv.device, dtype=qkv.dtype)
    _launch(qkv, cos, sin, num_heads, out, 2, height * width, window_size, qkv.stride(), width)
    return out


def _launch(qkv, cos, sin, num_heads, out, parts, tokens, window, strides, grid_w=None):
    """Rotate the q, k (and with parts = 3, copy the v) heads of ``qkv``'s sequences (dim 0) of ``tokens`` tokens,
    token t at grid cell (t // grid_w, t % grid_w) (strides: sequence, row, column, channel) into ``out``."""
    if out.numel() == 0:
        return
    channels = qkv.shape[-1] // 3
    head_dim = channels // num_heads
    cfg = _config(tokens, head_dim, is_interpreted(_rope_qkv_kernel))
    grid = (triton.cdiv(tokens, cfg["BLOCK_T"]), qkv.shape[0], parts)
    launch(_rope_qkv_kernel, grid, qkv, cos, sin, out, tokens, channels, num_heads, grid_w or tokens,
           max(window, 1), *strides, *cos.stride(), *sin.stride(), out.shape[-1], HEAD_DIM=head_dim,
           WINDOWED=window > 0, **cfg)


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_rope_qkv(qkv, cos, sin, num_heads) -> str | None:
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if head_dim > MAX_HEAD_DIM:
        return f"head dim {head_dim} > {MAX_HEAD_DIM}"
    if qkv.shape[0] > 65535:
        return f"{qkv.shape[0]} sequences > 65535 (grid axis 1)"
    return launch_reason((qkv, cos, sin), qkv.numel())
