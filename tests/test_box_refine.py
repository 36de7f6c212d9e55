"""The DETR decoder's box refinement + sine encoding (``sam3lt.ops.box_refine``): every backend registered for it
(tests/_backends.py) against the eager reference (fp64 bound), the reference against the decoder's expressions
(bitwise), argument checks, dispatch, opcheck."""
from _interp import DEVICE, check_close, interpreter_env, kernel_test, seed_for  # noqa: F401
from _backends import targets

import math

import pytest
import torch

import sam3lt.ops as ops
from sam3lt.model.common import encode_boxes_sine, inverse_sigmoid
from sam3lt.ops import _backend
import seeds


def _inputs(gen, batch, queries, dtype=torch.float32, delta_scale=2.0, device=DEVICE):
    """delta ~ N(0, delta_scale²) (a few large), boxes in (0, 1) with some at the clamps (1e-5, 1 − 1e-5, 0, 1)."""
    delta = torch.randn(batch, queries, 4, generator=gen) * delta_scale
    boxes = torch.rand(batch, queries, 4, generator=gen)
    flat_b, flat_d = boxes.view(-1), delta.view(-1)
    extremes = torch.tensor([1e-5, 1 - 1e-5, 0.0, 1.0, 1e-3, 1 - 1e-3, 5e-4, 0.5])
    n = min(flat_b.numel(), extremes.numel())
    flat_b[:n] = extremes[:n]
    big = torch.tensor([40.0, -40.0, 12.0, -12.0, 0.0, 7.5, -7.5, 100.0])
    m = min(flat_d.numel(), big.numel())
    flat_d[-m:] = big[:m]
    return delta.to(device, dtype), boxes.to(device, dtype)


def _check(backend, delta, boxes, num_feats, what=""):
    new, enc = ops.box_refine(delta, boxes, num_feats, backend=backend)
    new64, enc64 = ops.box_refine_reference(delta.double(), boxes.double(), num_feats)
    new_lp, enc_lp = ops.box_refine_reference(delta, boxes, num_feats)
    if backend == "triton":  # the kernel writes contiguous outputs; the reference (eager, cuda) keeps delta's strides
        assert new.is_contiguous() and enc.is_contiguous()
    check_close(new, new64, new_lp, delta.dtype, f"{what} new_boxes")
    check_close(enc, enc64, enc_lp, delta.dtype, f"{what} encoding")
    # the encoding is that of the stored (rounded) boxes: against the fp64 encoding of ``new`` itself
    enc_of_new = encode_boxes_sine(new.double(), num_feats)
    check_close(enc, enc_of_new, encode_boxes_sine(new, num_feats), delta.dtype, f"{what} encoding of new_boxes")


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("box_refine", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("num_feats", [2, 16, 128])
@pytest.mark.parametrize("B, Q", [(1, 1), (3, 7), (1, 200), (3, 200)], ids=lambda v: str(v))
def test_box_refine_shapes(target, B, Q, num_feats, dtype, request):
    gen = seed_for(request)
    _check(target.backend, *_inputs(gen, B, Q, dtype, device=target.device), num_feats, (B, Q, num_feats))


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("box_refine", dtypes=True), indirect=["target"])
def test_box_refine_large_deltas_and_ragged_feats(target, dtype, request):
    gen, dev, backend = seed_for(request), target.device, target.backend
    _check(backend, *_inputs(gen, 2, 9, dtype, delta_scale=30.0, device=dev), 128, "large deltas")
    _check(backend, *_inputs(gen, 2, 5, dtype, device=dev), 6, "num_feats 6 (3 pairs, padded to 4)")
    _check(backend, *_inputs(gen, 1, 3, dtype, device=dev), 258, "num_feats 258")


@kernel_test
@pytest.mark.parametrize("target", targets("box_refine"), indirect=True)
def test_box_refine_clamps(target, request):
    """Boxes at and beyond the clamps (x ≤ 1e-3, x ≥ 1 − 1e-3, outside [0, 1]) with zero delta: the refined box is
    sigmoid(±log(1e3)) (or sigmoid of the box's own log-odds inside the clamp range)."""
    boxes = torch.tensor([[[1e-5, 1 - 1e-5, 0.0, 1.0], [-0.5, 1.5, 1e-3, 0.999], [0.25, 0.5, 0.75, 2e-3]]],
                         device=target.device)
    delta = torch.zeros_like(boxes)
    new, _ = ops.box_refine(delta, boxes, 16, backend=target.backend)
    lo, hi = 1 / (1 + 1e3), 1e3 / (1 + 1e3)
    want = torch.tensor([[[lo, hi, lo, hi], [lo, hi, 1e-3, 0.999], [0.25, 0.5, 0.75, 2e-3]]], device=target.device)
    torch.testing.assert_close(new, want, rtol=1e-5, atol=1e-6)
    _check(target.backend, delta, boxes, 16, "clamps")


@kernel_test
@pytest.mark.parametrize("target", targets("box_refine"), indirect=True)
def test_box_refine_strided_inputs(target, request):
    gen, dev, backend = seed_for(request), target.device, target.backend
    delta, boxes = _inputs(gen, 3, 9, device=dev)
    wide_d = delta.repeat(1, 1, 2)[..., 1:5]  # last-dim slice: strides (72, 8, 1)
    _check(backend, wide_d, boxes, 16, "sliced delta")
    _check(backend, delta.transpose(0, 1).contiguous().transpose(0, 1),
           boxes.transpose(0, 1).contiguous().transpose(0, 1), 16, "batch-minor")
    _check(backend, delta, boxes[:1].expand(3, 9, 4), 16, "expanded boxes (batch stride 0, the first layer's)")
    spaced = torch.empty(3, 9, 8, device=dev)[..., ::2]  # last-dim stride 2
    spaced.copy_(boxes)
    _check(backend, delta, spaced, 8, "strided boxes")


@kernel_test
@pytest.mark.parametrize("target", targets("box_refine"), indirect=True)
def test_box_refine_empty(target, request):
    dev = target.device
    new, enc = ops.box_refine(torch.zeros(2, 0, 4, device=dev), torch.zeros(2, 0, 4, device=dev), 16,
                              backend=target.backend)
    assert new.shape == (2, 0, 4) and enc.shape == (2, 0, 64)
    new, enc = ops.box_refine(torch.zeros(0, 5, 4, device=dev), torch.zeros(0, 5, 4, device=dev), 16,
                              backend=target.backend)
    assert new.shape == (0, 5, 4) and enc.shape == (0, 5, 64)


@kernel_test
def test_box_refine_fast_path_and_opcheck(request):
    gen = seed_for(request)
    args = (*_inputs(gen, 2, 7), 16)
    fast = ops.box_refine(*args, backend="triton")
    via_op = torch.ops.sam3lt.box_refine(*args)
    assert all(torch.equal(a, b) for a, b in zip(fast, via_op))
    torch.library.opcheck(torch.ops.sam3lt.box_refine.default, args)


@kernel_test
def test_box_refine_dispatch(request, monkeypatch):
    """auto: the triton kernel wherever it can run (CUDA, or CPU tensors in the interpreter), else eager; the cuda
    backend (torch's kernels: the reference) only when named."""
    gen = seed_for(request)
    args = (*_inputs(gen, 1, 3), 8)
    assert _backend._REGISTRY["box_refine"]["triton"].auto and not _backend._REGISTRY["box_refine"]["cuda"].auto
    assert _backend.select("box_refine", None, *args)[0] == "triton"
    eager = ops.box_refine(*args, backend="eager")
    want = ops.box_refine_reference(*args)
    assert all(torch.equal(a, b) for a, b in zip(eager, want))
    with ops.use_backend("eager"):
        assert _backend.select("box_refine", None, *args)[0] == "eager"
    if DEVICE == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        assert _backend.select("box_refine", None, *args)[0] == "eager"
        assert "CUDA" in ops.explain("box_refine", *args)["cuda"]
        with pytest.raises(ops.BackendUnavailable, match="box_refine"):
            ops.box_refine(*args, backend="cuda")


def test_triton_supports_gives_reasons():
    from sam3lt.ops import _triton

    delta, boxes = torch.randn(1, 3, 4), torch.rand(1, 3, 4)
    assert "dtype" in _backend.unavailable_reason("box_refine", "triton", delta.double(), boxes.double(), 8)
    assert "num_feats" in _backend.unavailable_reason("box_refine", "triton", delta, boxes, 7)
    if _triton.INTERPRETED:
        assert "bfloat16" in _backend.unavailable_reason("box_refine", "triton", delta.bfloat16(), boxes.bfloat16(), 8)


@pytest.mark.parametrize("kw, exc, name", [
    (dict(num_feats=7), ValueError, "num_feats"),
    (dict(num_feats=0), ValueError, "num_feats"),
    (dict(num_feats=8.0), TypeError, "num_feats"),
    (dict(num_feats=True), TypeError, "num_feats"),
    (dict(boxes=torch.rand(2, 4, 4)), ValueError, "boxes"),
    (dict(boxes=torch.rand(2, 3, 4).half()), TypeError, "boxes"),
    (dict(boxes=torch.rand(2, 3, 4, device="meta")), ValueError, "boxes"),
    (dict(boxes=[[0.5] * 4]), TypeError, "boxes"),
    (dict(delta=torch.randn(2, 3, 5), boxes=torch.rand(2, 3, 5)), ValueError, "delta"),
    (dict(delta=torch.randn(6, 4), boxes=torch.rand(6, 4)), ValueError, "delta"),
    (dict(delta=torch.ones(2, 3, 4, dtype=torch.long)), TypeError, "delta"),
    (dict(delta=None), TypeError, "delta"),
])
def test_argument_errors_name_the_argument(kw, exc, name):
    args = dict(delta=torch.randn(2, 3, 4), boxes=torch.rand(2, 3, 4), num_feats=8)
    args.update(kw)
    with pytest.raises(exc, match=rf"box_refine: {name}\b"):
        ops.box_refine(**args)


# ---------------------------------------------------------------- the decoder's expressions

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_reference_is_the_decoder_code_bitwise(dtype):
    """DetrDecoder.forward's ``(self.box_head(queries) + inverse_sigmoid(boxes)).sigmoid()`` and the next layer's
    ``encode_boxes_sine(boxes, num_feats)``, bitwise, through the eager backend too."""
    gen = seeds.gen(5)
    delta = (torch.randn(2, 13, 4, generator=gen) * 3).to(dtype)
    boxes = torch.rand(2, 13, 4, generator=gen).to(dtype)
    want_new = (delta + inverse_sigmoid(boxes)).sigmoid()
    want_enc = encode_boxes_sine(want_new, 128)
    for got in (ops.box_refine_reference(delta, boxes, 128), ops.box_refine(delta, boxes, 128, backend="eager")):
        assert torch.equal(got[0], want_new) and torch.equal(got[1], want_enc)
        assert got[1].shape == (2, 13, 512) and got[1].dtype == dtype


def test_encoding_layout():
    """The spec spelled out: blocks (cy, cx, w, h); sin at even j, cos at odd j of 2π·c / 10000^(2⌊j/2⌋/nf)."""
    gen = seeds.gen(6)
    delta, boxes = torch.randn(1, 2, 4, generator=gen, dtype=torch.float64), torch.rand(1, 2, 4, generator=gen,
                                                                                       dtype=torch.float64)
    nf = 6
    new, enc = ops.box_refine(delta, boxes, nf, backend="eager")
    for blk, c in enumerate((1, 0, 2, 3)):
        for j in range(nf):
            arg = new[..., c] * 2 * math.pi / 10000 ** (2 * (j // 2) / nf)
            want = torch.sin(arg) if j % 2 == 0 else torch.cos(arg)
            torch.testing.assert_close(enc[..., blk * nf + j], want)
