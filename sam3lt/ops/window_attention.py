"""ViT self-attention: windowed (with padding) or global, with 2-D axial RoPE, from a fused QKV tensor."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks, _cpu, _cuda, _triton, _tuning
from ._backend import define, dispatch, register
from .linear import writable


def rotate_pairwise(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): the pairwise rotation of HF's Sam3 RoPE."""
    x = x.unflatten(-1, (-1, 2))
    x1, x2 = x.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE in fp32, result cast back to ``x.dtype`` (as HF's ``apply_rotary_pos_emb_2d``):
    ``x·cos + rotate_pairwise(x)·sin``, i.e. for each channel pair (e, o)

        out_e = x_e·cos_e − x_o·sin_e,    out_o = x_o·cos_o + x_e·sin_o
    """
    xf = x.float()
    if x.device.type == "cpu" and not torch.compiler.is_compiling() and _paired(cos) and _paired(sin):
        # HF's tables repeat each angle for both channels of a pair: then this is one complex product, about
        # 3x faster on the CPU than the literal formula (the check reads the table, a free sync on the CPU;
        # under torch.compile the data-dependent check is skipped and the compiler fuses the literal formula).
        # The product runs in place on the contiguous copy when .contiguous() made one (q, k are strided views
        # of qkv): the same complex multiply, one (N, heads, T, D) buffer fewer.
        angles = torch.complex(cos[..., 0::2].float(), sin[..., 0::2].float())
        pairs = xf.unflatten(-1, (-1, 2)).contiguous()
        fresh = pairs.untyped_storage().data_ptr() != x.untyped_storage().data_ptr() and writable(pairs)
        rotated = torch.view_as_complex(pairs)
        fresh = fresh and rotated.shape == torch.broadcast_shapes(rotated.shape, angles.shape)
        rotated = rotated.mul_(angles) if fresh else rotated * angles
        return torch.view_as_real(rotated).flatten(-2).to(x.dtype)
    return (xf * cos + rotate_pairwise(xf) * sin).to(x.dtype)


def _paired(table: torch.Tensor) -> bool:
    return torch.equal(table[..., 0::2], table[..., 1::2])


def rope_sdpa(q, k, v, cos, sin):
    """RoPE on q and k, then torch's SDPA: the spec of a window's attention."""
    return F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v)


def window_attention_reference(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int,
                               window_size: int, pad_value: torch.Tensor | None, attend=rope_sdpa) -> torch.Tensor:
    """Eager reference (the spec). See :func:`window_attention`. ``attend(q, k, v, cos, sin)``: RoPE and the
    attention of the (N, heads, T, D) windows (the cpu backend passes its kernel, which fuses both)."""
    batch, height, width, three_c = qkv.shape
    channels = three_c // 3
    head_dim = channels // num_heads
    if window_size > 0:
        pad_h = (window_size - height % window_size) % window_size
        pad_w = (window_size - width % window_size) % window_size
        hp, wp = height + pad_h, width + pad_w
        rows, cols = hp // window_size, wp // window_size
        if pad_h or pad_w:
            # partition straight into pad-filled windows (one copy of the real tokens, no padded grid)
            windows = qkv.new_empty(batch, rows, cols, window_size, window_size, three_c)
            windows[:] = 0 if pad_value is None else pad_value.to(qkv.dtype)
            for i in range(rows):
                for j in range(cols):
                    block = qkv[:, i * window_size:(i + 1) * window_size, j * window_size:(j + 1) * window_size]
                    windows[:, i, j, :block.shape[1], :block.shape[2]] = block
            qkv = windows.view(-1, window_size * window_size, three_c)
        else:
            qkv = qkv.view(batch, rows, window_size, cols, window_size, three_c)
            qkv = qkv.permute(0, 1, 3, 2, 4, 5).reshape(-1, window_size * window_size, three_c)
    else:
        hp, wp = height, width
        qkv = qkv.reshape(batch, height * width, three_c)
    tokens = qkv.shape[1]
    q, k, v = qkv.view(qkv.shape[0], tokens, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    out = attend(q, k, v, cos, sin)  # (N, heads, T, D), scale D**-0.5
    if window_size == 0:
        return out.transpose(1, 2).reshape(batch, height, width, channels)
    # merge heads and unpartition in one copy: (B, nH, nW, heads, ws, ws, D) -> (B, nH, ws, nW, ws, heads, D)
    out = out.view(batch, hp // window_size, wp // window_size, num_heads, window_size, window_size, head_dim)
    out = out.permute(0, 1, 4, 2, 5, 3, 6).reshape(batch, hp, wp, channels)
    return out[:, :height, :width].contiguous()


def check_args(qkv, cos, sin, num_heads, window_size, pad_value=None) -> None:
    """Raise TypeError / ValueError unless the arguments fit :func:`window_attention`."""
    op = "window_attention"
    tensors = (("qkv", qkv), ("cos", cos), ("sin", sin), ("pad_value", pad_value))
    for name, t in tensors:
        if t is not None or name != "pad_value":
            _checks.floating(op, name, t)
    _checks.integer(op, "num_heads", num_heads, 1)
    _checks.integer(op, "window_size", window_size, 0)
    if qkv.dim() != 4 or cos.dim() != 2 or sin.dim() != 2:
        raise ValueError(f"{op}: expects qkv (B, H, W, 3·C) and cos/sin (T, D), got {tuple(qkv.shape)}, "
                         f"{tuple(cos.shape)}, {tuple(sin.shape)}")
    _, height, width, three_c = qkv.shape
    if three_c % (3 * num_heads) != 0:
        raise ValueError(f"{op}: qkv channels {three_c} are not 3 × num_heads ({num_heads}) × head_dim")
    head_dim = three_c // (3 * num_heads)
    tokens = window_size * window_size if window_size > 0 else height * width
    if tuple(cos.shape) != (tokens, head_dim) or tuple(sin.shape) != (tokens, head_dim):
        raise ValueError(f"{op}: cos/sin must be ({tokens}, {head_dim}) for this window, got {tuple(cos.shape)}")
    if pad_value is not None and (pad_value.dim() != 1 or pad_value.shape[0] != three_c):
        raise ValueError(f"{op}: pad_value must be ({three_c},), got {tuple(pad_value.shape)}")
    _checks.same_device(op, tensors)


def window_attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_heads: int, window_size: int,
                     pad_value: torch.Tensor | None = None, backend: str | None = None) -> torch.Tensor:
    """Windowed (``window_size > 0``) or global (``window_size == 0``) multi-head self-attention with RoPE.

    Args:
        qkv: (B, H, W, 3·C) output of the fused QKV projection in token-grid layout; channels are
            [q | k | v], each C = num_heads·D with head-major channels. fp32/fp16/bf16.
        cos, sin: (T, D) fp32 RoPE tables for the tokens of one window in row-major order
            (T = window_size², or T = H·W for global attention).
        num_heads: number of heads.
        window_size: side of the square windows, 0 for global attention. A grid that is not a multiple of
            the window is padded at the bottom/right; padded tokens take ``pad_value`` (HF pads the
            *input* of the projection with zeros, so a padded token's q/k/v equal the projection bias) and
            are attended to like real tokens, exactly as in HF; their outputs are dropped.
        pad_value: (3·C,) value of padded tokens (the QKV bias), or None for zeros.
    Returns:
        (B, H, W, C) attention output (before the output projection), contiguous, dtype of ``qkv``.
    """
    check_args(qkv, cos, sin, num_heads, window_size, pad_value)
    return dispatch("window_attention", backend, qkv, cos, sin, num_heads, window_size, pad_value)


def _cuda_supports(qkv, cos, sin, num_heads, window_size, pad_value=None):
    batch, height, width, three_c = qkv.shape
    return (_cuda.head_dim_reason(three_c // (3 * num_heads)) or _cuda.launch_reason((qkv, cos, sin, pad_value))
            or _cuda.fits_int32(cos.shape[0], batch * num_heads, three_c, height, width))


def window_attention_cpu(qkv, cos, sin, num_heads, window_size, pad_value=None):
    """The ``cpu`` backend: the reference with sam3lt's CPU attention kernel for torch's SDPA."""
    return window_attention_reference(qkv, cos, sin, num_heads, window_size, pad_value, _cpu_attend)


def _cpu_attend(q, k, v, cos, sin):
    # RoPE inside the kernel; its (N, T, heads, D) output seen as (N, heads, T, D)
    return _cpu.attention(q, k, v, cos=cos, sin=sin).transpose(1, 2)


def _cpu_supports(qkv, cos, sin, num_heads, window_size, pad_value=None):
    return _cpu.attention_reason("window_attention", (qkv, cos, sin, pad_value))


def _cpu_evidence(args):
    qkv, window_size = args[0], args[4]
    keys = window_size * window_size if window_size > 0 else qkv.shape[1] * qkv.shape[2]
    return _cpu.attention_evidence("window_attention", keys)


define("window_attention", check_args)
register("window_attention", "eager", window_attention_reference)
register("window_attention", "triton", *_triton.backend("window_attention", "window_attention"))
register("window_attention", "cuda", *_cuda.backend("window_attention", _cuda_supports))
register("window_attention", "cpu", window_attention_cpu, _cpu_supports)
_tuning.CPU_EVIDENCE["window_attention"] = _cpu_evidence
