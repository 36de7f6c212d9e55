"""The conv family on every backend registered for it (tests/_backends.py: ``cpu``): conv3x3 (Winograd F(4×4, 3×3)),
conv1x1 and conv_transpose2x2 (GEMMs) against fp64 references on fresh random inputs; the transformed-weight cache,
argument checks, the backend choice and its fallback, the op's fake implementation, and the model's modules."""
from _interp import check_close, interpreter_env, randn, seed_for  # noqa: F401
from _backends import targets

import warnings

import pytest
import torch
import torch.nn.functional as F

import sam3lt.ops as ops
from sam3lt.model.common import Conv1x1, Conv3x3, ConvPatch, ConvTranspose2x2
from sam3lt.ops import _backend, _cpu, conv

# Winograd's bound, stated once: max|out − ref64| ≤ RTOL · max|ref64|. F(4×4, 3×3)'s transforms add and subtract
# terms up to 8× the output, so its fp32 error is ~1e-5 of the output's scale at 256 channels where the direct
# convolution's is ~2e-6 (measured on AVX-512 and with MKL_ENABLE_INSTRUCTIONS=AVX2); the bound leaves 5× room.
RTOL = 5e-5

# (B, C, K, H, W, padding): the model's 256 channels; channel counts off the 64-channel block; maps that are no
# multiple of the 4×4 tile (partial tiles) or smaller than one; padding 0 and 2; batch 3
SHAPES = [(1, 256, 256, 24, 24, 1), (2, 37, 70, 13, 10, 0), (1, 5, 3, 7, 9, 2), (3, 130, 20, 17, 5, 1),
          (1, 64, 64, 4, 4, 1), (1, 8, 16, 1, 2, 1), (2, 16, 8, 3, 3, 0)]


def _check(backend, x, w, b, padding, what=""):
    out = ops.conv3x3(x, w, b, padding, backend=backend)
    ref = F.conv2d(x.double(), w.double(), None if b is None else b.double(), padding=padding)
    assert out.shape == ref.shape and out.dtype == x.dtype, (out.shape, ref.shape, out.dtype)
    err, scale = (out.double() - ref).abs().max().item(), ref.abs().max().item()
    assert err <= RTOL * scale, f"{what}: max error {err:.3g} > {RTOL:g} · {scale:.3g}"
    return out


@pytest.mark.parametrize("target", targets("conv3x3"), indirect=True)
@pytest.mark.parametrize("B, C, K, H, W, padding", SHAPES, ids=lambda v: str(v))
def test_conv3x3_matches_fp64(target, B, C, K, H, W, padding, request, no_grad):
    gen = seed_for(request)
    x = randn(gen, B, C, H, W, device="cpu")
    w = randn(gen, K, C, 3, 3, scale=(9 * C) ** -0.5, device="cpu")
    b = randn(gen, K, device="cpu")
    out = _check(target.backend, x, w, b, padding, (B, C, K, H, W, padding))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("target", targets("conv3x3"), indirect=True)
def test_conv3x3_layouts_and_no_bias(target, request, no_grad):
    gen = seed_for(request)
    w = randn(gen, 48, 40, 3, 3, scale=0.05, device="cpu")
    x = randn(gen, 2, 40, 11, 14, device="cpu")
    for what, xi in (("NCHW", x), ("channels-last", x.contiguous(memory_format=torch.channels_last)),
                     ("strided view", randn(gen, 2, 80, 11, 14, device="cpu")[:, ::2])):
        _check(target.backend, xi, w, None, 1, what)
    x0 = x.clone()  # the input is left untouched
    ops.conv3x3(x, w, None, backend=target.backend)
    assert torch.equal(x, x0)


@pytest.mark.parametrize("target", targets("conv3x3"), indirect=True)
def test_conv3x3_weight_change_recomputes_its_transform(target, request, no_grad):
    """The transformed weight is cached per weight; an in-place update (a new version) or a state_dict load must
    not leave the old one in use."""
    gen = seed_for(request)
    conv_mod = Conv3x3(16, 24)
    x = randn(gen, 1, 16, 9, 9, device="cpu")
    _check(target.backend, x, conv_mod.weight, conv_mod.bias, 1, "first")
    conv_mod.weight.mul_(-2.0)
    _check(target.backend, x, conv_mod.weight, conv_mod.bias, 1, "after an in-place update")
    conv_mod.load_state_dict({"weight": randn(gen, 24, 16, 3, 3, device="cpu"), "bias": conv_mod.bias.detach()})
    _check(target.backend, x, conv_mod.weight, conv_mod.bias, 1, "after load_state_dict")
    ident = id(conv_mod.weight)
    assert ident in _cpu._DERIVED
    del conv_mod
    assert ident not in _cpu._DERIVED  # the entry goes with the weight


def test_conv3x3_fake_implementation():
    """The op's Meta implementation (fake tensors, torch.compile) gives the shape and layout, and opcheck passes."""
    if _cpu.IMPORT_ERROR:
        pytest.skip(_cpu.IMPORT_ERROR)
    x = torch.randn(2, 5, 9, 7)
    u = conv.winograd_weight(torch.randn(6, 5, 3, 3))
    op = torch.ops.sam3lt_cpu.winograd_conv3x3.default
    meta = op(x.to("meta"), u.to("meta"), None, 1)
    assert meta.shape == (2, 6, 9, 7) and meta.is_contiguous(memory_format=torch.channels_last)
    torch.library.opcheck(op, (x, u, torch.randn(6), 0))


@pytest.mark.parametrize("args, match", [
    (lambda: (torch.randn(1, 4, 5, 5), torch.randn(6, 3, 3, 3)), "weight must be"),
    (lambda: (torch.randn(1, 4, 5, 5), torch.randn(6, 4, 5, 5)), "weight must be"),
    (lambda: (torch.randn(4, 5, 5), torch.randn(6, 4, 3, 3)), "x must be"),
    (lambda: (torch.randn(1, 4, 5, 5), torch.randn(6, 4, 3, 3), torch.randn(5)), "bias must be"),
    (lambda: (torch.randn(1, 4, 5, 5), torch.randn(6, 4, 3, 3), None, -1), "padding must be >= 0"),
    (lambda: (torch.randn(1, 4, 1, 5), torch.randn(6, 4, 3, 3), None, 0), "smaller than the 3×3 kernel"),
])
def test_conv3x3_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        ops.conv3x3(*args())


def test_conv3x3_bad_types():
    x, w = torch.randn(1, 4, 5, 5), torch.randn(6, 4, 3, 3)
    with pytest.raises(TypeError, match="weight dtype"):
        ops.conv3x3(x, w.double())
    with pytest.raises(TypeError, match="padding must be an int"):
        ops.conv3x3(x, w, None, True)
    with pytest.raises(TypeError, match="x must be a tensor"):
        ops.conv3x3(x.numpy(), w)


def test_conv3x3_auto_choice_and_reasons():
    x, w = torch.randn(1, 4, 6, 6), torch.randn(6, 4, 3, 3)
    with torch.no_grad():
        expl = ops.explain("conv3x3", x, w, None, 1)
        assert expl["eager"] in ("runs", "available")
        if _cpu.IMPORT_ERROR is None:
            assert expl["cpu"] == "runs"
        half = ops.explain("conv3x3", x.half(), w.half(), None, 1)
        assert half["eager"] == "runs" and "float32" in half["cpu"]
    w.requires_grad_(True)
    with torch.enable_grad():
        reason = ops.explain("conv3x3", x, w, None, 1)["cpu"]
        assert "grad" in reason or reason == _cpu.IMPORT_ERROR
        y = ops.conv3x3(x, w)  # autograd: the reference runs and the gradient flows
        y.sum().backward()
        assert w.grad is not None
    with pytest.raises(ops.BackendUnavailable, match="float32"):
        ops.conv3x3(x.half(), w.detach().half(), backend="cpu")


def test_conv3x3_missing_extension_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(_cpu, "IMPORT_ERROR", "sam3lt._cpu is not built (test)")
    monkeypatch.setattr(_backend, "_warned", set())
    x, w = torch.randn(1, 4, 6, 6), torch.randn(6, 4, 3, 3)
    with torch.no_grad():
        with pytest.warns(UserWarning, match=r"cpu backend is unavailable \(sam3lt._cpu is not built"):
            y = ops.conv3x3(x, w)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ops.conv3x3(x, w)  # once only
        torch.testing.assert_close(y, F.conv2d(x, w, padding=1), rtol=0, atol=0)
        with pytest.raises(ops.BackendUnavailable, match="not built"):
            ops.conv3x3(x, w, backend="cpu")


@pytest.mark.parametrize("ours, theirs, rtol", [
    (lambda: Conv1x1(8, 12), lambda: torch.nn.Conv2d(8, 12, 1), 1e-5),
    (lambda: Conv3x3(8, 12), lambda: torch.nn.Conv2d(8, 12, 3, padding=1), RTOL),
    (lambda: ConvTranspose2x2(8, 6), lambda: torch.nn.ConvTranspose2d(8, 6, 2, stride=2), 1e-5),
    (lambda: ConvPatch(8, 12, 2), lambda: torch.nn.Conv2d(8, 12, 2, stride=2), 1e-5),
    (lambda: ConvPatch(8, 12, 3, bias=False), lambda: torch.nn.Conv2d(8, 12, 3, stride=3, bias=False), 1e-5),
], ids=["Conv1x1", "Conv3x3", "ConvTranspose2x2", "ConvPatch", "ConvPatch-no-bias"])
def test_model_modules_keep_keys_and_values(ours, theirs, rtol, no_grad):
    """The model's Conv3x3 / ConvTranspose2x2 are the nn modules (same parameters and state_dict keys) whose forward
    is the op; a weight updated in place is seen (its transformed copy is per weight version); backend="eager"
    on the module runs the reference, bitwise."""
    m, ref = ours(), theirs()
    assert m.state_dict().keys() == ref.state_dict().keys()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 8, 10, 7)
    for _ in range(2):
        out, expected = m(x), ref(x)
        assert (out - expected).abs().max() <= rtol * expected.abs().max()
        m.weight.mul_(-3.0)
        ref.weight.mul_(-3.0)
    m.backend = "eager"
    torch.testing.assert_close(m(x), ref(x), rtol=0, atol=0)

# ---- conv_transpose2x2 (the cpu backend: one GEMM per band of rows; bounded as torch's own fp32 convolution) ----
TRANSPOSE_SHAPES = [(1, 64, 32, 12, 12), (2, 37, 5, 7, 9), (1, 8, 3, 40, 30), (3, 16, 16, 1, 1)]


@pytest.mark.parametrize("target", targets("conv_transpose2x2"), indirect=True)
@pytest.mark.parametrize("B, C, K, H, W", TRANSPOSE_SHAPES, ids=lambda v: str(v))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("layout", ["channels-last", "NCHW"])
def test_conv_transpose2x2_matches_fp64(target, B, C, K, H, W, bias, layout, request, no_grad):
    gen = seed_for(request)
    x = randn(gen, B, C, H, W, device="cpu")
    if layout == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = randn(gen, C, K, 2, 2, scale=C ** -0.5, device="cpu")
    b = randn(gen, K, device="cpu") if bias else None
    out = ops.conv_transpose2x2(x, w, b, backend=target.backend)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    check_close(out, ops.conv_transpose2x2_reference(d(x), d(w), d(b)), ops.conv_transpose2x2_reference(x, w, b),
                torch.float32, (B, C, K, H, W, bias, layout))
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("args, error, match", [
    (lambda: (torch.randn(1, 4, 5, 5), torch.randn(3, 6, 2, 2)), ValueError, "weight must be"),
    (lambda: (torch.randn(1, 4, 5, 5), torch.randn(4, 6, 3, 3)), ValueError, "weight must be"),
    (lambda: (torch.randn(4, 5, 5), torch.randn(4, 6, 2, 2)), ValueError, "x must be"),
    (lambda: (torch.randn(1, 4, 5, 5), torch.randn(4, 6, 2, 2), torch.randn(4)), ValueError, "bias must be"),
    (lambda: (torch.randn(1, 4, 5, 5), torch.randn(4, 6, 2, 2).double()), TypeError, "weight dtype"),
])
def test_conv_transpose2x2_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        ops.conv_transpose2x2(*args())


def test_cpu_backends_in_and_out_of_inference_mode():
    """The cpu backends' per-weight copies and workspaces work whichever mode made them first (an inference
    tensor cannot be written outside inference mode)."""
    x, w, b = torch.randn(1, 8, 6, 6), torch.randn(8, 4, 2, 2), torch.randn(4)
    w3, lw = torch.randn(4, 8, 3, 3), torch.randn(16, 8)
    rows = torch.randn(200, 8)
    calls = (lambda: ops.conv_transpose2x2(x, w, b), lambda: ops.conv3x3(x, w3), lambda: ops.linear(rows, lw))
    refs = [F.conv_transpose2d(x, w, b, stride=2), F.conv2d(x, w3, padding=1), F.linear(rows, lw)]
    conv._WORKSPACE.__dict__.pop("buf", None)
    for first in (torch.inference_mode, torch.no_grad):
        _cpu._DERIVED.clear()
        with first():
            [call() for call in calls]
        for mode in (torch.no_grad, torch.inference_mode):
            with mode():
                for call, ref in zip(calls, refs):
                    torch.testing.assert_close(call(), ref, rtol=1e-4, atol=1e-4)


# ---- conv1x1 (the cpu backend: ops.linear's packed GEMM over the pixels; maps under PACK_MIN_ROWS pixels: the reference)
@pytest.mark.parametrize("target", targets("conv1x1"), indirect=True)
@pytest.mark.parametrize("B, C, K, H, W", [(1, 64, 32, 12, 12), (2, 37, 5, 9, 9), (1, 16, 1, 16, 20), (1, 8, 4, 3, 3)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("layout", ["channels-last", "NCHW"])
@pytest.mark.parametrize("gemm", [True, False], ids=["gemm", "onednn"])  # GEMM_1X1: chosen by the CPU's oneDNN ISA
def test_conv1x1_matches_fp64(target, B, C, K, H, W, layout, gemm, request, no_grad, monkeypatch):
    monkeypatch.setattr(conv, "GEMM_1X1", gemm)
    gen = seed_for(request)
    x = randn(gen, B, C, H, W, device="cpu")
    if layout == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = randn(gen, K, C, 1, 1, scale=C ** -0.5, device="cpu"), randn(gen, K, device="cpu")
    out = ops.conv1x1(x, w, b, backend=target.backend)
    check_close(out, ops.conv1x1_reference(x.double(), w.double(), b.double()), ops.conv1x1_reference(x, w, b),
                torch.float32, (B, C, K, H, W, layout))


def test_conv1x1_bad_arguments():
    with pytest.raises(ValueError, match="weight must be"):
        ops.conv1x1(torch.randn(1, 4, 5, 5), torch.randn(6, 4, 3, 3))
    with pytest.raises(ValueError, match="bias must be"):
        ops.conv1x1(torch.randn(1, 4, 5, 5), torch.randn(6, 4, 1, 1), torch.randn(4))
    with pytest.raises(TypeError, match="bias dtype"):
        ops.conv1x1(torch.randn(1, 4, 5, 5), torch.randn(6, 4, 1, 1), torch.randn(6).double())


# ---- conv_patch (the cpu backend: the patches as rows times the flattened weight, MKL's packed GEMM at >= 128 patches)
@pytest.mark.parametrize("target", targets("conv_patch"), indirect=True)
@pytest.mark.parametrize("B, C, K, H, W, p", [(1, 3, 64, 168, 168, 14), (2, 3, 16, 30, 45, 7), (1, 5, 8, 9, 11, 2),
                                              (1, 3, 32, 14, 14, 14)], ids=lambda v: str(v))
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("layout", ["channels-last", "NCHW"])
def test_conv_patch_matches_fp64(target, B, C, K, H, W, p, bias, layout, request, no_grad):
    """The ViT's 14×14 patches over 144 patches (packed GEMM) and over one; sizes that are no multiple of the patch
    (the last rows and columns are dropped, as by the convolution)."""
    gen = seed_for(request)
    x = randn(gen, B, C, H, W, device="cpu")
    if layout == "channels-last":
        x = x.contiguous(memory_format=torch.channels_last)
    w = randn(gen, K, C, p, p, scale=(C * p * p) ** -0.5, device="cpu")
    b = randn(gen, K, device="cpu") if bias else None
    out = ops.conv_patch(x, w, b, backend=target.backend)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    ref64 = ops.conv_patch_reference(d(x), d(w), d(b))
    assert out.shape == ref64.shape == (B, K, H // p, W // p)
    check_close(out, ref64, ops.conv_patch_reference(x, w, b), torch.float32, (B, C, K, H, W, p, bias, layout))


@pytest.mark.parametrize("args, error, match", [
    (lambda: (torch.randn(1, 3, 28, 28), torch.randn(8, 3, 14, 7)), ValueError, "square patch"),
    (lambda: (torch.randn(1, 4, 28, 28), torch.randn(8, 3, 14, 14)), ValueError, "weight must be"),
    (lambda: (torch.randn(1, 3, 28, 10), torch.randn(8, 3, 14, 14)), ValueError, "smaller than one 14×14 patch"),
    (lambda: (torch.randn(1, 3, 28, 28), torch.randn(8, 3, 14, 14), torch.randn(3)), ValueError, "bias must be"),
    (lambda: (torch.randn(1, 3, 28, 28), torch.randn(8, 3, 14, 14).double()), TypeError, "weight dtype"),
    (lambda: (torch.randn(1, 3, 28, 28), None), TypeError, "weight must be a tensor"),
])
def test_conv_patch_bad_arguments(args, error, match):
    with pytest.raises(error, match=match):
        ops.conv_patch(*args())


def test_conv_patch_auto_runs_the_gemm_on_fp32_cpu():
    x, w = torch.randn(1, 3, 28, 28), torch.randn(8, 3, 14, 14)
    with torch.no_grad():
        expl = ops.explain("conv_patch", x, w, None)
        assert expl["cpu" if torch.backends.mkl.is_available() else "eager"] == "runs"  # no extension needed
        assert "float32" in ops.explain("conv_patch", x.half(), w.half(), None)["cpu"]

