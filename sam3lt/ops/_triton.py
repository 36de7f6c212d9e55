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
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import kernels as _kernels
from ._backend import register, set_missing_check

_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_INT32_LIMIT = 2**31 - 1

TRITON_MISSING: str | None = _kernels.triton_missing()
INTERPRETED = False
if TRITON_MISSING is None:
    try:
        from ..kernels import box_attention as _box
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
    for t in tensors:
        if t.dtype not in _FLOATS:
            return f"unsupported dtype {t.dtype} (fp32, fp16 and bf16 are supported)"
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        return f"inputs are on different devices ({', '.join(sorted(str(d) for d in devices))})"
    device = next(iter(devices))
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
    if x.dim() != 3 or weight.dim() != 2 or bias.dim() != 1:
        return "expects x (B, L, C), weight (C, K), bias (C,)"
    channels, taps = weight.shape
    if x.shape[-1] != channels or bias.shape[0] != channels:
        return "x, weight and bias disagree on the channel count"
    if taps % 2 == 0:
        return f"even kernel size {taps} (only odd K has symmetric 'same' padding)"
    if taps > _rep.MAX_TAPS:
        return f"kernel size {taps} > {_rep.MAX_TAPS} (taps are unrolled)"
    return _common((x, weight, bias), x.numel())


def _supports_repmixer_block(x, w1, b1, w2, b2, *_):
    for weight, bias in ((w1, b1), (w2, b2)):
        reason = _supports_repmixer(x, weight, bias, True)
        if reason is not None:
            return reason
    if x.dim() == 3 and x.shape[1] > _rep.MAX_BLOCK_L:
        return f"prompt length {x.shape[1]} > {_rep.MAX_BLOCK_L} (one tile holds a whole prompt)"
    return None


def _supports_window_attention(qkv, cos, sin, num_heads, window_size, pad_value=None, *_):
    if qkv.dim() != 4 or cos.dim() != 2 or sin.dim() != 2:
        return "expects qkv (B, H, W, 3·C) and cos/sin (T, D)"
    batch, height, width, three_c = qkv.shape
    if num_heads <= 0 or three_c % (3 * num_heads) != 0:
        return f"qkv channels {three_c} are not 3 × num_heads ({num_heads}) × head_dim"
    head_dim = three_c // (3 * num_heads)
    if head_dim % 2:
        return f"odd head dim {head_dim} (RoPE rotates channel pairs)"
    if head_dim > _win.MAX_HEAD_DIM:
        return f"head dim {head_dim} > {_win.MAX_HEAD_DIM}"
    if window_size < 0:
        return f"negative window size {window_size}"
    tokens = window_size * window_size if window_size > 0 else height * width
    if tuple(cos.shape) != (tokens, head_dim) or tuple(sin.shape) != (tokens, head_dim):
        return f"cos/sin must be ({tokens}, {head_dim}) for this window"
    tensors = [qkv, cos, sin]
    if pad_value is not None:
        if pad_value.dim() != 1 or pad_value.shape[0] != three_c:
            return f"pad_value must be ({three_c},)"
        tensors.append(pad_value)
    return _common(tensors, qkv.numel() // 3)


def _check_qkv(q, k, v) -> str | None:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "expects q, k, v of shape (B, heads, L, D)"
    if k.shape != v.shape or q.shape[:2] != k.shape[:2] or q.shape[-1] != k.shape[-1]:
        return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match"
    if not (q.dtype == k.dtype == v.dtype):
        return f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype})"
    if q.shape[-1] > _box.MAX_HEAD_DIM:
        return f"head dim {q.shape[-1]} > {_box.MAX_HEAD_DIM}"
    return None


def _supports_box_bias_attention(q, k, v, bias_y, bias_x, *_):
    reason = _check_qkv(q, k, v)
    if reason is not None:
        return reason
    if bias_y.dim() != 4 or bias_x.dim() != 4:
        return "expects bias_y (B, heads, Lq, Hg) and bias_x (B, heads, Lq, Wg)"
    if bias_y.shape[:3] != q.shape[:3] or bias_x.shape[:3] != q.shape[:3]:
        return "bias_y / bias_x leading dims must be (B, heads, Lq)"
    if bias_y.shape[-1] * bias_x.shape[-1] != k.shape[2]:
        return f"keys ({k.shape[2]}) != Hg·Wg ({bias_y.shape[-1]}·{bias_x.shape[-1]})"
    return _common((q, k, v, bias_y, bias_x), q.numel())


def _supports_masked_attention(q, k, v, key_padding_mask=None, *_):
    reason = _check_qkv(q, k, v)
    if reason is not None:
        return reason
    if key_padding_mask is not None:
        if tuple(key_padding_mask.shape) != (k.shape[0], k.shape[2]):
            return f"key_padding_mask must be (B, Lk) = ({k.shape[0]}, {k.shape[2]})"
        if key_padding_mask.device != q.device:
            return f"inputs are on different devices ({q.device}, {key_padding_mask.device})"
        if key_padding_mask.dtype.is_complex:
            return f"unsupported key_padding_mask dtype {key_padding_mask.dtype}"
    return _common((q, k, v), q.numel())


def _supports_upsample_nearest_add(x, skip, *_):
    if x.dim() != 4 or skip.dim() != 4 or x.shape[:2] != skip.shape[:2]:
        return "expects x (B, C, h, w) and skip (B, C, H, W)"
    if x.dtype != skip.dtype:
        return f"x and skip dtypes differ ({x.dtype}, {skip.dtype})"
    if (x.shape[-1] == 0 or x.shape[-2] == 0) and skip.numel() > 0:
        return "empty input grid"
    return _common((x, skip), skip.numel())


def _supports_mask_product(mask_embed, pixel_embed, *_):
    if mask_embed.dim() != 3 or pixel_embed.dim() != 4:
        return "expects mask_embed (B, Q, C) and pixel_embed (B, C, H, W)"
    if mask_embed.shape[0] != pixel_embed.shape[0] or mask_embed.shape[2] != pixel_embed.shape[1]:
        return "mask_embed and pixel_embed disagree on B or C"
    if mask_embed.dtype != pixel_embed.dtype:
        return f"dtypes differ ({mask_embed.dtype}, {pixel_embed.dtype})"
    out_numel = mask_embed.shape[0] * mask_embed.shape[1] * pixel_embed.shape[2] * pixel_embed.shape[3]
    return _common((mask_embed, pixel_embed), out_numel)


def _supports_masks_to_binary(mask_logits, size, threshold=0.5, *_):
    if mask_logits.dim() != 3 or len(size) != 2:
        return "expects mask_logits (N, h, w) and size (H, W)"
    if (mask_logits.shape[1] == 0 or mask_logits.shape[2] == 0) and mask_logits.shape[0] > 0:
        return "empty input masks"
    return _common((mask_logits,), mask_logits.shape[0] * int(size[0]) * int(size[1]))


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

    _BODIES = {
        "repmixer_dwconv": _repmixer_dwconv, "repmixer_block_dwconv": _repmixer_block_dwconv,
        "window_attention": _window_attention,
        "box_bias_attention": _box_bias_attention, "masked_attention": _masked_attention,
        "upsample_nearest_add": _upsample_nearest_add, "mask_product": _mask_product,
        "masks_to_binary": _masks_to_binary,
    }
    OPS = {
        "repmixer_dwconv": _define("repmixer_dwconv", _repmixer_dwconv),
        "repmixer_block_dwconv": _define("repmixer_block_dwconv", _repmixer_block_dwconv),
        "window_attention": _define("window_attention", _window_attention),
        "box_bias_attention": _define("box_bias_attention", _box_bias_attention),
        "masked_attention": _define("masked_attention", _masked_attention),
        "upsample_nearest_add": _define("upsample_nearest_add", _upsample_nearest_add),
        "mask_product": _define("mask_product", _mask_product),
        "masks_to_binary": _define("masks_to_binary", _masks_to_binary),
    }
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
}


def _checked(check):
    def supports(*args):
        if TRITON_MISSING is not None:
            return TRITON_MISSING
        return check(*args)

    supports.__doc__ = check.__doc__
    return supports


for _name, _check in _SUPPORTS.items():
    register(_name, "triton", _impl(_name), _checked(_check), auto=_name != "mask_product")
set_missing_check("triton", lambda: TRITON_MISSING)
