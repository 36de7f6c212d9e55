"""Triton box_bias_attention and masked_attention against the eager references."""
import random

from _interp import DEVICE, DTYPES, check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401

import pytest
import torch

import sam3lt.ops as ops


def heads_view(gen, B, L, heads, D, dtype):
    """(B, heads, L, D) as the model makes it: a transposed view of a (B, L, heads·D) projection."""
    return randn(gen, B, L, heads * D, dtype=dtype).view(B, L, heads, D).transpose(1, 2)


_rng = random.Random(11)
# (B, heads, Lq, Hg, Wg, D): Lq = 1, Lq and Lk over one block, head dims 16/24/32
BOX_CASES = [(1, 2, 9, 5, 7, 16), (2, 1, 33, 6, 4, 32), (1, 2, 1, 3, 3, 16), (2, 2, 70, 9, 8, 32),
             (1, 1, 5, 4, 5, 24)]
BOX_CASES += [(_rng.randint(1, 2), _rng.randint(1, 3), _rng.randint(1, 40), _rng.randint(1, 9), _rng.randint(1, 9),
               _rng.choice([16, 32])) for _ in range(3)]


@kernel_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, heads, Lq, Hg, Wg, D", BOX_CASES)
def test_box_bias_attention(B, heads, Lq, Hg, Wg, D, dtype, request):
    gen = seed_for(request)
    q = heads_view(gen, B, Lq, heads, D, dtype)
    k = heads_view(gen, B, Hg * Wg, heads, D, dtype)
    v = heads_view(gen, B, Hg * Wg, heads, D, dtype)
    bias_y = randn(gen, B, heads, Lq, Hg, scale=2.0)  # fp32 bias tables, as the model computes them
    bias_x = randn(gen, B, heads, Lq, Wg, scale=2.0)
    out = ops.box_bias_attention(q, k, v, bias_y, bias_x, backend="triton")
    ref64 = ops.box_bias_attention_reference(q.double(), k.double(), v.double(), bias_y.double(), bias_x.double())
    check_close(out, ref64, ops.box_bias_attention_reference(q, k, v, bias_y, bias_x), dtype,
                f"Lq{Lq} {Hg}x{Wg} D{D}")


@kernel_test
def test_box_bias_attention_bias_in_input_dtype_and_contiguous(request):
    gen = seed_for(request)
    B, heads, Lq, Hg, Wg, D = 1, 2, 12, 5, 6, 16
    dtype = torch.float16
    q, k, v = (randn(gen, B, heads, L, D, dtype=dtype) for L in (Lq, Hg * Wg, Hg * Wg))
    bias_y = randn(gen, B, heads, Lq, Hg, dtype=dtype)
    bias_x = randn(gen, B, heads, Wg, Lq, dtype=dtype).transpose(-1, -2)
    out = ops.box_bias_attention(q, k, v, bias_y, bias_x, backend="triton")
    ref64 = ops.box_bias_attention_reference(q.double(), k.double(), v.double(), bias_y.double(), bias_x.double())
    check_close(out, ref64, ops.box_bias_attention_reference(q, k, v, bias_y, bias_x), dtype)


# (B, heads, Lq, Lk, D, mask): padded prompts (some keys masked, one batch entry with every key masked),
# no mask, self-attention over more than a block, Lk = 1
MASK_CASES = [(2, 2, 9, 13, 16, "padded"), (3, 1, 5, 7, 32, "one_row_empty"), (1, 2, 70, 70, 32, "none"),
              (2, 2, 4, 1, 16, "padded"), (2, 1, 33, 40, 24, "int_mask"), (1, 2, 1, 20, 16, "padded")]


def _mask(gen, kind, B, Lk):
    if kind == "none":
        return None
    valid = torch.rand(B, Lk, generator=gen) > 0.3
    valid[:, 0] = True  # every prompt keeps a token
    lengths = torch.randint(1, Lk + 1, (B,), generator=gen)
    valid &= torch.arange(Lk)[None, :] < lengths[:, None]  # trailing padding like padded prompts
    if kind == "one_row_empty":
        valid[1] = False  # reference: zeros for that batch entry
    if kind == "int_mask":
        return valid.to(torch.int32).to(DEVICE)
    return valid.to(DEVICE)


@kernel_test
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("B, heads, Lq, Lk, D, kind", MASK_CASES)
def test_masked_attention(B, heads, Lq, Lk, D, kind, dtype, request):
    gen = seed_for(request)
    q = heads_view(gen, B, Lq, heads, D, dtype)
    k = heads_view(gen, B, Lk, heads, D, dtype)
    v = heads_view(gen, B, Lk, heads, D, dtype)
    mask = _mask(gen, kind, B, Lk)
    out = ops.masked_attention(q, k, v, mask, backend="triton")
    ref64 = ops.masked_attention_reference(q.double(), k.double(), v.double(), mask)
    ref = ops.masked_attention_reference(q, k, v, mask)
    check_close(out, ref64, ref, dtype, kind)
    if kind == "one_row_empty":
        assert torch.equal(out[1], torch.zeros_like(out[1]))
