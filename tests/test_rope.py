"""RoPE on fused QKV (``sam3lt.ops.rope_qkv``): every backend that runs here against an independent fp64 formula,
the reference against window_attention's RoPE (bitwise) and attention (padded windows, global), argument checks,
dispatch, opcheck."""
from _interp import DEVICE, check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401
from _backends import targets

import pytest
import torch
import torch.nn.functional as F

import sam3lt.ops as ops
from sam3lt.ops import _backend
import seeds

# (N, T, heads, D): one token, T not a multiple of the block, D = 6 / 24 (pair counts 3 / 12, padded to 4 / 16),
# the model's D = 64 (the tiny shape of the 24×24 windows) and a wide head
SHAPES = [(1, 1, 1, 2), (2, 9, 3, 6), (3, 25, 2, 24), (2, 16, 2, 64), (1, 37, 1, 128)]


def tables(gen, tokens, head_dim, paired=True, device=DEVICE):
    """cos/sin (T, D) fp32. paired: HF's layout, one angle per channel pair repeated for both channels; otherwise
    an angle per channel (the spec reads cos/sin at each channel: the kernel must not assume the repetition)."""
    angles = torch.rand(tokens, head_dim // 2 if paired else head_dim, generator=gen, dtype=torch.float64) * 6.3
    if paired:
        angles = angles.repeat_interleave(2, -1)
    return angles.cos().float().to(device), angles.sin().float().to(device)


def rope64(qkv, cos, sin, num_heads):
    """The docstring's formula in fp64, written independently of the reference: the ref64 of check_close."""
    x = qkv.double().unflatten(-1, (3, num_heads, -1, 2))  # (N, T, 3, heads, D/2, pair)
    c, s = (t.double().unflatten(-1, (-1, 2))[:, None, None] for t in (cos, sin))  # (T, 1, 1, D/2, pair)
    xe, xo = x[..., 0], x[..., 1]
    rotated = torch.stack((xe * c[..., 0] - xo * s[..., 0], xo * c[..., 1] + xe * s[..., 1]), dim=-1)
    out = torch.cat((rotated[:, :, :2], x[:, :, 2:]), dim=2)
    return out.flatten(2)


def _run(backend, qkv, cos, sin, heads, what=""):
    out = ops.rope_qkv(qkv, cos, sin, heads, backend=backend)
    assert out.is_contiguous() and out.shape == qkv.shape
    check_close(out, rope64(qkv, cos, sin, heads), ops.rope_qkv_reference(qkv, cos, sin, heads), qkv.dtype,
                f"{backend} {what}")
    return out


def _backends():
    """Every backend that can run on this machine (the test device and its inputs)."""
    qkv, cos = torch.zeros(1, 1, 6, device=DEVICE), torch.zeros(1, 2, device=DEVICE)
    return [b for b in ("eager", "triton", "cuda") if _backend.unavailable_reason("rope_qkv", b, qkv, cos, cos, 1)
            is None]


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("rope_qkv", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("paired", [True, False], ids=["hf-tables", "per-channel"])
@pytest.mark.parametrize("N, T, heads, D", SHAPES, ids=lambda v: str(v))
def test_rope_qkv_every_backend(target, N, T, heads, D, paired, dtype, request):
    gen = seed_for(request)
    qkv = randn(gen, N, T, 3 * heads * D, dtype=dtype, device=target.device)
    cos, sin = tables(gen, T, D, paired, target.device)
    for backend in ("eager", target.backend):
        out = _run(backend, qkv, cos, sin, heads, (N, T, heads, D))
        assert torch.equal(out[..., 2 * heads * D:], qkv[..., 2 * heads * D:]), "v must be copied unchanged"


@kernel_test
def test_rope_qkv_strided_inputs(request):
    gen = seed_for(request)
    N, T, heads, D = 3, 11, 2, 16
    big = randn(gen, T + 2, N, 3 * heads * D + 8)
    qkv = big[1:T + 1, :, 4:4 + 3 * heads * D].transpose(0, 1)  # sequence-minor view with padded rows
    cos, sin = tables(gen, T, D, paired=False)
    cos = torch.cat([cos, cos], dim=1)[:, :D]  # row stride 2·D
    sin = sin.t().contiguous().t()  # column-major
    spaced = torch.empty(N, T, 2 * 3 * heads * D, device=DEVICE)[..., ::2]  # channel stride 2
    spaced.copy_(qkv)
    assert not qkv.is_contiguous() and not cos.is_contiguous() and not sin.is_contiguous()
    for backend in _backends():
        _run(backend, qkv, cos, sin, heads, "strided qkv/tables")
        _run(backend, spaced, cos, sin, heads, "channel stride 2")


@kernel_test
def test_rope_qkv_empty(request):
    for shape, cos_rows in (((0, 5, 12), 5), ((2, 0, 12), 0)):
        cos = torch.zeros(cos_rows, 2, device=DEVICE)
        out = ops.rope_qkv(torch.zeros(*shape, device=DEVICE), cos, cos, 2, backend="triton")
        assert out.shape == shape


@kernel_test
def test_rope_qkv_fast_path_and_opcheck(request):
    gen = seed_for(request)
    qkv = randn(gen, 2, 7, 3 * 2 * 8)
    cos, sin = tables(gen, 7, 8)
    fast = ops.rope_qkv(qkv, cos, sin, 2, backend="triton")
    assert torch.equal(fast, torch.ops.sam3lt.rope_qkv(qkv, cos, sin, 2))
    torch.library.opcheck(torch.ops.sam3lt.rope_qkv.default, (qkv, cos, sin, 2))


@kernel_test
def test_rope_qkv_dispatch(request, monkeypatch):
    """auto: the triton kernel wherever it can run, else eager; the cuda backend (the reference) only by name."""
    gen = seed_for(request)
    qkv = randn(gen, 1, 4, 3 * 8)
    cos, sin = tables(gen, 4, 8)
    args = (qkv, cos, sin, 1)
    assert _backend._REGISTRY["rope_qkv"]["triton"].auto and not _backend._REGISTRY["rope_qkv"]["cuda"].auto
    assert _backend.select("rope_qkv", None, *args)[0] == "triton"
    assert torch.equal(ops.rope_qkv(*args, backend="eager"), ops.rope_qkv_reference(*args))
    if DEVICE == "cpu":
        monkeypatch.delenv("TRITON_INTERPRET")
        assert _backend.select("rope_qkv", None, *args)[0] == "eager"
        with pytest.raises(ops.BackendUnavailable, match="rope_qkv"):
            ops.rope_qkv(*args, backend="cuda")


def test_triton_supports_gives_reasons():
    qkv, cos = torch.randn(1, 3, 3 * 4), torch.randn(3, 4)
    assert "dtype" in _backend.unavailable_reason("rope_qkv", "triton", qkv.double(), cos.double(), cos.double(), 1)
    wide, wide_cos = torch.randn(1, 3, 3 * 512), torch.randn(3, 512)
    assert "head dim 512" in _backend.unavailable_reason("rope_qkv", "triton", wide, wide_cos, wide_cos, 1)


@pytest.mark.parametrize("kw, exc, name", [
    (dict(qkv=None), TypeError, "qkv"),
    (dict(qkv=torch.ones(2, 3, 24, dtype=torch.long)), TypeError, "qkv"),
    (dict(qkv=torch.randn(1, 2, 3, 24)), ValueError, "qkv"),
    (dict(qkv=torch.randn(2, 3, 25)), ValueError, "qkv"),
    (dict(num_heads=3), ValueError, "qkv"),  # 24 channels are not 3·3·head_dim
    (dict(qkv=torch.randn(2, 3, 18), num_heads=2), ValueError, "num_heads"),  # head_dim 3 is odd
    (dict(num_heads=0), ValueError, "num_heads"),
    (dict(num_heads=2.0), TypeError, "num_heads"),
    (dict(num_heads=True), TypeError, "num_heads"),
    (dict(cos=torch.randn(4, 4)), ValueError, "cos"),
    (dict(sin=torch.randn(3, 8)), ValueError, "sin"),
    (dict(cos=[[1.0] * 4] * 3), TypeError, "cos"),
    (dict(sin=torch.ones(3, 4, dtype=torch.int32)), TypeError, "sin"),
    (dict(sin=torch.randn(3, 4, device="meta")), ValueError, "inputs are on different devices"),  # names each
])
def test_argument_errors_name_the_argument(kw, exc, name):
    args = dict(qkv=torch.randn(2, 3, 24), cos=torch.randn(3, 4), sin=torch.randn(3, 4), num_heads=2)
    args.update(kw)
    with pytest.raises(exc, match=rf"rope_qkv: {name}\b"):
        ops.rope_qkv(**args)


# ---------------------------------------------------------------- the spec: window_attention's RoPE

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_reference_is_window_attentions_rope_bitwise(dtype):
    """The reference's q and k are ``apply_rope`` of window_attention_reference's (N, heads, T, D) q and k."""
    gen = seeds.gen(11)
    N, T, heads, D = 3, 10, 2, 16
    qkv = torch.randn(N, T, 3 * heads * D, generator=gen).to(dtype)
    angles = torch.rand(T, D // 2, generator=gen).repeat_interleave(2, -1)
    cos, sin = angles.cos(), angles.sin()
    q, k, v = qkv.view(N, T, 3, heads, D).permute(2, 0, 3, 1, 4).unbind(0)  # as window_attention_reference
    got = ops.rope_qkv_reference(qkv, cos, sin, heads).view(N, T, 3, heads, D).permute(2, 0, 3, 1, 4)
    assert torch.equal(got[0], ops.apply_rope(q, cos, sin)) and torch.equal(got[1], ops.apply_rope(k, cos, sin))
    assert torch.equal(got[2], v) and got.dtype == dtype


@pytest.mark.parametrize("H, W, window", [(6, 6, 0), (7, 9, 4), (8, 8, 4)])
def test_attention_over_rope_qkv_is_window_attention(H, W, window):
    """How the op is defined for the ViT: global attention on the (B, H·W, 3·C) view, windowed attention on the
    partitioned windows (padded tokens = pad_value). SDPA over the rotated sequences, then the unpartition, equals
    window_attention_reference (fp32, the same maths up to SDPA's summation order)."""
    gen = seeds.gen(12)
    B, heads, D = 2, 2, 8
    C = heads * D
    qkv = torch.randn(B, H, W, 3 * C, generator=gen)
    pad = torch.randn(3 * C, generator=gen)
    tokens = window * window if window else H * W
    angles = torch.rand(tokens, D // 2, generator=gen).repeat_interleave(2, -1) * 6.3
    cos, sin = angles.cos(), angles.sin()
    want = ops.window_attention_reference(qkv, cos, sin, heads, window, pad if window else None)
    if window:
        hp, wp = -(-H // window) * window, -(-W // window) * window
        grid = pad.expand(B, hp, wp, 3 * C).clone()
        grid[:, :H, :W] = qkv
        seqs = grid.view(B, hp // window, window, wp // window, window, 3 * C).permute(0, 1, 3, 2, 4, 5)
        seqs = seqs.reshape(-1, tokens, 3 * C)
    else:
        seqs = qkv.view(B, tokens, 3 * C)
    q, k, v = ops.rope_qkv(seqs, cos, sin, heads, backend="eager").view(-1, tokens, 3, heads, D).permute(
        2, 0, 3, 1, 4).unbind(0)
    out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(-1, tokens, C)
    if window:
        out = out.view(B, hp // window, wp // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
        out = out.reshape(B, hp, wp, C)[:, :H, :W]
    torch.testing.assert_close(out.reshape(B, H, W, C), want, rtol=1e-5, atol=1e-6)
