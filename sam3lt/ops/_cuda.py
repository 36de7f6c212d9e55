"""The ``cuda`` backend: the ops of the compiled extension ``sam3lt._C`` (csrc/), ``torch.ops.sam3lt_C.*``.

The extension is loaded by :mod:`sam3lt._ext`, which never raises; when it is missing or unusable every
``supports()`` check here returns the recorded reason, so ``auto`` moves on (Triton, then eager) and a forced
``cuda`` raises :class:`~sam3lt.ops.BackendUnavailable` with it. :func:`status` says whether the backend can run.

Ops (schemas in csrc/ops.cpp; the same arguments as the public functions and the Triton ``sam3lt::`` ops):

- ``sam3lt_C::repmixer_dwconv(Tensor x, Tensor weight, Tensor bias, bool residual) -> Tensor``
- ``sam3lt_C::window_attention(Tensor qkv, Tensor cos, Tensor sin, int num_heads, int window_size,
  Tensor? pad_value) -> Tensor``
- ``sam3lt_C::box_bias_attention(Tensor q, Tensor k, Tensor v, Tensor bias_y, Tensor bias_x) -> Tensor``
- ``sam3lt_C::masked_attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask) -> Tensor``
- ``sam3lt_C::upsample_nearest_add(Tensor x, Tensor skip) -> Tensor``
- ``sam3lt_C::masks_to_binary(Tensor mask_logits, int[] size, float threshold) -> Tensor``
- ``mask_product``, ``add_layer_norm``, ``linear``, ``box_bias`` and ``box_refine`` have no kernel of their own
  (:data:`TORCH_OPS`): the cuda backend runs their eager reference on torch's CUDA kernels (cuBLAS for the GEMMs),
  registered with ``auto=False`` (under ``auto`` the identical eager reference, or Triton, runs) so that a model
  forced to ``cuda`` runs end to end.

Head dims: multiples of 8 up to 128 (kernels instantiated for 16/32/64/128, smaller ones zero-padded).

Under ``auto`` the cuda implementations are the first choice; inputs they do not take (CPU tensors, other dtypes
or head dims) pass silently to the next backend, and a missing or unusable extension is reported by the dispatch
once, the first time it would have served CUDA inputs (:func:`missing_reason`, ``set_missing_check``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import _ext
from . import _contracts as contract
from ._backend import dispatch, register, set_missing_check, unavailable_reason
from .box_bias import box_bias_reference
from .box_refine import box_refine_reference
from .linear import linear_reference
from .norm import add_layer_norm_reference
from .upsample import mask_product_reference

_INT32_MAX = 2**31 - 1
OPS = ("repmixer_dwconv", "window_attention", "box_bias_attention", "masked_attention", "upsample_nearest_add",
       "masks_to_binary")


def status() -> tuple[bool, str]:
    """(available, reason): whether the cuda backend can run here, and why not / what it runs on."""
    return _ext.status()


def extension_reason() -> str | None:
    """None when ``sam3lt._C`` is loaded, else why not (no GPU check)."""
    return None if _ext.EXT is not None else (_ext.IMPORT_ERROR or "sam3lt._C is not loaded")


# ---------------------------------------------------------------- supports() checks

def _common(tensors: Sequence[torch.Tensor]) -> str | None:
    """Checks shared by every op: extension loaded, float dtypes, all on one supported CUDA device."""
    reason = extension_reason()
    if reason is not None:
        return reason
    reason = contract.float_tensors_on_one_device(tensors)
    if reason is not None:
        return reason
    device = tensors[0].device
    if device.type != "cuda":
        return f"inputs are on {'the CPU' if device.type == 'cpu' else device.type}; the CUDA kernels need CUDA tensors"
    index = device.index if device.index is not None else 0  # CUDA tensors always carry their index
    if index not in _ext._DEVICE_REASONS and torch.compiler.is_compiling():
        # not known yet and torch.compile is tracing: do not query the device inside the trace (an unsupported
        # architecture then fails at launch with CUDA's "no kernel image" error instead of falling back)
        return None
    return _ext.device_reason(index)


def _fits_int32(*values: int) -> str | None:
    for v in values:
        if v > _INT32_MAX:
            return "a size exceeds 2**31 - 1 (the kernels index rows with int32)"
    return None


def _head_dim_reason(head_dim: int) -> str | None:
    if head_dim % 8 or head_dim <= 0:
        return f"head dim {head_dim} is not a multiple of 8"
    if head_dim > 128:
        return f"head dim {head_dim} > 128"
    return None


def _supports_repmixer(x, weight, bias, residual=True, *_):
    reason = contract.repmixer(x, weight, bias)
    if reason is not None:
        return reason
    if not (x.dtype == weight.dtype == bias.dtype):
        return f"x, weight and bias dtypes differ ({x.dtype}, {weight.dtype}, {bias.dtype})"
    return _common((x, weight, bias)) or _fits_int32(x.shape[1], x.shape[2])


def _supports_window_attention(qkv, cos, sin, num_heads, window_size, pad_value=None, *_):
    reason = contract.window_attention(qkv, cos, sin, num_heads, window_size, pad_value)
    if reason is not None:
        return reason
    batch, height, width, three_c = qkv.shape
    reason = _head_dim_reason(three_c // (3 * num_heads)) or _common((qkv,))
    if reason is not None:
        return reason
    for t in [cos, sin] + ([pad_value] if pad_value is not None else []):
        if t.device != qkv.device:
            return f"inputs are on different devices ({qkv.device}, {t.device})"
        if not t.dtype.is_floating_point:
            return f"unsupported dtype {t.dtype} for cos/sin/pad_value"
    tokens = cos.shape[0]
    return _fits_int32(tokens, batch * num_heads, three_c, height, width)


def _supports_box_bias_attention(q, k, v, bias_y, bias_x, *_):
    reason = contract.box_bias_attention(q, k, v, bias_y, bias_x) or _head_dim_reason(q.shape[-1])
    if reason is not None:
        return reason
    if bias_y.dtype != bias_x.dtype:
        return f"bias_y and bias_x dtypes differ ({bias_y.dtype}, {bias_x.dtype})"
    return _common((q, k, v, bias_y, bias_x)) or _fits_int32(q.shape[2], k.shape[2], q.shape[0] * q.shape[1])


def _supports_masked_attention(q, k, v, key_padding_mask=None, *_):
    return (contract.masked_attention(q, k, v, key_padding_mask) or _head_dim_reason(q.shape[-1])
            or _common((q, k, v)) or _fits_int32(q.shape[2], k.shape[2], q.shape[0] * q.shape[1]))


def _supports_upsample_nearest_add(x, skip, *_):
    return (contract.upsample_nearest_add(x, skip) or _common((x, skip))
            or _fits_int32(*x.shape[-2:], *skip.shape[-2:]))


def _supports_masks_to_binary(mask_logits, size, threshold=0.5, *_):
    return (contract.masks_to_binary(mask_logits, size) or _common((mask_logits,))
            or _fits_int32(*mask_logits.shape[1:], int(size[0]), int(size[1])))


def _supports_mask_product(mask_embed, pixel_embed, *_):
    return contract.mask_product(mask_embed, pixel_embed) or _common((mask_embed, pixel_embed))


_SUPPORTS = {
    "repmixer_dwconv": _supports_repmixer,
    "window_attention": _supports_window_attention,
    "box_bias_attention": _supports_box_bias_attention,
    "masked_attention": _supports_masked_attention,
    "upsample_nearest_add": _supports_upsample_nearest_add,
    "masks_to_binary": _supports_masks_to_binary,
}


# ---------------------------------------------------------------- implementations

def _impl(name: str):
    if _ext.EXT is not None:
        op = getattr(torch.ops.sam3lt_C, name).default  # the overload itself: less Python per call than the packet
        if name == "masks_to_binary":
            return lambda logits, size, threshold: op(logits, [int(s) for s in size], float(threshold))
        return op

    def missing(*args):  # pragma: no cover - supports() rejects first
        raise RuntimeError(f"sam3lt_C::{name}: {extension_reason()}")

    return missing


def missing_reason() -> str | None:
    """None when the extension is loaded and has code for the current GPU, else why the cuda backend is missing
    (asked by the dispatch only when CUDA inputs fall back)."""
    reason = extension_reason()
    if reason is None and torch.cuda.is_available():
        reason = _ext.device_reason(torch.cuda.current_device())
    return reason


for _name, _check in _SUPPORTS.items():
    register(_name, "cuda", _impl(_name), _check)


def _repmixer_block(x, w1, b1, w2, b2):
    """The RepMixer pair as two launches of the cuda ``repmixer_dwconv`` (no fused CUDA kernel yet); through the
    dispatch, so whatever serves ``repmixer_dwconv`` for cuda serves this too."""
    mixed = dispatch("repmixer_dwconv", "cuda", x, w1, b1, True)
    return mixed, dispatch("repmixer_dwconv", "cuda", mixed, w2, b2, False)


def _supports_repmixer_block(x, w1, b1, w2, b2):
    return (unavailable_reason("repmixer_dwconv", "cuda", x, w1, b1, True)
            or unavailable_reason("repmixer_dwconv", "cuda", x, w2, b2, False))


register("repmixer_block_dwconv", "cuda", _repmixer_block, _supports_repmixer_block)
# No sam3lt._C kernel of their own: the cuda backend runs the eager reference on torch's CUDA kernels (cuBLAS for the
# GEMMs), registered with auto=False (under auto the identical eager reference, or Triton, runs) so that a model
# forced to cuda runs end to end.
TORCH_OPS = ("mask_product", "add_layer_norm", "linear", "box_bias", "box_refine")
register("mask_product", "cuda", mask_product_reference, _supports_mask_product, auto=False)
register("add_layer_norm", "cuda", add_layer_norm_reference, lambda x, r, w, b, *_: _common((x, r, w, b)),
         auto=False)
register("linear", "cuda", linear_reference,
         lambda x, w, b=None, act=None, r=None, *_: _common([t for t in (x, w, b, r) if t is not None]), auto=False)
register("box_bias", "cuda", box_bias_reference, lambda boxes, height, width, *w: _common((boxes, *w)), auto=False)
register("box_refine", "cuda", box_refine_reference, lambda delta, boxes, num_feats, *_: _common((delta, boxes)),
         auto=False)
set_missing_check("cuda", missing_reason)
