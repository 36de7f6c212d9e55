"""window_attention (windowed + global, RoPE, padding) on every backend registered for it (tests/_backends.py:
triton on CUDA or in the interpreter, cuda on the GPU or in the emulator) against the eager reference."""
import random

from _interp import check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401
from _backends import targets

import pytest
import torch

import sam3lt.ops as ops


def rope_tables(gen, tokens, head_dim, device):
    """cos/sin (T, D) fp32 as HF builds them: one angle per channel pair, repeated for both channels."""
    angles = torch.rand(tokens, head_dim // 2, generator=gen, dtype=torch.float64) * 6.3
    cos = angles.cos().repeat_interleave(2, -1).float().to(device)
    sin = angles.sin().repeat_interleave(2, -1).float().to(device)
    return cos, sin


def make_case(gen, B, H, W, heads, D, window, pad, dtype, device):
    """(qkv, cos, sin, heads, window, pad_value) of one case, as window_attention takes them."""
    C = heads * D
    qkv = randn(gen, B, H, W, 3 * C, dtype=dtype, device=device)
    cos, sin = rope_tables(gen, window * window if window else H * W, D, device)
    pad_value = randn(gen, 3 * C, dtype=dtype, device=device) if pad else None
    return qkv, cos, sin, heads, window, pad_value


def check(backend, qkv, cos, sin, heads, window, pad, dtype, what):
    out = ops.window_attention(qkv, cos, sin, heads, window, pad, backend=backend)
    assert out.is_contiguous() and out.shape == (*qkv.shape[:3], qkv.shape[-1] // 3)
    pad64 = None if pad is None else pad.double()
    ref64 = ops.window_attention_reference(qkv.double(), cos.double(), sin.double(), heads, window, pad64)
    ref = ops.window_attention_reference(qkv, cos, sin, heads, window, pad)
    check_close(out, ref64, ref, dtype, what)


_rng = random.Random(7)
# (B, H, W, heads, D, window, pad): grids not a multiple of the window, exact multiples, global attention,
# T > one block (online softmax across key blocks), head dims 16/24/32/64, zero padding (pad None)
CASES = [(1, 7, 9, 2, 16, 4, True), (2, 8, 8, 2, 16, 4, True), (1, 6, 5, 1, 32, 0, False),
         (1, 5, 7, 2, 64, 3, False), (1, 9, 9, 1, 16, 0, False), (1, 10, 10, 1, 16, 8, True),
         (1, 5, 6, 2, 24, 4, True), (1, 3, 3, 2, 16, 5, True)]
CASES += [(1, _rng.randint(2, 11), _rng.randint(2, 11), _rng.choice([1, 2]), _rng.choice([16, 32]),
           _rng.choice([0, 3, 4, 6]), _rng.random() < 0.7) for _ in range(3)]
# head dims the CUDA kernels zero-pad to the next instantiation (8 -> 16, 40 -> 64, 96 -> 128) and 128 itself
CASES += [(1, 6, 7, 2, 8, 4, True), (1, 5, 5, 1, 40, 0, False), (1, 9, 10, 1, 128, 4, True),
          (1, 4, 9, 1, 96, 3, True)]
# windows of more than one block in the interpreter (81 tokens: 2 query blocks, 2 key tiles of 64, the second
# partly past the window), padded and odd-sized, 2 images
CASES += [(2, 11, 12, 2, 16, 9, True), (1, 9, 9, 1, 16, 9, False)]


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("window_attention", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("B, H, W, heads, D, window, pad", CASES)
def test_window_attention(target, B, H, W, heads, D, window, pad, dtype, request):
    args = make_case(seed_for(request), B, H, W, heads, D, window, pad, dtype, target.device)
    check(target.backend, *args, dtype, f"B{B} {H}x{W} h{heads} D{D} win{window}")


@kernel_test
@pytest.mark.parametrize("target", targets("window_attention"), indirect=True)
@pytest.mark.parametrize("window", [0, 4])
def test_window_attention_non_contiguous(target, window, request):
    gen, dev = seed_for(request), target.device
    B, H, W, heads, D = 2, 6, 7, 2, 16
    C = heads * D
    big = randn(gen, B, H + 1, W + 2, 3 * C + 8, device=dev)
    qkv = big[:, 1:, 1:W + 1, 4:4 + 3 * C]  # a view with padded strides, as a slice of a larger buffer
    tokens = window * window if window else H * W
    cos, sin = rope_tables(gen, tokens, D, dev)
    cos = torch.cat([cos, cos], dim=1)[:, :D]  # row stride 2·D
    pad = randn(gen, 2 * 3 * C, device=dev)[::2]
    assert not qkv.is_contiguous() and not cos.is_contiguous() and not pad.is_contiguous()
    check(target.backend, qkv, cos, sin, heads, window, pad, torch.float32, "non-contiguous")


@kernel_test
@pytest.mark.parametrize("target", targets("window_attention"), indirect=True)
def test_window_attention_padding_is_attended(target, request):
    """Padded tokens are keys (their value is pad_value): changing pad_value changes edge windows only."""
    gen, dev = seed_for(request), target.device
    B, H, W, heads, D, window = 1, 6, 6, 1, 16, 4
    qkv = randn(gen, B, H, W, 3 * heads * D, device=dev)
    cos, sin = rope_tables(gen, window * window, D, dev)
    pad_a = randn(gen, 3 * heads * D, device=dev)
    pad_b = pad_a.clone()
    pad_b[2 * heads * D:] += 5.0  # other padded values
    out_a = ops.window_attention(qkv, cos, sin, heads, window, pad_a, backend=target.backend)
    out_b = ops.window_attention(qkv, cos, sin, heads, window, pad_b, backend=target.backend)
    assert torch.equal(out_a[:, :4, :4], out_b[:, :4, :4])  # the one full window does not see padding
    assert not torch.allclose(out_a[:, 4:, :], out_b[:, 4:, :])
