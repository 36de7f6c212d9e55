"""upsample_nearest_add, mask_product and masks_to_binary on every backend registered for them
(tests/_backends.py: triton on CUDA or in the interpreter, cuda on the GPU or in the emulator) against the eager
references."""
from _interp import check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401
from _backends import targets

import pytest
import torch
import torch.nn.functional as F

import sam3lt.ops as ops

# (h, w) -> (H, W): exact 2x, non-integer ratios, identity, downsampling, 1x1
SIZES = [((4, 4), (8, 8)), ((3, 5), (7, 11)), ((5, 3), (5, 3)), ((6, 9), (4, 5)), ((7, 7), (21, 20)),
         ((3, 3), (1, 1)), ((13, 17), (100, 33)), ((9, 9), (72, 72))]


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("upsample_nearest_add", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("src, dst", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_upsample_nearest_add_exact(target, src, dst, dtype, request):
    gen, dev = seed_for(request), target.device
    x = randn(gen, 2, 3, *src, dtype=dtype, device=dev)
    skip = randn(gen, 2, 3, *dst, dtype=dtype, device=dev)
    out = ops.upsample_nearest_add(x, skip, backend=target.backend)
    ref = ops.upsample_nearest_add_reference(x, skip)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.equal(out, ref)  # a gather and one rounding: bit-exact


@kernel_test
@pytest.mark.parametrize("target", targets("upsample_nearest_add"), indirect=True)
@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_upsample_nearest_add_non_contiguous(target, layout, request):
    gen, dev = seed_for(request), target.device
    if layout == "channels_last":
        x = randn(gen, 2, 5, 6, 7, device=dev).to(memory_format=torch.channels_last)
        skip = randn(gen, 2, 5, 12, 14, device=dev).to(memory_format=torch.channels_last)
    else:
        x = randn(gen, 2, 10, 6, 9, device=dev)[:, ::2, :, 1:8]
        skip = randn(gen, 2, 5, 13, 16, device=dev)[..., 1:15]
    out = ops.upsample_nearest_add(x, skip, backend=target.backend)
    assert torch.equal(out, ops.upsample_nearest_add_reference(x, skip))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("src, dst", SIZES + [((24, 24), (48, 48)), ((5, 4), (15, 8)), ((1, 1), (7, 3))],
                         ids=lambda s: "x".join(map(str, s)))
def test_upsample_nearest_add_reference_layouts(src, dst, dtype):
    """The reference upsamples in skip's layout when skip is channels-last and the factor is whole (the model's
    CPU case): bit-exactly F.interpolate + skip for every layout of x and skip, channels-last out in that case."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 6, *src, generator=gen).to(dtype)
    skip = torch.randn(2, 6, *dst, generator=gen).to(dtype)
    for xs in (x, x.contiguous(memory_format=torch.channels_last)):
        for sk in (skip, skip.contiguous(memory_format=torch.channels_last)):
            before = xs.clone(), sk.clone()
            out = ops.upsample_nearest_add_reference(xs, sk)
            assert torch.equal(out, F.interpolate(xs, size=dst, mode="nearest") + sk)
            assert torch.equal(xs, before[0]) and torch.equal(sk, before[1])  # inputs untouched
            whole = dst[0] % src[0] == 0 and dst[1] % src[1] == 0
            if whole and not sk.is_contiguous():
                assert out.is_contiguous(memory_format=torch.channels_last)


# (B, Q, C, H, W)
PRODUCT_CASES = [(2, 37, 40, 9, 13), (1, 1, 16, 1, 1), (1, 5, 300, 4, 4), (3, 20, 8, 7, 5)]


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("mask_product", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("B, Q, C, H, W", PRODUCT_CASES)
def test_mask_product(target, B, Q, C, H, W, dtype, request):
    gen, dev = seed_for(request), target.device
    a = randn(gen, B, Q, C, dtype=dtype, device=dev)
    p = randn(gen, B, C, H, W, dtype=dtype, device=dev)
    out = ops.mask_product(a, p, backend=target.backend)
    check_close(out, ops.mask_product_reference(a.double(), p.double()), ops.mask_product_reference(a, p), dtype)


@kernel_test
@pytest.mark.parametrize("target", targets("mask_product"), indirect=True)
def test_mask_product_non_contiguous(target, request):
    gen, dev = seed_for(request), target.device
    a = randn(gen, 2, 16, 11, device=dev).transpose(1, 2)  # (2, 11, 16) with strides
    p = randn(gen, 2, 16, 6, 10, device=dev).to(memory_format=torch.channels_last)
    out = ops.mask_product(a, p, backend=target.backend)
    check_close(out, ops.mask_product_reference(a.double(), p.double()), ops.mask_product_reference(a, p),
                torch.float32)


def _check_binary(out, logits, size, threshold, dtype):
    ref = ops.masks_to_binary_reference(logits, size, threshold)
    assert out.dtype == torch.bool and out.shape == ref.shape
    if out.numel() == 0:
        return
    # a pixel may differ from the reference only where the exact probability sits on the threshold
    probs64 = logits.double().sigmoid()
    if tuple(size) != tuple(logits.shape[-2:]):
        probs64 = F.interpolate(probs64[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
    band = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    differ = out != ref
    assert not differ.any() or (probs64[differ] - threshold).abs().max() <= band, "flips away from the threshold"
    assert differ.float().mean() <= 0.01
    assert out.any() and (~out).any()  # inputs straddle the threshold


# (N, h, w) -> (H, W)
BINARY_CASES = [((3, 9, 11), (20, 37)), ((2, 8, 8), (8, 8)), ((1, 16, 16), (5, 7)), ((4, 7, 5), (29, 3)),
                ((2, 18, 18), (100, 60))]


@kernel_test
@pytest.mark.parametrize("threshold", [0.5, 0.3])
@pytest.mark.parametrize("target, dtype", targets("masks_to_binary", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("src, size", BINARY_CASES, ids=lambda s: "x".join(map(str, s)))
def test_masks_to_binary(target, src, size, dtype, threshold, request):
    gen = seed_for(request)
    logits = randn(gen, *src, dtype=dtype, scale=3.0, device=target.device)
    out = ops.masks_to_binary(logits, size, threshold, backend=target.backend)
    _check_binary(out, logits, size, threshold, dtype)


@kernel_test
@pytest.mark.parametrize("target", targets("masks_to_binary"), indirect=True)
def test_masks_to_binary_non_contiguous_and_empty(target, request):
    gen, dev = seed_for(request), target.device
    logits = randn(gen, 3, 12, 10, scale=3.0, device=dev).transpose(1, 2)
    out = ops.masks_to_binary(logits, (31, 17), 0.5, backend=target.backend)
    _check_binary(out, logits, (31, 17), 0.5, torch.float32)
    out = ops.masks_to_binary(torch.empty(0, 12, 10, device=dev), (31, 17), 0.5, backend=target.backend)
    assert out.shape == (0, 31, 17) and out.dtype == torch.bool
