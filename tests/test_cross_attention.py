"""box_bias_attention and masked_attention on every backend registered for them (tests/_backends.py: triton on
CUDA or in the interpreter, cuda on the GPU or in the emulator) against the eager references."""
import random

from _interp import check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401
from _backends import targets

import pytest
import torch

import sam3lt.ops as ops


def heads_view(gen, B, L, heads, D, dtype, device):
    """(B, heads, L, D) as the model makes it: a transposed view of a (B, L, heads·D) projection."""
    return randn(gen, B, L, heads * D, dtype=dtype, device=device).view(B, L, heads, D).transpose(1, 2)


def box_case(gen, B, heads, Lq, Hg, Wg, D, dtype, device):
    """(q, k, v, bias_y, bias_x) of one case: head views, fp32 bias tables as the model computes them."""
    q = heads_view(gen, B, Lq, heads, D, dtype, device)
    k = heads_view(gen, B, Hg * Wg, heads, D, dtype, device)
    v = heads_view(gen, B, Hg * Wg, heads, D, dtype, device)
    bias_y = randn(gen, B, heads, Lq, Hg, scale=2.0, device=device)
    bias_x = randn(gen, B, heads, Lq, Wg, scale=2.0, device=device)
    return q, k, v, bias_y, bias_x


def check_box(backend, q, k, v, bias_y, bias_x, dtype, what=""):
    out = ops.box_bias_attention(q, k, v, bias_y, bias_x, backend=backend)
    ref64 = ops.box_bias_attention_reference(q.double(), k.double(), v.double(), bias_y.double(), bias_x.double())
    check_close(out, ref64, ops.box_bias_attention_reference(q, k, v, bias_y, bias_x), dtype, what)


_rng = random.Random(11)
# (B, heads, Lq, Hg, Wg, D): Lq = 1, Lq and Lk over one block, head dims 16/24/32
BOX_CASES = [(1, 2, 9, 5, 7, 16), (2, 1, 33, 6, 4, 32), (1, 2, 1, 3, 3, 16), (2, 2, 70, 9, 8, 32),
             (1, 1, 5, 4, 5, 24)]
BOX_CASES += [(_rng.randint(1, 2), _rng.randint(1, 3), _rng.randint(1, 40), _rng.randint(1, 9), _rng.randint(1, 9),
               _rng.choice([16, 32])) for _ in range(3)]
BOX_CASES += [(1, 2, 12, 4, 4, 8), (1, 1, 20, 9, 10, 64)]  # head dims 8 (zero-padded to 16 in CUDA) and 64


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("box_bias_attention", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("B, heads, Lq, Hg, Wg, D", BOX_CASES)
def test_box_bias_attention(target, B, heads, Lq, Hg, Wg, D, dtype, request):
    args = box_case(seed_for(request), B, heads, Lq, Hg, Wg, D, dtype, target.device)
    check_box(target.backend, *args, dtype, f"Lq{Lq} {Hg}x{Wg} D{D}")


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("box_bias_attention", dtypes=True), indirect=["target"])
def test_box_bias_attention_bias_in_input_dtype_and_contiguous(target, dtype, request):
    gen, dev = seed_for(request), target.device
    B, heads, Lq, Hg, Wg, D = 1, 2, 12, 5, 6, 16
    q, k, v = (randn(gen, B, heads, L, D, dtype=dtype, device=dev) for L in (Lq, Hg * Wg, Hg * Wg))
    bias_y = randn(gen, B, heads, Lq, Hg, dtype=dtype, device=dev)
    bias_x = randn(gen, B, heads, Wg, Lq, dtype=dtype, device=dev).transpose(-1, -2)
    check_box(target.backend, q, k, v, bias_y, bias_x, dtype)


# Keys split across the grid (flash-decoding) when the grid would leave SMs idle: the decoder's 201 queries at one
# prompt over a 72x72 grid. The emulator reports an H200's 132 SMs, so the cuda launcher splits these few-CTA,
# many-key cases by itself; the triton launcher splits only on a GPU, so the interpreter is told to (2 and 5).
SPLIT_CASES = [(1, 1, 5, 32, 32, 32), (1, 2, 3, 40, 33, 16), (2, 1, 70, 36, 36, 32)]


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("box_bias_attention", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("splits", [2, 5])
@pytest.mark.parametrize("B, heads, Lq, Hg, Wg, D", SPLIT_CASES)
def test_box_bias_attention_split_keys(target, B, heads, Lq, Hg, Wg, D, splits, dtype, request, monkeypatch):
    asked = []
    if target.backend == "triton" and not target.device.startswith("cuda"):
        from sam3lt.kernels import cross_attention as kernel

        monkeypatch.setattr(kernel, "_splits", lambda programs, tiles, sms: asked.append(splits) or splits)
    elif splits != 2:
        pytest.skip("the launcher chooses the split count here")
    args = box_case(seed_for(request), B, heads, Lq, Hg, Wg, D, dtype, target.device)
    launches = torch.ops.sam3lt_emu.launch_count() if target.emulated else 0
    check_box(target.backend, *args, dtype, f"split Lq{Lq} {Hg}x{Wg} D{D}")
    if target.emulated:  # the attention kernel and the merge of its splits
        assert torch.ops.sam3lt_emu.launch_count() - launches == 2
    elif target.backend == "triton" and not target.device.startswith("cuda"):
        assert asked == [splits]


# (B, heads, Lq, Lk, D, mask): padded prompts (some keys masked, one batch entry with every key masked),
# no mask, self-attention over more than a block, Lk = 1, the text encoder's 77 tokens, head dim 128
MASK_CASES = [(2, 2, 9, 13, 16, "padded"), (3, 1, 5, 7, 32, "one_row_empty"), (1, 2, 70, 70, 32, "none"),
              (2, 2, 4, 1, 16, "padded"), (2, 1, 33, 40, 24, "int_mask"), (1, 2, 1, 20, 16, "padded"),
              (2, 2, 77, 77, 16, "padded"), (1, 1, 3, 130, 128, "padded")]


def make_mask(gen, kind, B, Lk, device):
    if kind == "none":
        return None
    valid = torch.rand(B, Lk, generator=gen) > 0.3
    valid[:, 0] = True  # every prompt keeps a token
    lengths = torch.randint(1, Lk + 1, (B,), generator=gen)
    valid &= torch.arange(Lk)[None, :] < lengths[:, None]  # trailing padding like padded prompts
    if kind == "one_row_empty":
        valid[1] = False  # reference: zeros for that batch entry
    if kind == "int_mask":
        return valid.to(torch.int32).to(device)
    return valid.to(device)


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("masked_attention", dtypes=True), indirect=["target"])
def test_masked_attention_strided_head_dim(target, dtype, request):
    """q/k/v with a stride of 2 along the head dim and a misaligned start: no 16-byte loads or copies (the CUDA
    kernel's register path beside its cp.async one), over several key tiles."""
    gen, dev = seed_for(request), target.device
    B, heads, Lq, Lk, D = 2, 2, 37, 150, 32
    q, k, v = (randn(gen, B, heads, L, 2 * D + 1, dtype=dtype, device=dev)[..., 1::2] for L in (Lq, Lk, Lk))
    assert q.stride(-1) == 2
    mask = make_mask(gen, "padded", B, Lk, dev)
    out = ops.masked_attention(q, k, v, mask, backend=target.backend)
    ref64 = ops.masked_attention_reference(q.double(), k.double(), v.double(), mask)
    check_close(out, ref64, ops.masked_attention_reference(q, k, v, mask), dtype, "strided head dim")


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("masked_attention", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("B, heads, Lq, Lk, D, kind", MASK_CASES)
def test_masked_attention(target, B, heads, Lq, Lk, D, kind, dtype, request):
    gen, dev = seed_for(request), target.device
    q = heads_view(gen, B, Lq, heads, D, dtype, dev)
    k = heads_view(gen, B, Lk, heads, D, dtype, dev)
    v = heads_view(gen, B, Lk, heads, D, dtype, dev)
    mask = make_mask(gen, kind, B, Lk, dev)
    out = ops.masked_attention(q, k, v, mask, backend=target.backend)
    ref64 = ops.masked_attention_reference(q.double(), k.double(), v.double(), mask)
    ref = ops.masked_attention_reference(q, k, v, mask)
    check_close(out, ref64, ref, dtype, kind)
    if kind == "one_row_empty":
        assert torch.equal(out[1], torch.zeros_like(out[1]))
