"""Argument contracts of the ops that every kernel backend checks first (shapes, ranks, matching dtypes):
``None`` when the arguments fit the op's documented layout, else a readable reason. Backend-specific limits
(head dims, int32 indexing, devices) stay in each backend's ``supports``."""
from __future__ import annotations

import torch

FLOATS = (torch.float32, torch.float16, torch.bfloat16)


def float_tensors_on_one_device(tensors) -> str | None:
    """The kernels' shared input rule: fp32/fp16/bf16 tensors, all on one device."""
    for t in tensors:
        if t.dtype not in FLOATS:
            return f"unsupported dtype {t.dtype} (fp32, fp16 and bf16 are supported)"
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        return f"inputs are on different devices ({', '.join(sorted(str(d) for d in devices))})"
    return None


def repmixer(x, weight, bias) -> str | None:
    if x.dim() != 3 or weight.dim() != 2 or bias.dim() != 1:
        return "expects x (B, L, C), weight (C, K), bias (C,)"
    channels, taps = weight.shape
    if x.shape[-1] != channels or bias.shape[0] != channels:
        return "x, weight and bias disagree on the channel count"
    if taps % 2 == 0:
        return f"even kernel size {taps} (only odd K has symmetric 'same' padding)"
    return None


def window_attention(qkv, cos, sin, num_heads, window_size, pad_value) -> str | None:
    if qkv.dim() != 4 or cos.dim() != 2 or sin.dim() != 2:
        return "expects qkv (B, H, W, 3·C) and cos/sin (T, D)"
    _, height, width, three_c = qkv.shape
    if num_heads <= 0 or three_c % (3 * num_heads) != 0:
        return f"qkv channels {three_c} are not 3 × num_heads ({num_heads}) × head_dim"
    head_dim = three_c // (3 * num_heads)
    if window_size < 0:
        return f"negative window size {window_size}"
    tokens = window_size * window_size if window_size > 0 else height * width
    if tuple(cos.shape) != (tokens, head_dim) or tuple(sin.shape) != (tokens, head_dim):
        return f"cos/sin must be ({tokens}, {head_dim}) for this window"
    if pad_value is not None and (pad_value.dim() != 1 or pad_value.shape[0] != three_c):
        return f"pad_value must be ({three_c},)"
    return None


def qkv(q, k, v) -> str | None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "expects q, k, v of shape (B, heads, L, D)"
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match"
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    return None


def box_bias_attention(q, k, v, bias_y, bias_x) -> str | None:
    reason = qkv(q, k, v)
    if reason is not None:
        return reason
    if bias_y.dim() != 4 or bias_x.dim() != 4:
        return "expects bias_y (B, heads, Lq, Hg) and bias_x (B, heads, Lq, Wg)"
    if bias_y.shape[:3] != q.shape[:3] or bias_x.shape[:3] != q.shape[:3]:
        return "bias_y / bias_x leading dims must be (B, heads, Lq)"
    if bias_y.shape[-1] * bias_x.shape[-1] != k.shape[2]:
        return f"keys ({k.shape[2]}) != Hg·Wg ({bias_y.shape[-1]}·{bias_x.shape[-1]})"
    return None


def masked_attention(q, k, v, key_padding_mask) -> str | None:
    reason = qkv(q, k, v)
    if reason is not None or key_padding_mask is None:
        return reason
    if tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
        return f"key_padding_mask must be (B, Lk) = ({k.shape[0]}, {k.shape[2]})"
    if key_padding_mask.device != q.device:
        return f"inputs are on different devices ({q.device}, {key_padding_mask.device})"
    if key_padding_mask.dtype.is_complex:
        return f"unsupported key_padding_mask dtype {key_padding_mask.dtype}"
    return None


def upsample_nearest_add(x, skip) -> str | None:
    if x.dim() != 4 or skip.dim() != 4 or x.shape[:2] != skip.shape[:2]:
        return "expects x (B, C, h, w) and skip (B, C, H, W)"
    if x.dtype != skip.dtype:
        return f"x and skip dtypes differ ({x.dtype}, {skip.dtype})"
    if (x.shape[-1] == 0 or x.shape[-2] == 0) and skip.numel() > 0:
        return "empty input grid"
    return None


def mask_product(mask_embed, pixel_embed) -> str | None:
    if mask_embed.dim() != 3 or pixel_embed.dim() != 4:
        return "expects mask_embed (B, Q, C) and pixel_embed (B, C, H, W)"
    if mask_embed.shape[0] != pixel_embed.shape[0] or mask_embed.shape[2] != pixel_embed.shape[1]:
        return "mask_embed and pixel_embed disagree on B or C"
    if mask_embed.dtype != pixel_embed.dtype:
        return f"dtypes differ ({mask_embed.dtype}, {pixel_embed.dtype})"
    return None


def masks_to_binary(mask_logits, size) -> str | None:
    if mask_logits.dim() != 3 or len(size) != 2:
        return "expects mask_logits (N, h, w) and size (H, W)"
    if (mask_logits.shape[1] == 0 or mask_logits.shape[2] == 0) and mask_logits.shape[0] > 0:
        return "empty input masks"
    if int(size[0]) < 0 or int(size[1]) < 0:
        return "negative output size"
    return None


def tensors_like(ref_name: str, ref, named, optional=()) -> tuple[type[Exception], str] | None:
    """(exception type, message naming the argument) unless every (name, tensor) in ``named`` is a floating-point
    tensor of ``ref``'s dtype on ``ref``'s device (or None, for the names in ``optional``)."""
    for name, t in named:
        if t is None and name in optional:
            continue
        if not isinstance(t, torch.Tensor):
            return TypeError, f"{name} must be a tensor, got {type(t).__name__}"
        if not t.dtype.is_floating_point:
            return TypeError, f"{name} must be a floating-point tensor, got {t.dtype}"
        if t.dtype != ref.dtype:
            return TypeError, f"{name} dtype {t.dtype} differs from {ref_name} dtype {ref.dtype}"
        if t.device != ref.device:
            return ValueError, f"{name} is on {t.device}, {ref_name} on {ref.device}"
    return None


def add_layer_norm_problem(x, residual, weight, bias) -> tuple[type[Exception], str] | None:
    """(exception type, message naming the argument) when the arguments of ``add_layer_norm`` do not fit, else None:
    x and residual (..., C) of one shape and one floating dtype; weight and bias (C,) floating; one device."""
    named = (("x", x), ("residual", residual), ("weight", weight), ("bias", bias))
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            return TypeError, f"{name} must be a torch.Tensor, got {type(t).__name__}"
        if not t.is_floating_point():
            return TypeError, f"{name} must have a floating dtype, got {t.dtype}"
    if x.dim() == 0:
        return ValueError, "x must have at least one dimension (the normalised channels)"
    if residual.shape != x.shape:
        return ValueError, f"residual shape {tuple(residual.shape)} differs from x shape {tuple(x.shape)}"
    if residual.dtype != x.dtype:
        return TypeError, f"residual dtype {residual.dtype} differs from x dtype {x.dtype}"
    channels = x.shape[-1]
    for name, t in named[2:]:
        if t.dim() != 1 or t.shape[0] != channels:
            return ValueError, f"{name} must be ({channels},) (x's last dim), got {tuple(t.shape)}"
    if weight.dtype != bias.dtype:
        return TypeError, f"bias dtype {bias.dtype} differs from weight dtype {weight.dtype}"
    for name, t in named[1:]:
        if t.device != x.device:
            return ValueError, f"{name} is on {t.device} but x is on {x.device}"
    return None


def add_layer_norm(x, residual, weight, bias) -> str | None:
    problem = add_layer_norm_problem(x, residual, weight, bias)
    return None if problem is None else problem[1]
