"""RoPE on the q and k parts of fused QKV token sequences (``sam3lt.ops.rope_qkv``), one pass over the tensor.

Grid (token block, sequence, part): part 0 rotates the q heads, part 1 the k heads, part 2 copies v. A program
loads its (BLOCK_T, D) cos/sin rows once (fp32) and loops over the heads of its part, each a (BLOCK_T, D) tile
read as contiguous rows (vector loads when the channel stride is 1) and split into its even/odd channel pairs
in registers (``tl.reshape`` + ``tl.split``: no second gather load of the partner channel, unlike the in-kernel
RoPE of window_attention); math in fp32, one rounding to the output dtype. Three parts per token block give
~500 programs for one 1008² image (global 72×72 or nine 24×24 windows) at BLOCK_T = 32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import is_interpreted, launch, launch_reason, next_pow2

MAX_HEAD_DIM = 256  # a (BLOCK_T, D) fp32 tile and its tables stay in registers


@triton.jit
def _rope_qkv_kernel(qkv_ptr, cos_ptr, sin_ptr, out_ptr, T, C, num_heads,
                     s_n, s_t, s_c, s_cos_t, s_cos_d, s_sin_t, s_sin_d,
                     HEAD_DIM: tl.constexpr, HALF_P: tl.constexpr, BLOCK_T: tl.constexpr):
    BLOCK_D: tl.constexpr = 2 * HALF_P
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    n = tl.program_id(1).to(tl.int64)
    part = tl.program_id(2)  # 0: q, 1: k, 2: v
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_t < T)[:, None] & (offs_d < HEAD_DIM)[None, :]
    src = qkv_ptr + n * s_n + offs_t[:, None] * s_t + offs_d[None, :] * s_c
    dst = out_ptr + n * T * 3 * C + offs_t[:, None] * (3 * C) + offs_d[None, :]
    ch0 = part * C
    if part < 2:
        cos = tl.load(cos_ptr + offs_t[:, None] * s_cos_t + offs_d[None, :] * s_cos_d, mask=mask, other=0.0)
        sin = tl.load(sin_ptr + offs_t[:, None] * s_sin_t + offs_d[None, :] * s_sin_d, mask=mask, other=0.0)
        cos_e, cos_o = tl.split(tl.reshape(cos.to(tl.float32), (BLOCK_T, HALF_P, 2)))
        sin_e, sin_o = tl.split(tl.reshape(sin.to(tl.float32), (BLOCK_T, HALF_P, 2)))
        for h in range(num_heads):
            ch = ch0 + h * HEAD_DIM
            x = tl.load(src + ch * s_c, mask=mask, other=0.0).to(tl.float32)
            x_e, x_o = tl.split(tl.reshape(x, (BLOCK_T, HALF_P, 2)))
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
    if out.numel() == 0:
        return out
    channels = three_c // 3
    head_dim = channels // num_heads
    cfg = _config(tokens, head_dim, is_interpreted(_rope_qkv_kernel))
    grid = (triton.cdiv(tokens, cfg["BLOCK_T"]), seqs, 3)
    launch(_rope_qkv_kernel, grid, qkv, cos, sin, out, tokens, channels, num_heads, *qkv.stride(), *cos.stride(),
           *sin.stride(), HEAD_DIM=head_dim, **cfg)
    return out


# ---------------------------------------------------------------- limits (arguments already validated by the op)

def supports_rope_qkv(qkv, cos, sin, num_heads) -> str | None:
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if head_dim > MAX_HEAD_DIM:
        return f"head dim {head_dim} > {MAX_HEAD_DIM}"
    if qkv.shape[0] > 65535:
        return f"{qkv.shape[0]} sequences > 65535 (grid axis 1)"
    return launch_reason((qkv, cos, sin), qkv.numel())
