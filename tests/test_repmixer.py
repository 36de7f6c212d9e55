"""repmixer_dwconv and the fused repmixer_block_dwconv on every backend registered for them (tests/_backends.py:
triton on CUDA or in the interpreter, cuda on the GPU or in the emulator) against the eager reference."""
import random

from _interp import check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401
from _backends import targets

import pytest
import torch
import torch.nn.functional as F

import sam3lt.ops as ops

_rng = random.Random(3)
# (B, L, C, K, residual): L = 1 and 77, B = 1 and > 64, odd channel counts, plus random draws
CASES = [(1, 1, 16, 11, True), (2, 77, 64, 11, True), (1, 77, 48, 3, False), (70, 5, 8, 11, True),
         (3, 13, 20, 7, False), (1, 4, 5, 1, True)]
CASES += [(_rng.randint(1, 4), _rng.randint(1, 77), _rng.randint(1, 96), _rng.choice([3, 5, 7, 11]),
           _rng.random() < 0.5) for _ in range(3)]
CASES += [(2, 9, 12, 13, True), (1, 30, 40, 21, False)]  # wide kernels (K 13, 21)


def _dwconv64(x, w, b, residual):
    """The reference's maths in fp64 by pad + unfold (torch's fp64 depthwise conv1d is very slow on the CPU)."""
    x, w, b = x.double(), w.double(), b.double()
    taps = w.shape[-1]
    windows = F.pad(x, (0, 0, taps // 2, taps // 2)).unfold(1, taps, 1)  # (B, L, C, K)
    y = (windows * w).sum(-1) + b
    return y + x if residual else y


def _ref_pair(x, w, b, residual):
    return _dwconv64(x, w, b, residual), ops.repmixer_dwconv_reference(x, w, b, residual)


def test_fp64_helper_is_the_reference():
    gen = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(2, 9, 5, generator=gen), torch.randn(5, 7, generator=gen), torch.randn(5, generator=gen)
    for residual in (True, False):
        ref = ops.repmixer_dwconv_reference(x.double(), w.double(), b.double(), residual)
        assert torch.allclose(_dwconv64(x, w, b, residual), ref, rtol=1e-12, atol=1e-12)


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("repmixer_dwconv", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("B, L, C, K, residual", CASES)
def test_repmixer_matches_reference(target, B, L, C, K, residual, dtype, request):
    gen, dev = seed_for(request), target.device
    x = randn(gen, B, L, C, dtype=dtype, device=dev)
    w = randn(gen, C, K, dtype=dtype, scale=0.3, device=dev)
    b = randn(gen, C, dtype=dtype, device=dev)
    out = ops.repmixer_dwconv(x, w, b, residual, backend=target.backend)
    assert out.is_contiguous()
    check_close(out, *_ref_pair(x, w, b, residual), dtype, f"B{B} L{L} C{C} K{K}")


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("repmixer_dwconv", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("layout", ["channels_first_view", "strided_slice", "strided_weight"])
def test_repmixer_non_contiguous(target, layout, dtype, request):
    gen, dev = seed_for(request), target.device
    B, L, C, K = 2, 23, 24, 11
    if layout == "channels_first_view":  # (B, C, L) storage seen as (B, L, C), as after a conv layer
        x = randn(gen, B, C, L, dtype=dtype, device=dev).transpose(1, 2)
    else:
        x = randn(gen, B, 2 * L, C + 3, dtype=dtype, device=dev)[:, ::2, 1:C + 1]
    if layout == "strided_weight":
        w = randn(gen, K, C, dtype=dtype, scale=0.3, device=dev).t()
    else:
        w = randn(gen, C, K, dtype=dtype, scale=0.3, device=dev)
    b = randn(gen, 2 * C, dtype=dtype, device=dev)[::2]
    assert not x.is_contiguous()
    out = ops.repmixer_dwconv(x, w, b, True, backend=target.backend)
    check_close(out, *_ref_pair(x, w, b, True), dtype, layout)


@kernel_test
@pytest.mark.parametrize("target", targets("repmixer_dwconv"), indirect=True)
def test_repmixer_empty_batch(target):
    dev = target.device
    x = torch.empty(0, 7, 8, device=dev)
    out = ops.repmixer_dwconv(x, torch.ones(8, 3, device=dev), torch.ones(8, device=dev), True, backend=target.backend)
    assert out.shape == (0, 7, 8)


# the fused RepMixer pair: token mixer (+ residual) then the conv FFN's depthwise conv, one launch
BLOCK_CASES = [(1, 1, 16, 11, 11), (2, 77, 64, 11, 11), (70, 5, 8, 11, 3), (3, 32, 40, 7, 11), (1, 128, 24, 5, 5)]


def _block_ref_pair(x, w1, b1, w2, b2):
    """fp64 maths of the pair, and the reference in x's dtype (which rounds ``mixed`` before the second conv)."""
    mixed64 = _dwconv64(x, w1, b1, True)
    return ((mixed64, _dwconv64(mixed64, w2, b2, False)),
            ops.repmixer_block_dwconv_reference(x, w1, b1, w2, b2))


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("repmixer_block_dwconv", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("B, L, C, K1, K2", BLOCK_CASES)
def test_repmixer_block_matches_reference(target, B, L, C, K1, K2, dtype, request):
    gen, dev = seed_for(request), target.device
    x = randn(gen, B, L, C, dtype=dtype, device=dev)
    w1, w2 = (randn(gen, C, k, dtype=dtype, scale=0.3, device=dev) for k in (K1, K2))
    b1, b2 = randn(gen, C, dtype=dtype, device=dev), randn(gen, C, dtype=dtype, device=dev)
    mixed, ffn_in = ops.repmixer_block_dwconv(x, w1, b1, w2, b2, backend=target.backend)
    (mixed64, ffn64), (mixed_ref, ffn_ref) = _block_ref_pair(x, w1, b1, w2, b2)
    assert mixed.is_contiguous() and ffn_in.is_contiguous()
    check_close(mixed, mixed64, mixed_ref, dtype, f"mixed B{B} L{L} C{C}")
    # ffn_in is computed from the *rounded* mixed, in the kernel and the reference alike: compare against the
    # fp64 conv of the kernel's own mixed, with the reference's error against that as the bound
    ffn64_own = _dwconv64(mixed, w2, b2, False)
    check_close(ffn_in, ffn64_own, ffn_ref, dtype, f"ffn_in B{B} L{L} C{C}")


@kernel_test
@pytest.mark.parametrize("target", targets("repmixer_block_dwconv"), indirect=True)
def test_repmixer_block_non_contiguous(target, request):
    gen, dev = seed_for(request), target.device
    x = randn(gen, 2, 24, 19, device=dev).transpose(1, 2)  # (B, L=19, C=24) view of channels-first storage
    w1, w2 = randn(gen, 24, 11, scale=0.3, device=dev), randn(gen, 11, 24, scale=0.3, device=dev).t()
    b1, b2 = randn(gen, 24, device=dev), randn(gen, 24, device=dev)
    mixed, ffn_in = ops.repmixer_block_dwconv(x, w1, b1, w2, b2, backend=target.backend)
    (mixed64, _), (mixed_ref, ffn_ref) = _block_ref_pair(x, w1, b1, w2, b2)
    check_close(mixed, mixed64, mixed_ref, torch.float32, "mixed")
    check_close(ffn_in, _dwconv64(mixed, w2, b2, False), ffn_ref, torch.float32, "ffn_in")


@kernel_test
def test_repmixer_block_too_long_for_triton(request):
    gen = seed_for(request)
    w1, w2 = randn(gen, 24, 11, scale=0.3), randn(gen, 11, 24, scale=0.3).t()
    b1, b2 = randn(gen, 24), randn(gen, 24)
    long_x = randn(gen, 1, 200, 24)
    with pytest.raises(ops.BackendUnavailable, match="prompt length 200"):
        ops.repmixer_block_dwconv(long_x, w1, b1, w2, b2, backend="triton")
    # auto falls back (to eager here) for a prompt longer than one tile
    out = ops.repmixer_block_dwconv(long_x, w1, b1, w2, b2)
    assert out[0].shape == (1, 200, 24)
