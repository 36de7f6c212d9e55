"""The cpu backend's attention kernel (csrc/cpu/attention.cpp, ``torch.ops.sam3lt_cpu.attention``) beyond the family
tests (test_window_attention.py / test_cross_attention.py run it on their cases): the model's sizes against fp64,
the op's fake implementation and errors, and auto's choice by the number of keys."""
import pytest
import torch

import sam3lt.ops as ops
from sam3lt.ops import _cpu

pytestmark = pytest.mark.skipif(_cpu.IMPORT_ERROR is not None, reason=str(_cpu.IMPORT_ERROR))
TOL = 2e-5  # fp32 against fp64, relative to the output's scale (measured ~4e-6 at 576 keys)


def _qkv(B, heads, Lq, Lk, D, seed=0):
    gen = torch.Generator().manual_seed(seed)
    qkv = torch.randn(B, Lq, 3, heads, D, generator=gen)  # q a strided view of a fused projection, as in the ViT
    q = qkv[:, :, 0].transpose(1, 2)
    k, v = (torch.randn(B, Lk, heads, D, generator=gen).transpose(1, 2) for _ in range(2))
    return q, k, v


def _close(out, ref):
    err = (out.double() - ref).abs().max().item()
    assert err <= TOL * ref.abs().max().item(), err


@pytest.mark.parametrize("B, heads, Lq, Lk, D", [(1, 16, 576, 576, 64), (2, 8, 201, 576, 32), (1, 3, 300, 1100, 16)])
def test_model_sizes_match_fp64(B, heads, Lq, Lk, D):
    """Several blocks of query rows per head (the last one short) and keys over a GEMM's tile."""
    q, k, v = _qkv(B, heads, Lq, Lk, D)
    with torch.no_grad():
        out = _cpu.attention(q, k, v)
        ref = torch.nn.functional.scaled_dot_product_attention(q.double(), k.double(), v.double())
    assert out.shape == (B, Lq, heads, D) and out.is_contiguous()
    _close(out, ref.transpose(1, 2))


def test_box_bias_at_model_size_matches_fp64():
    q, k, v = _qkv(1, 8, 201, 24 * 24, 32, seed=1)
    gen = torch.Generator().manual_seed(2)
    by, bx = (torch.randn(1, 8, 201, 24, generator=gen) * 3 for _ in range(2))
    with torch.no_grad():
        out = ops.box_bias_attention(q, k, v, by, bx, backend="cpu")
        ref = ops.box_bias_attention_reference(q.double(), k.double(), v.double(), by.double(), bx.double())
    _close(out, ref)


@pytest.mark.parametrize("paired", [True, False])
def test_fused_rope_matches_apply_rope_then_sdpa(paired):
    """RoPE inside the kernel (q by block of rows, k once per head) = apply_rope's formula, also for tables that do
    not repeat each angle for both channels of a pair (the general formula, not the complex product)."""
    from sam3lt.ops.window_attention import apply_rope
    q, k, v = _qkv(2, 3, 300, 300, 16, seed=3)
    gen = torch.Generator().manual_seed(4)
    angles = torch.rand(300, 8 if paired else 16, generator=gen, dtype=torch.float64) * 6.3
    if paired:
        angles = angles.repeat_interleave(2, dim=-1)
    with torch.no_grad():
        out = _cpu.attention(q, k, v, cos=angles.cos().float(), sin=angles.sin().float())
        qd, kd = (apply_rope(t.double(), angles.cos(), angles.sin()) for t in (q, k))
        ref = torch.nn.functional.scaled_dot_product_attention(qd, kd, v.double())
    _close(out, ref.transpose(1, 2))


def test_fake_implementation_and_opcheck():
    q, k, v = _qkv(2, 3, 7, 70, 8)
    op = torch.ops.sam3lt_cpu.attention.default
    meta = op(*(t.to("meta") for t in (q, k, v)), 0.5)
    assert meta.shape == (2, 7, 3, 8)
    mask = torch.rand(2, 70) > 0.3
    torch.library.opcheck(op, (q, k, v, 8 ** -0.5, None, None, mask))
    torch.library.opcheck(op, (q, k, v, 8 ** -0.5, torch.randn(2, 3, 7, 7), torch.randn(2, 3, 7, 10), None))
    q, k, v = _qkv(2, 3, 70, 70, 8)
    torch.library.opcheck(op, (q, k, v, 8 ** -0.5, None, None, None, torch.randn(70, 8), torch.randn(70, 8)))


@pytest.mark.parametrize("change, match", [
    (lambda q, k, v: (q, k, v[:, :, :5]), "same length"),
    (lambda q, k, v: (q.double(), k, v), "float32"),
    (lambda q, k, v: (q, k[:, :1], v), "expected"),
    (lambda q, k, v: (q, k, v, None, torch.randn(1, 2, 4, 6)), "come together"),
    (lambda q, k, v: (q, k, v, torch.randn(1, 2, 4, 2), torch.randn(1, 2, 4, 5)), "Hg \\* Wg"),
    (lambda q, k, v: (q, k, v, torch.randn(1, 2, 4, 2), torch.randn(1, 2, 4, 3), torch.ones(1, 6, dtype=torch.bool)),
     "not both"),
    (lambda q, k, v: (q, k, v, None, None, torch.ones(1, 6)), "key_mask must be a Bool"),
    (lambda q, k, v: (q, k[..., :1, :].expand(1, 2, 6, 8), v), "overlap"),
    (lambda q, k, v: (q, k, v, None, None, None, torch.ones(6, 8), None), "come together"),
    (lambda q, k, v: (q, k, v, None, None, None, torch.ones(6, 8), torch.ones(6, 8)), "self-attention"),
    (lambda q, k, v: (k, k, v, None, None, None, torch.ones(5, 8), torch.ones(5, 8)), "cos must be"),
])
def test_kernel_errors_name_the_argument(change, match):
    q, k, v = (torch.randn(1, 2, L, 8) for L in (4, 6, 6))
    args = change(q, k, v)
    with pytest.raises(RuntimeError, match=match):
        torch.ops.sam3lt_cpu.attention(*args[:3], 8 ** -0.5, *args[3:])


def test_auto_runs_the_kernel_where_it_was_measured_faster():
    low, high = _cpu.ATTENTION_KEYS["masked_attention"]
    with torch.no_grad():
        for window, runs in ((4, "eager"), (8, "cpu"), (24, "cpu")):  # 16, 64, 576 keys
            qkv = torch.randn(1, window, window, 3 * 32)
            cos, sin = torch.ones(window * window, 16), torch.zeros(window * window, 16)
            expl = ops.explain("window_attention", qkv, cos, sin, 2, window, None)
            assert expl[runs] == "runs", expl
            if runs == "eager":
                assert "keys per query" in expl.rule and expl["cpu"] == "available"
        q, k, v = _qkv(1, 2, 5, high + 1, 8)
        assert ops.explain("masked_attention", q, k, v, None)["eager"] == "runs"
        q, k, v = _qkv(1, 2, 5, low, 8)
        assert ops.explain("masked_attention", q, k, v, None)["cpu"] == "runs"
        assert ops.explain("masked_attention", q.half(), k.half(), v.half(), None)["eager"] == "runs"
        q, k, v = _qkv(1, 2, 5, 72 * 72, 8)  # the box bias at 1008²: no upper bound
        by, bx = torch.randn(1, 2, 5, 72), torch.randn(1, 2, 5, 72)
        assert ops.explain("box_bias_attention", q, k, v, by, bx)["cpu"] == "runs"
        by, bx = torch.randn(1, 2, 5, 6), torch.randn(1, 2, 5, 5)
        q, k, v = _qkv(1, 2, 5, 30, 8)
        expl = ops.explain("box_bias_attention", q, k, v, by, bx)
        assert expl["eager"] == "runs" and "64 or more" in expl.rule


def test_without_mkl_auto_runs_sdpa(monkeypatch):
    monkeypatch.setattr(_cpu, "_ATTENTION", False)
    q, k, v = _qkv(1, 2, 5, 100, 8)
    with torch.no_grad():
        expl = ops.explain("masked_attention", q, k, v, None)
        assert expl["eager"] == "runs" and "sgemm" in expl["cpu"]
        with pytest.raises(ops.BackendUnavailable, match="sgemm"):
            ops.masked_attention(q, k, v, backend="cpu")


def test_model_forward_runs_the_kernel_and_agrees(monkeypatch):
    """A whole tiny model, fp32 eager: with every key count allowed, all three attention ops of the model (ViT
    windows and global layers with RoPE, DETR self-/cross-attention with masks and the box bias) run the kernel,
    and the outputs agree with the model on the eager references."""
    import sam3lt
    import seeds

    torch.manual_seed(seeds.BASE)
    model = sam3lt.Sam3LiteTextModel(sam3lt.Sam3LiteTextConfig.tiny()).eval()
    size = model.config.image_size
    gen = seeds.gen(0)
    mask = torch.ones(2, 32, dtype=torch.long)
    mask[-1, 12:] = 0
    inputs = dict(pixel_values=torch.randn(1, 3, size, size, generator=gen),
                  input_ids=torch.randint(1, 49000, (2, 32), generator=gen), attention_mask=mask)
    with torch.no_grad(), sam3lt.use_backend("eager"):
        ref = model(**inputs)
    calls = []
    kernel = _cpu.attention
    monkeypatch.setattr(_cpu, "attention", lambda *a, **k: calls.append(sorted(n for n, v in k.items()
                                                                                if v is not None)) or kernel(*a, **k))
    monkeypatch.setattr(_cpu, "ATTENTION_KEYS", dict.fromkeys(_cpu.ATTENTION_KEYS, (1, None)))
    with torch.no_grad():
        out = model(**inputs)
    kinds = {tuple(c) for c in calls}
    assert {("cos", "sin"), ("bias_x", "bias_y"), ("key_mask",), ()} <= kinds, kinds
    for name in ("pred_masks", "pred_logits", "pred_boxes"):
        a, b = getattr(out, name), getattr(ref, name)
        assert (a - b).abs().max() <= 1e-4 * max(1.0, b.abs().max().item()), name
