"""The ``triton`` backend: the kernels of :mod:`sam3lt.kernels` as ``sam3lt::`` torch custom ops.

Each op is a ``torch.library.triton_op`` whose body allocates the output and launches the kernel through
``torch.library.wrap_triton``, so ``torch.compile`` (fullgraph) and make_fx trace into the kernel launch and
``torch.library.opcheck`` applies; the op body doubles as its fake (meta) implementation. A plain eager call
(real tensors, no tracing, no autograd needed) runs the op body directly and so skips the custom-op dispatch.
Without Triton the ops are not defined and every ``supports`` check returns "triton is not installed".

Interpreter (``TRITON_INTERPRET=1``): CPU tensors are accepted only while the variable is set *and* the kernels
were built for the interpreter (the variable was already set when ``triton`` was first imported). Interpreted
kernels cannot be traced, so in that mode the ops stay opaque under functionalization (torch.compile records
the op itself and runs it), and their fake implementation skips the launch.

Ops (schemas inferred from the annotations below):

- ``sam3lt::repmixer_dwconv(Tensor x, Tensor weight, Tensor bias, bool residual) -> Tensor``
- ``sam3lt::repmixer_block_dwconv(Tensor x, Tensor mixer_weight, Tensor mixer_bias, Tensor ffn_weight,
  Tensor ffn_bias) -> (Tensor, Tensor)``
- ``sam3lt::window_attention(Tensor qkv, Tensor cos, Tensor sin, int num_heads, int window_size,
  Tensor? pad_value) -> Tensor``
- ``sam3lt::box_bias_attention(Tensor q, Tensor k, Tensor v, Tensor bias_y, Tensor bias_x) -> Tensor``
- ``sam3lt::masked_attention(Tensor q, Tensor k, Tensor v, Tensor? key_padding_mask) -> Tensor``
- ``sam3lt::upsample_nearest_add(Tensor x, Tensor skip) -> Tensor``
- ``sam3lt::mask_product(Tensor mask_embed, Tensor pixel_embed) -> Tensor`` (registered with ``auto=False``:
  under ``auto`` torch's cuBLAS matmul runs; the Triton GEMM is used when the triton backend is named)
- ``sam3lt::masks_to_binary(Tensor mask_logits, int[] size, float threshold) -> Tensor``
- ``sam3lt::add_layer_norm(Tensor x, Tensor residual, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)``
- ``sam3lt::linear(Tensor x, Tensor weight, Tensor? bias, str? activation, Tensor? residual) -> Tensor`` (GEMM
  with the bias / GELU / ReLU / residual epilogue fused; ``auto=False`` like mask_product: cuBLAS + elementwise
  ops by default, the Triton GEMM where a call site or the process names the triton backend)
- ``sam3lt::box_bias(Tensor boxes, int height, int width, Tensor wy1, Tensor by1, Tensor wy2, Tensor by2,
  Tensor wx1, Tensor bx1, Tensor wx2, Tensor bx2) -> (Tensor, Tensor)`` (the DETR decoder's box bias, both axes in
  one launch; ``auto=True``)
- ``sam3lt::box_refine(Tensor delta, Tensor boxes, int num_feats) -> (Tensor, Tensor)`` (the DETR decoder's box
  refinement + sine encoding in one launch; ``auto=True``)
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import kernels as _kernels
from . import _contracts as contract
from ._backend import register, set_missing_check
from .box_bias import check_args as _box_bias_args
from .box_refine import check_args as _box_refine_args
from .linear import check_args as _linear_args

_INT32_LIMIT = 2**31 - 1

TRITON_MISSING: str | None = _kernels.triton_missing()
INTERPRETED = False
if TRITON_MISSING is None:
    try:
        from ..kernels import box_attention as _box
        from ..kernels import box_bias as _bb
        from ..kernels import box_refine as _br
        from ..kernels import layer_norm as _ln
        from ..kernels import linear as _lin
        from ..kernels import repmixer as _rep
        from ..kernels import upsample as _up
        from ..kernels import window_attention as _win
        from ..kernels._utils import is_interpreted
        from ..kernels._utils import plain_tensors as _plain_tensors

        INTERPRETED = is_interpreted(_rep._dwconv_kernel)
    except Exception as exc:  # pragma: no cover - a broken triton install
        TRITON_MISSING = f"the Triton kernels failed to import ({type(exc).__name__}: {exc})"


# ---------------------------------------------------------------- supports() checks

def _max_offset(t: torch.Tensor) -> int:
    return sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()) if s > 0)


def _common(tensors: Sequence[torch.Tensor], out_numel: int = 0) -> str | None:
    """Checks shared by every op: triton present, one device the kernels can run on, float dtypes, int32 offsets."""
    if TRITON_MISSING is not None:
        return TRITON_MISSING
    reason = contract.float_tensors_on_one_device(tensors)
    if reason is not None:
        return reason
    device = tensors[0].device
    if device.type == "cpu":
        if not _kernels.interpret_requested():
            return "inputs are on the CPU; the Triton kernels need CUDA tensors (or TRITON_INTERPRET=1)"
        if not INTERPRETED:
            return ("TRITON_INTERPRET=1 was set after triton was imported; set it before the first import of "
                    "triton to run the kernels in the interpreter")
    elif device.type != "cuda":
        return f"inputs are on {device.type}; the Triton kernels need CUDA tensors"
    for t in tensors:
        if INTERPRETED and t.dtype == torch.bfloat16:
            return "bfloat16 is not supported by the Triton interpreter"
        if _max_offset(t) > _INT32_LIMIT:
            return "a tensor spans more than 2**31 elements (the kernels index with int32)"
    if out_numel > _INT32_LIMIT:
        return "the output has more than 2**31 elements (the kernels index with int32)"
    return None


def _supports_repmixer(x, weight, bias, residual=True, *_):
    reason = contract.repmixer(x, weight, bias)
    if reason is None and weight.shape[1] > _rep.MAX_TAPS:
        reason = f"kernel size {weight.shape[1]} > {_rep.MAX_TAPS} (taps are unrolled)"
    return reason or _common((x, weight, bias), x.numel())


def _supports_repmixer_block(x, w1, b1, w2, b2, *_):
    for weight, bias in ((w1, b1), (w2, b2)):
        reason = _supports_repmixer(x, weight, bias, True)
        if reason is not None:
            return reason
    if x.shape[1] > _rep.MAX_BLOCK_L:
        return f"prompt length {x.shape[1]} > {_rep.MAX_BLOCK_L} (one tile holds a whole prompt)"
    return None


def _supports_window_attention(qkv, cos, sin, num_heads, window_size, pad_value=None, *_):
    reason = contract.window_attention(qkv, cos, sin, num_heads, window_size, pad_value)
    if reason is not None:
        return reason
    head_dim = qkv.shape[-1] // (3 * num_heads)
    if head_dim % 2:
        return f"odd head dim {head_dim} (RoPE rotates channel pairs)"
    if head_dim > _win.MAX_HEAD_DIM:
        return f"head dim {head_dim} > {_win.MAX_HEAD_DIM}"
    tensors = [qkv, cos, sin] + ([pad_value] if pad_value is not None else [])
    return _common(tensors, qkv.numel() // 3)


def _head_dim_reason(q) -> str | None:
    return f"head dim {q.shape[-1]} > {_box.MAX_HEAD_DIM}" if q.shape[-1] > _box.MAX_HEAD_DIM else None


def _supports_box_bias_attention(q, k, v, bias_y, bias_x, *_):
    return (contract.box_bias_attention(q, k, v, bias_y, bias_x) or _head_dim_reason(q)
            or _common((q, k, v, bias_y, bias_x), q.numel()))


def _supports_masked_attention(q, k, v, key_padding_mask=None, *_):
    return (contract.masked_attention(q, k, v, key_padding_mask) or _head_dim_reason(q)
            or _common((q, k, v), q.numel()))


def _supports_upsample_nearest_add(x, skip, *_):
    return contract.upsample_nearest_add(x, skip) or _common((x, skip), skip.numel())


def _supports_mask_product(mask_embed, pixel_embed, *_):
    reason = contract.mask_product(mask_embed, pixel_embed)
    if reason is not None:
        return reason
    out_numel = mask_embed.shape[0] * mask_embed.shape[1] * pixel_embed.shape[2] * pixel_embed.shape[3]
    return _common((mask_embed, pixel_embed), out_numel)


def _supports_masks_to_binary(mask_logits, size, threshold=0.5, *_):
    return (contract.masks_to_binary(mask_logits, size)
            or _common((mask_logits,), mask_logits.shape[0] * int(size[0]) * int(size[1])))


def _supports_add_layer_norm(x, residual, weight, bias, eps=1e-5, *_):
    reason = contract.add_layer_norm(x, residual, weight, bias)
    if reason is None and x.shape[-1] > _ln.MAX_CHANNELS:
        reason = f"{x.shape[-1]} channels > {_ln.MAX_CHANNELS} (a row is normalised in registers)"
    if reason is None and weight.dtype not in (x.dtype, torch.float32):
        reason = f"weight dtype {weight.dtype} is neither x's ({x.dtype}) nor float32"
    return reason or _common((x, residual, weight, bias))  # rows are indexed in int64: no output limit


def _supports_linear(x, weight, bias=None, activation=None, residual=None, *_):
    problem = _linear_args(x, weight, bias, activation, residual)
    if problem is not None:
        return problem[1]
    rows = x.shape[:-1].numel()
    # x may be copied by the launcher's reshape (an expanded x): its element count must fit int32 too
    return _common([t for t in (x, weight, bias, residual) if t is not None],
                   max(rows * weight.shape[0], x.numel()))


def _supports_box_bias(boxes, height, width, *weights):
    problem = _box_bias_args(boxes, height, width, *weights)
    if problem is not None:
        return problem[1]
    out_numel = boxes.shape[0] * weights[2].shape[0] * (boxes.shape[1] + 1) * max(height, width)
    return _common((boxes, *weights), out_numel)


def _supports_box_refine(delta, boxes, num_feats, *_):
    problem = _box_refine_args(delta, boxes, num_feats)
    if problem is not None:
        return problem[1]
    return _common((delta, boxes), delta.shape[0] * delta.shape[1] * 4 * num_feats)


# ---------------------------------------------------------------- custom ops

def _define(name: str, fn):
    """``sam3lt::<name>`` as a triton_op (custom_op + fake = the body where triton_op is missing)."""
    qualname = f"sam3lt::{name}"
    if hasattr(torch.library, "triton_op"):
        op = torch.library.triton_op(qualname, fn, mutates_args=())
    else:  # pragma: no cover - torch < 2.6
        op = torch.library.custom_op(qualname, fn, mutates_args=())
        op.register_fake(fn)
    if INTERPRETED:
        # Interpreted kernels read real memory and cannot be recorded by wrap_triton: keep the op itself in
        # functionalized graphs (as torch.export does for triton ops) instead of decomposing it.
        from torch._subclasses.functional_tensor import FunctionalTensorMode

        def _opaque(mode, op_, types, args, kwargs):
            return mode.__torch_dispatch__(op_, types, args, kwargs)

        op.register_torch_dispatch(FunctionalTensorMode, _opaque)
    return op


if TRITON_MISSING is None:
    Tensor = torch.Tensor

    def _repmixer_dwconv(x: Tensor, weight: Tensor, bias: Tensor, residual: bool) -> Tensor:
        return _rep.repmixer_dwconv(x, weight, bias, residual)

    def _repmixer_block_dwconv(x: Tensor, mixer_weight: Tensor, mixer_bias: Tensor, ffn_weight: Tensor,
                               ffn_bias: Tensor) -> tuple[Tensor, Tensor]:
        return _rep.repmixer_block_dwconv(x, mixer_weight, mixer_bias, ffn_weight, ffn_bias)

    def _window_attention(qkv: Tensor, cos: Tensor, sin: Tensor, num_heads: int, window_size: int,
                          pad_value: Tensor | None) -> Tensor:
        return _win.window_attention(qkv, cos, sin, num_heads, window_size, pad_value)

    def _box_bias_attention(q: Tensor, k: Tensor, v: Tensor, bias_y: Tensor, bias_x: Tensor) -> Tensor:
        return _box.box_bias_attention(q, k, v, bias_y, bias_x)

    def _masked_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None) -> Tensor:
        return _box.masked_attention(q, k, v, key_padding_mask)

    def _upsample_nearest_add(x: Tensor, skip: Tensor) -> Tensor:
        return _up.upsample_nearest_add(x, skip)

    def _mask_product(mask_embed: Tensor, pixel_embed: Tensor) -> Tensor:
        return _up.mask_product(mask_embed, pixel_embed)

    def _masks_to_binary(mask_logits: Tensor, size: Sequence[int], threshold: float) -> Tensor:
        return _up.masks_to_binary(mask_logits, size, threshold)

    def _add_layer_norm(x: Tensor, residual: Tensor, weight: Tensor, bias: Tensor,
                        eps: float) -> tuple[Tensor, Tensor]:
        return _ln.add_layer_norm(x, residual, weight, bias, eps)

    def _linear(x: Tensor, weight: Tensor, bias: Tensor | None, activation: str | None,
                residual: Tensor | None) -> Tensor:
        return _lin.linear(x, weight, bias, activation, residual)

    def _box_bias(boxes: Tensor, height: int, width: int, wy1: Tensor, by1: Tensor, wy2: Tensor, by2: Tensor,
                  wx1: Tensor, bx1: Tensor, wx2: Tensor, bx2: Tensor) -> tuple[Tensor, Tensor]:
        return _bb.box_bias(boxes, height, width, wy1, by1, wy2, by2, wx1, bx1, wx2, bx2)

    def _box_refine(delta: Tensor, boxes: Tensor, num_feats: int) -> tuple[Tensor, Tensor]:
        return _br.box_refine(delta, boxes, num_feats)

    _BODIES = {
        "repmixer_dwconv": _repmixer_dwconv, "repmixer_block_dwconv": _repmixer_block_dwconv,
        "window_attention": _window_attention,
        "box_bias_attention": _box_bias_attention, "masked_attention": _masked_attention,
        "upsample_nearest_add": _upsample_nearest_add, "mask_product": _mask_product,
        "masks_to_binary": _masks_to_binary, "add_layer_norm": _add_layer_norm, "linear": _linear,
        "box_bias": _box_bias, "box_refine": _box_refine,
    }
    OPS = {name: _define(name, body) for name, body in _BODIES.items()}
else:
    _BODIES = {}
    OPS = {}


def _plain_eager_call(args) -> bool:
    """True for a plain eager call: not traced by torch.compile, no torch_dispatch mode (fake tensors, make_fx,
    functionalization) active, only plain tensors, nothing that needs autograd. The op's own dispatch costs
    tens of microseconds per call, so such calls run the op body (the launcher) directly."""
    if not _plain_tensors(args):
        return False
    if torch.is_grad_enabled():
        return not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
    return True


def _impl(name: str):
    if name not in OPS:
        def missing(*args):  # pragma: no cover - supports() rejects first
            raise RuntimeError(f"sam3lt::{name}: {TRITON_MISSING}")

        return missing
    op = getattr(torch.ops.sam3lt, name)
    body = _BODIES[name]

    def run(*args):
        if _plain_eager_call(args):
            return body(*args)
        return op(*args)

    run.__name__ = f"triton_{name}"
    return run


_SUPPORTS = {
    "repmixer_dwconv": _supports_repmixer,
    "repmixer_block_dwconv": _supports_repmixer_block,
    "window_attention": _supports_window_attention,
    "box_bias_attention": _supports_box_bias_attention,
    "masked_attention": _supports_masked_attention,
    "upsample_nearest_add": _supports_upsample_nearest_add,
    "mask_product": _supports_mask_product,
    "masks_to_binary": _supports_masks_to_binary,
    "add_layer_norm": _supports_add_layer_norm,
    "linear": _supports_linear,
    "box_bias": _supports_box_bias,
    "box_refine": _supports_box_refine,
}
# Registered with auto=False: the cuBLAS call of the eager reference stays the default, the Triton GEMM runs
# where the triton backend is named (or sam3lt.ops.autotune measured it faster).
NOT_AUTO = ("mask_product", "linear")


def _checked(check):
    def supports(*args):
        if TRITON_MISSING is not None:
            return TRITON_MISSING
        return check(*args)

    supports.__doc__ = check.__doc__
    return supports


for _name, _check in _SUPPORTS.items():
    register(_name, "triton", _impl(_name), _checked(_check), auto=_name not in NOT_AUTO)
set_missing_check("triton", lambda: TRITON_MISSING)
