"""The DETR decoder's box bias (``sam3lt.ops.box_bias``): every backend registered for it (tests/_backends.py) against
the eager reference (fp64 bound), the reference against the decoder's original code (bitwise), argument checks,
dispatch, opcheck, and the decoder."""
from _interp import DEVICE, check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401
from _backends import targets

import math

import pytest
import torch
import torch.nn.functional as F

import sam3lt
import sam3lt.ops as ops
from sam3lt.model.common import DecoderMLP, box_cxcywh_to_xyxy
from sam3lt.ops import _backend
import seeds


def _weights(gen, hidden=256, heads=8, dtype=torch.float32, device=DEVICE):
    """box_rpb_embed_y / _x layer1/layer2 weights at nn.Linear-like scales (layer1 fan-in 2: O(1) weights)."""
    out = []
    for _ in "yx":
        out += [randn(gen, hidden, 2, dtype=dtype, device=device),
                randn(gen, hidden, dtype=dtype, scale=0.5, device=device),
                randn(gen, heads, hidden, dtype=dtype, scale=hidden ** -0.5, device=device),
                randn(gen, heads, dtype=dtype, scale=0.1, device=device)]
    return out


def _boxes(gen, batch, queries, dtype=torch.float32, spread=1.0, device=DEVICE):
    """cxcywh: centres and sizes in (0, 1) (sigmoid outputs, as the decoder's), a few degenerate (w = 0, h = 0);
    ``spread`` > 1 puts some edges outside [0, 1]."""
    b = torch.rand(batch, queries, 4, generator=gen) * spread - (spread - 1) / 2
    b[..., 2:] = b[..., 2:].abs()
    if queries > 2:
        b[:, 0, 2] = 0.0  # zero width
        b[:, 1, 3] = 0.0  # zero height
        b[:, 2, :2] = 0.5  # centre on a grid line of even grids (a delta of exactly 0 for w = 0)
    return b.to(device, dtype)


def _check(backend, boxes, height, width, weights, what=""):
    y, x = ops.box_bias(boxes, height, width, *weights, backend=backend)
    ref64 = ops.box_bias_reference(boxes.double(), height, width, *[w.double() for w in weights])
    ref = ops.box_bias_reference(boxes, height, width, *weights)
    for out, r64, r, name in zip((y, x), ref64, ref, ("bias_y", "bias_x")):
        assert out.is_contiguous() or backend != "triton"  # the kernel's layout (eager and cuda return permuted views)
        check_close(out, r64, r, boxes.dtype, f"{what} {name}")
        assert not out[:, :, 0].any(), "the presence token's row must be zero"


# (B, Q, H, W, hidden, heads): one query; H != W; the real model's queries and MLP on a small grid; ragged hidden
# (not a multiple of the hidden chunk) and head counts other than 8 (padded to 16, and 16 itself)
CASES = [(1, 1, 5, 9, 256, 8), (3, 7, 24, 24, 256, 8), (1, 200, 5, 9, 256, 8), (3, 7, 9, 5, 40, 3),
         (2, 5, 6, 4, 20, 16)]


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("box_bias", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("B, Q, H, W, hidden, heads", CASES, ids=lambda v: str(v))
def test_box_bias_shapes(target, B, Q, H, W, hidden, heads, dtype, request):
    gen, dev = seed_for(request), target.device
    _check(target.backend, _boxes(gen, B, Q, dtype, device=dev), H, W, _weights(gen, hidden, heads, dtype, dev),
           (B, Q, H, W, hidden, heads))


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("box_bias", dtypes=True), indirect=["target"])
def test_box_bias_edges_outside_the_image(target, dtype, request):
    gen, dev = seed_for(request), target.device
    _check(target.backend, _boxes(gen, 2, 30, dtype, spread=1.6, device=dev), 7, 11, _weights(gen, 64, 8, dtype, dev),
           "spread")


@kernel_test
@pytest.mark.parametrize("target", targets("box_bias"), indirect=True)
def test_box_bias_strided_boxes(target, request):
    gen, dev, backend = seed_for(request), target.device, target.backend
    weights = _weights(gen, 48, 8, device=dev)
    wide = _boxes(gen, 3, 9, spread=1.0, device=dev).repeat(1, 1, 2)[..., 1:5]  # last-dim slice: strides (72, 8, 1)
    _check(backend, wide, 6, 5, weights, "sliced")
    _check(backend, _boxes(gen, 4, 3, device=dev).transpose(0, 1), 6, 5, weights, "transposed")  # batch stride 4
    # batch stride 0, as the first layer's
    _check(backend, _boxes(gen, 1, 11, device=dev).expand(3, 11, 4), 6, 5, weights, "expanded")


@kernel_test
@pytest.mark.parametrize("target", targets("box_bias"), indirect=True)
def test_box_bias_empty(target, request):
    gen, dev = seed_for(request), target.device
    weights = _weights(gen, 32, 8, device=dev)
    y, x = ops.box_bias(_boxes(gen, 2, 0, device=dev), 3, 4, *weights, backend=target.backend)  # the zero row only
    assert y.shape == (2, 8, 1, 3) and x.shape == (2, 8, 1, 4) and not y.any() and not x.any()
    y, x = ops.box_bias(_boxes(gen, 0, 5, device=dev), 3, 4, *weights, backend=target.backend)
    assert y.shape == (0, 8, 6, 3) and x.shape == (0, 8, 6, 4)


@kernel_test
def test_box_bias_eager_fast_path_and_opcheck(request):
    gen = seed_for(request)
    args = (_boxes(gen, 2, 7), 5, 9, *_weights(gen, 40, 8))
    fast = ops.box_bias(*args, backend="triton")
    via_op = torch.ops.sam3lt.box_bias(*args)
    assert all(torch.equal(a, b) for a, b in zip(fast, via_op))
    torch.library.opcheck(torch.ops.sam3lt.box_bias.default, args)


@kernel_test
def test_box_bias_dispatch(request, monkeypatch):
    """auto: the triton kernel wherever it can run (CUDA, or CPU tensors in the interpreter), else eager; the cuda
    backend (torch's kernels: the reference) only when named."""
    gen = seed_for(request)
    args = (_boxes(gen, 1, 3), 4, 4, *_weights(gen, 16, 8))
    assert _backend._REGISTRY["box_bias"]["triton"].auto and not _backend._REGISTRY["box_bias"]["cuda"].auto
    assert _backend.select("box_bias", None, *args)[0] == "triton"
    if DEVICE == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        assert _backend.select("box_bias", None, *args)[0] == "eager"
        assert "CUDA" in ops.explain("box_bias", *args)["cuda"]
        with pytest.raises(ops.BackendUnavailable, match="box_bias"):
            ops.box_bias(*args, backend="cuda")


def test_triton_supports_gives_reasons():
    from sam3lt.ops import _triton

    gen = seeds.gen(0)
    boxes, weights = torch.rand(1, 3, 4, generator=gen), [w.cpu() for w in _weights(gen, 16, 8)]
    assert "dtype" in _backend.unavailable_reason("box_bias", "triton", boxes.double(), 4, 4, *[w.double() for w in weights])
    assert "wx2" in _backend.unavailable_reason("box_bias", "triton", boxes, 4, 4, *weights[:6], weights[6][:, :3], weights[7])
    if _triton.INTERPRETED:
        assert "bfloat16" in _backend.unavailable_reason("box_bias", "triton", boxes.bfloat16(), 4, 4, *[w.bfloat16() for w in weights])


def _bad(**kw):
    gen = seeds.gen(0)
    names = ("wy1", "by1", "wy2", "by2", "wx1", "bx1", "wx2", "bx2")
    args = dict(boxes=torch.rand(2, 3, 4), height=4, width=5,
                **dict(zip(names, [w.cpu() for w in _weights(gen, 16, 8)])))
    args.update(kw)
    return args


@pytest.mark.parametrize("kw, exc, name", [
    (dict(boxes=torch.rand(2, 3, 5)), ValueError, "boxes"),
    (dict(boxes=torch.rand(3, 4)), ValueError, "boxes"),
    (dict(boxes=[[0.5] * 4]), TypeError, "boxes"),
    (dict(boxes=torch.ones(2, 3, 4, dtype=torch.long)), TypeError, "boxes"),
    (dict(height=0), ValueError, "height"),
    (dict(width=4.0), TypeError, "width"),
    (dict(height=True), TypeError, "height"),
    (dict(wy1=torch.randn(16, 3)), ValueError, "wy1"),
    (dict(by1=torch.randn(15)), ValueError, "by1"),
    (dict(wy2=torch.randn(8, 15)), ValueError, "wy2"),
    (dict(by2=torch.randn(7)), ValueError, "by2"),
    (dict(wx1=torch.randn(16, 2).half()), TypeError, "wx1"),
    (dict(bx1=torch.randn(16, device="meta")), ValueError, "bx1"),
    (dict(wx2=torch.randn(4, 16)), ValueError, "wx2"),
    (dict(bx2=None), TypeError, "bx2"),
])
def test_argument_errors_name_the_argument(kw, exc, name):
    with pytest.raises(exc, match=rf"box_bias: {name}\b"):
        ops.box_bias(**_bad(**kw))


# ---------------------------------------------------------------- the decoder

def _original_box_bias(decoder, boxes, height, width):
    """DetrDecoder.box_bias as it was before it called ops.box_bias (HF's code): the spec of the reference."""
    def log_deltas(coords, lo, hi):
        deltas = coords.view(1, 1, -1, 1) - torch.stack([lo, hi], dim=-1).unsqueeze(2)
        deltas = deltas * 8
        return torch.sign(deltas) * torch.log2(torch.abs(deltas) + 1.0) / math.log2(8)

    x0, y0, x1, y1 = box_cxcywh_to_xyxy(boxes).unbind(-1)
    coords_h = torch.arange(0, height, device=boxes.device, dtype=boxes.dtype) / height
    coords_w = torch.arange(0, width, device=boxes.device, dtype=boxes.dtype) / width
    by = decoder.box_rpb_embed_y(log_deltas(coords_h, y0, y1))
    bx = decoder.box_rpb_embed_x(log_deltas(coords_w, x0, x1))
    pad = (0, 0, 0, 0, 1, 0)
    return F.pad(by, pad).permute(0, 3, 1, 2), F.pad(bx, pad).permute(0, 3, 1, 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_decoder_eager_is_the_original_code_bitwise(dtype):
    torch.manual_seed(seeds.BASE)
    decoder = sam3lt.Sam3LiteTextModel(sam3lt.Sam3LiteTextConfig.tiny()).detr_decoder.to(dtype)
    boxes = _boxes(seeds.gen(1), 2, 13, dtype).cpu()
    with torch.no_grad(), ops.use_backend("eager"):
        got = decoder.box_bias(boxes, 6, 9)
        want = _original_box_bias(decoder, boxes, 6, 9)
        # the model-sized MLP too (hidden 256, 8 heads), through the module itself
        ey, ex = DecoderMLP(2, 256, 8, 2).to(dtype), DecoderMLP(2, 256, 8, 2).to(dtype)
        decoder.box_rpb_embed_y, decoder.box_rpb_embed_x = ey, ex
        got_big, want_big = decoder.box_bias(boxes, 24, 24), _original_box_bias(decoder, boxes, 24, 24)
    for a, b in zip(got + got_big, want + want_big):
        assert a.shape == b.shape and a.stride() == b.stride() and torch.equal(a, b)


@kernel_test
@pytest.mark.parametrize("target", targets("box_bias"), indirect=True)
def test_decoder_backend_equals_eager(target, request):
    torch.manual_seed(seeds.BASE)
    decoder = sam3lt.Sam3LiteTextModel(sam3lt.Sam3LiteTextConfig.tiny()).detr_decoder.to(target.device)
    boxes = _boxes(seed_for(request), 2, decoder.reference_points.weight.shape[0], device=target.device)
    with torch.no_grad():
        with ops.use_backend("eager"):
            ref = decoder.box_bias(boxes, 7, 10)
        with ops.use_backend(target.backend):
            out = decoder.box_bias(boxes, 7, 10)
    for a, b in zip(out, ref):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
