"""The cuda backend (``sam3lt._C``, csrc/) beyond the family tests' cases.

Each op's kernel cases live in its family test (tests/test_<op>.py), which runs them on every backend registered
for the op (tests/_backends.py): ``cuda`` on a GPU (the extension) and ``cuda-emu`` on any machine (the same
kernel sources and host code compiled for the CPU against csrc/emu/cuda_emu.h; SAM3LT_SKIP_EMULATION=1 skips it).
Here: the emulator itself (a missing barrier is caught; results do not depend on the thread order), whole-model
parity cuda vs eager on the tiny config (on the GPU, and with the emulated kernels on the CPU), and GPU-only
extras: shapes of the real model (576-token windows, 5184-token global attention, 200 queries over a 72×72 grid),
opcheck, auto's choice and torch.compile. Same tolerance rule as the family tests (``_interp.check_close``).
"""
from _interp import randn, seed_for  # first: decides how triton is imported

import pytest
import torch
import torch.nn.functional as F

import sam3lt
import sam3lt.ops as ops
import seeds
from _backends import ALL_DTYPES, ORDERS, emulate_cuda, require_cuda_extension, require_emulator
from sam3lt.ops import _backend, _cuda
from test_cross_attention import box_case, check_box, make_mask
from test_window_attention import check as check_window
from test_window_attention import make_case as window_case
from test_window_attention import rope_tables


@pytest.fixture(scope="session")
def emulated():
    require_emulator()


@pytest.fixture(scope="session")
def gpu():
    require_cuda_extension()


# ---------------------------------------------------------------- the emulator itself

def test_emulator_detects_missing_barriers(emulated):
    """The method behind the emulated tests: a missing __syncthreads changes results with the schedule, a
    divergent one is an error, a correct kernel is schedule independent."""
    expected = (torch.arange(64, dtype=torch.int32) + 1) % 64
    for order in ORDERS.values():
        torch.ops.sam3lt_emu.set_schedule(order, 3)
        assert torch.equal(torch.ops.sam3lt_emu.selftest(0), expected)
    racy = []
    for order in ORDERS.values():
        torch.ops.sam3lt_emu.set_schedule(order, 3)
        racy.append(torch.ops.sam3lt_emu.selftest(1))
    assert not all(torch.equal(r, expected) for r in racy)
    with pytest.raises(RuntimeError, match="__syncthreads"):
        torch.ops.sam3lt_emu.selftest(2)


def test_emulated_cp_async_completes_at_the_wait(emulated):
    """cp.async lands at cp.async.wait_group: read after the wait, the data; before it, the poison (-1); a
    misaligned source is an error."""
    src = torch.arange(4 * 64, dtype=torch.int32)
    assert torch.equal(torch.ops.sam3lt_emu.selftest(3), src[::4])
    assert torch.equal(torch.ops.sam3lt_emu.selftest(4), torch.full((64,), -1, dtype=torch.int32))
    with pytest.raises(RuntimeError, match="cp.async"):
        torch.ops.sam3lt_emu.selftest(5)


def test_emulated_fragments_follow_the_ptx_layouts(emulated):
    """ldmatrix .x4 (plain and .trans) and mma.sync m16n8k16 against the PTX ISA's fragment tables, written out
    here independently of the emulator: lane l, g = l // 4, t = l % 4."""
    out = torch.ops.sam3lt_emu.fragment_selftest()
    m = torch.arange(256, dtype=torch.float32).view(16, 16)  # M[r][c] = 16 r + c
    for lane in range(32):
        g, t = lane // 4, lane % 4
        # matrix j: rows 8 (j % 2) .. + 8, columns 8 (j // 2) .. + 8 (the addresses the selftest gives)
        mats = [m[8 * (j % 2):8 * (j % 2) + 8, 8 * (j // 2):8 * (j // 2) + 8] for j in range(4)]
        plain = [x for mat in mats for x in (mat[g, 2 * t], mat[g, 2 * t + 1])]
        trans = [x for mat in mats for x in (mat[2 * t, g], mat[2 * t + 1, g])]
        assert out[lane, :8].tolist() == [float(x) for x in plain], lane
        assert out[lane, 8:16].tolist() == [float(x) for x in trans], lane
        d = m @ m[:, :8]  # A = M (row), B = M[:, 0:8] (k x n)
        assert out[lane, 16:].tolist() == [float(d[g, 2 * t]), float(d[g, 2 * t + 1]),
                                           float(d[g + 8, 2 * t]), float(d[g + 8, 2 * t + 1])], lane


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_emulated_results_do_not_depend_on_the_schedule(emulated, dtype, request):
    """Every op, several shapes, under forward / reverse / two random thread orders: bit-identical outputs."""
    gen = seed_for(request)
    cases = []
    for shape in [(1, 7, 9, 2, 16, 4, True), (1, 9, 9, 1, 64, 0, False), (1, 5, 6, 1, 128, 4, True)]:
        cases.append(("window_attention", window_case(gen, *shape, dtype, "cpu")))
    q = randn(gen, 2, 2, 70, 32, device="cpu", dtype=dtype)
    kv = [randn(gen, 2, 2, 72, 32, device="cpu", dtype=dtype) for _ in range(2)]
    cases.append(("box_bias_attention", (q, *kv, randn(gen, 2, 2, 70, 9, device="cpu"),
                                         randn(gen, 2, 2, 70, 8, device="cpu"))))
    cases.append(("masked_attention", (q, *kv, make_mask(gen, "one_row_empty", 2, 72, "cpu"))))
    cases.append(("repmixer_dwconv", (randn(gen, 2, 30, 20, device="cpu", dtype=dtype),
                                      randn(gen, 20, 11, device="cpu", dtype=dtype), randn(gen, 20, device="cpu",
                                                                                             dtype=dtype), True)))
    cases.append(("upsample_nearest_add", (randn(gen, 1, 2, 5, 7, device="cpu", dtype=dtype),
                                           randn(gen, 1, 2, 11, 13, device="cpu", dtype=dtype))))
    for name, args in cases:
        outs = []
        for order, seed in [(0, 0), (1, 0), (2, 1), (2, 2)]:
            torch.ops.sam3lt_emu.set_schedule(order, seed)
            outs.append(getattr(torch.ops.sam3lt_emu, name)(*args))
        for o in outs[1:]:
            assert torch.equal(o, outs[0]), name


# ---------------------------------------------------------------- GPU only: model shapes, opcheck, compile, parity

MODEL_WINDOW_CASES = [(1, 72, 72, 16, 64, 24, False), (1, 36, 36, 4, 64, 0, False), (1, 20, 20, 4, 16, 8, True)]
MODEL_BOX_CASES = [(1, 8, 200, 72, 72, 32), (2, 8, 200, 18, 18, 32)]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("B, H, W, heads, D, window, pad", MODEL_WINDOW_CASES)
def test_window_attention_model_shapes(gpu, B, H, W, heads, D, window, pad, dtype, request):
    args = window_case(seed_for(request), B, H, W, heads, D, window, pad, dtype, "cuda")
    check_window("cuda", *args, dtype, f"{H}x{W} win{window}")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("B, heads, Lq, Hg, Wg, D", MODEL_BOX_CASES)
def test_box_bias_attention_model_shapes(gpu, B, heads, Lq, Hg, Wg, D, dtype, request):
    check_box("cuda", *box_case(seed_for(request), B, heads, Lq, Hg, Wg, D, dtype, "cuda"), dtype)


def _samples(gen, dtype=torch.float32):
    dev = "cuda"
    return {
        "repmixer_dwconv": (randn(gen, 2, 9, 8, device=dev, dtype=dtype), randn(gen, 8, 3, device=dev, dtype=dtype),
                            randn(gen, 8, device=dev, dtype=dtype), True),
        "window_attention": (randn(gen, 1, 5, 6, 3 * 32, device=dev, dtype=dtype), *rope_tables(gen, 16, 16, dev), 2, 4,
                             randn(gen, 3 * 32, device=dev, dtype=dtype)),
        "box_bias_attention": (randn(gen, 1, 2, 7, 16, device=dev, dtype=dtype),
                               randn(gen, 1, 2, 12, 16, device=dev, dtype=dtype),
                               randn(gen, 1, 2, 12, 16, device=dev, dtype=dtype),
                               randn(gen, 1, 2, 7, 3, device=dev), randn(gen, 1, 2, 7, 4, device=dev)),
        "masked_attention": (randn(gen, 1, 2, 7, 16, device=dev, dtype=dtype),
                             randn(gen, 1, 2, 12, 16, device=dev, dtype=dtype),
                             randn(gen, 1, 2, 12, 16, device=dev, dtype=dtype),
                             (torch.arange(12, device=dev) < 9)[None]),
        "upsample_nearest_add": (randn(gen, 1, 3, 4, 5, device=dev, dtype=dtype),
                                 randn(gen, 1, 3, 8, 10, device=dev, dtype=dtype)),
        "masks_to_binary": (randn(gen, 2, 6, 7, device=dev, dtype=dtype, scale=3.0), [11, 9], 0.5),
    }


@pytest.mark.parametrize("name", _cuda.kernel_ops())
def test_opcheck(gpu, name, request):
    args = _samples(seed_for(request))[name]
    torch.library.opcheck(getattr(torch.ops.sam3lt_C, name).default, args)


def test_auto_picks_cuda_on_gpu(gpu, request):
    for name, args in _samples(seed_for(request), torch.float16).items():
        assert _backend.select(name, None, *args)[0] == "cuda", name


def test_compile_fullgraph_cuda(gpu, request):
    args = _samples(seed_for(request))

    def run_all(a):
        return {name: getattr(ops, name)(*x) for name, x in a.items()}

    with ops.use_backend("cuda"):
        eager = run_all(args)
        torch._dynamo.reset()
        compiled = torch.compile(run_all, fullgraph=True)(args)
    for name in args:
        assert torch.equal(compiled[name], eager[name]), name


def _model_inputs(config, device):
    gen = seeds.gen()
    pixels = torch.randn(1, 3, config.image_size, config.image_size, generator=gen).to(device)
    ids = torch.randint(1, 49000, (3, 9), generator=gen)
    mask = torch.ones(3, 9, dtype=torch.long)
    for i, length in enumerate((9, 6, 4)):
        ids[i, length - 1] = 49407
        ids[i, length:] = 0
        mask[i, length:] = 0
    boxes = torch.tensor([[[0.5, 0.5, 0.3, 0.2], [0.3, 0.6, 0.2, 0.1]]]).expand(3, 2, 4)
    return dict(pixel_values=pixels, input_ids=ids.to(device), attention_mask=mask.to(device),
                input_boxes=boxes.to(device))


def _rounding_scales(model, inputs):
    """Per output, the magnitude its rounding errors scale with: for an output made by a last linear map
    y = W·x + b, the componentwise bound |fl(y) − y| ≤ γ·(|W|·|x| + |b|) (Higham, ch. 3) says errors scale with
    |W|·|x| + |b|, not with |y|; the two differ where the terms cancel (the presence logit of a random model is
    ~0.02 while its terms are ~1). Taken from the fp32 eager run; pred_boxes are sigmoids, scaled by |y|."""
    dec, score, mask = model.detr_decoder, model.dot_product_scoring, model.mask_decoder
    grab = {}
    hooks = [m.register_forward_hook((lambda key: lambda mod, args, out: grab.__setitem__(key, (args[0], out)))(k))
             for k, m in [("presence", dec.presence_head.layer3), ("query", score.query_proj),
                          ("text", score.text_proj), ("embed", mask.mask_embedder),
                          ("pixel", mask.instance_projection), ("semantic", mask.semantic_projection)]]
    try:
        with ops.use_backend("eager"):
            out = model(**inputs)
    finally:
        for h in hooks:
            h.remove()
    lin, conv = dec.presence_head.layer3, mask.semantic_projection
    terms = {
        "presence_logits": F.linear(grab["presence"][0].abs(), lin.weight.abs(), lin.bias.abs()),
        "pred_logits": (grab["query"][1].abs() @ grab["text"][1].abs().unsqueeze(-1)).squeeze(-1) * score.scale,
        "pred_masks": torch.einsum("bqc,bchw->bqhw", grab["embed"][1].abs(), grab["pixel"][1].abs()),
        "semantic_seg": F.conv2d(grab["semantic"][0].abs(), conv.weight.abs(), conv.bias.abs()),
        "pred_boxes": out.pred_boxes.abs(),
    }
    return out, {k: max(v.abs().max().item(), getattr(out, k).abs().max().item(), 1e-12) for k, v in terms.items()}


def _model_parity(device, dtype, rtol, monkeypatch, emulated=False):
    """The tiny model (padded windows, global attention, RepMixer text encoder, box prompts) forced to the cuda
    backend against the eager backend; every cuda op family must have run. fp32: relative error <= rtol against
    eager. 16-bit: the error against the fp32 eager model at most 2x eager's own error in that dtype, plus rtol;
    both relative to the magnitude the output's rounding errors scale with (:func:`_rounding_scales`)."""
    config = sam3lt.Sam3LiteTextConfig.tiny("s0")
    torch.manual_seed(seeds.BASE)
    model = sam3lt.Sam3LiteTextModel(config).eval().to(device=device)
    inputs = _model_inputs(config, device)
    calls = []
    if emulated:  # the emulated kernels stand in for the extension, on CPU tensors (torch's ops run as they are)
        emulate_cuda(monkeypatch)
        torch.ops.sam3lt_emu.set_schedule(ORDERS["random"], seeds.BASE)
    for name in _cuda.kernel_ops() + _cuda.torch_ops():
        impl = _backend._REGISTRY[name]["cuda"]
        if emulated and name in _cuda.torch_ops():
            monkeypatch.setattr(impl, "supports", lambda *a: None)
        monkeypatch.setattr(impl, "fn", (lambda f, n: lambda *a: calls.append(n) or f(*a))(impl.fn, name))
    with torch.no_grad():
        ref32, scales = _rounding_scales(model, inputs)
        model = model.to(dtype)
        inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        with ops.use_backend("eager"):
            ref = model(**inputs)
        with ops.use_backend("cuda"):
            out = model(**inputs)
    assert {"repmixer_dwconv", "window_attention", "box_bias_attention", "masked_attention",
            "upsample_nearest_add"} <= set(calls), sorted(set(calls))
    for name, scale in scales.items():
        exact = getattr(ref32, name).double()
        err = (getattr(out, name).double() - exact).abs().max().item() / scale
        ref_err = (getattr(ref, name).double() - exact).abs().max().item() / scale
        assert err <= 2 * ref_err + rtol, f"{name}: relative error {err:.3g} > 2·{ref_err:.3g} + {rtol}"


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-4), (torch.float16, 1e-2), (torch.bfloat16, 2e-2)],
                         ids=["fp32", "fp16", "bf16"])
def test_model_parity_cuda_vs_eager(gpu, dtype, rtol, monkeypatch):
    _model_parity("cuda", dtype, rtol, monkeypatch)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_model_parity_emulated_vs_eager(emulated, dtype, rtol, monkeypatch):
    """The same whole-model check on the CPU, with the emulated kernels standing in for sam3lt._C."""
    _model_parity("cpu", dtype, rtol, monkeypatch, emulated=True)
