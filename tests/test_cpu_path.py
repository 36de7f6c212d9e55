"""The CPU path (issue 14): ``sam3lt.optimize`` on a CPU model (sam3lt/cpu.py) against fp32 eager, the bf16/fp32
decision and its fallbacks, and the eager linear's in-place epilogue. No timings here (bench/cpu_*.py measure)."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

import sam3lt
from sam3lt import cpu
from sam3lt.fast import agreement
from sam3lt.ops import _cpu
from sam3lt.ops.linear import ACTIVATIONS, linear_reference
import seeds

# The fast path's accuracy rule (README, tests/test_fast.py): thresholded masks IoU >= 0.99, scores within 1e-2.
MIN_MASK_IOU, MAX_SCORE_DIFF = 0.99, 1e-2
NATIVE_BF16, WHY = cpu.native_bf16()


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(seeds.BASE)
    model = sam3lt.Sam3LiteTextModel(sam3lt.Sam3LiteTextConfig.tiny())
    return model, copy.deepcopy(model)


def _inputs(config, prompts=2, seed=0):
    gen = seeds.gen(seed)
    size = config.image_size
    mask = torch.ones(prompts, 32, dtype=torch.long)
    mask[-1, 20:] = 0  # one padded prompt
    return dict(pixel_values=torch.randn(1, 3, size, size, generator=gen),
                input_ids=torch.randint(1, 49000, (prompts, 32), generator=gen), attention_mask=mask)


def _reference(model, inputs):
    with torch.no_grad():
        return model(**inputs)


# ---- accuracy -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(
    not NATIVE_BF16, reason=f"no native bf16 here: {WHY}"))])
def test_optimize_agrees_with_fp32_eager(pair, precision):
    ref_model, model = pair
    fast = cpu.optimize(copy.deepcopy(model), precision=precision)
    assert fast.cpu_plan.precision == precision and fast.dtype == torch.float32
    for prompts, seed in ((1, 0), (2, 1)):
        inputs = _inputs(model.config, prompts, seed)
        ref = _reference(ref_model, inputs)
        out = fast(**inputs)
        stats = agreement(out, ref)
        assert stats["mask_iou"] >= MIN_MASK_IOU and stats["score_max_diff"] <= MAX_SCORE_DIFF, stats
        if precision == "fp32":  # MKL's packed sgemm: fp32 eager's numbers up to the last bits of rounding
            torch.testing.assert_close(out.pred_masks, ref.pred_masks, rtol=1e-4, atol=1e-4)
    if precision == "bf16":
        assert fast.gemms._packed, "no GEMM ran on a packed weight"
    else:  # fp32: eager's own cpu backend packs (ops.linear), no mode around the calls
        assert fast.gemms is None


def test_packed_gemms_take_every_linear(pair):
    """Every F.linear of a forward runs packed (none left on the unpacked path), and a changed batch size reuses
    oneDNN's packing / repacks for MKL without changing the result."""
    _, model = pair
    for precision in ("fp32",) + (("bf16",) if NATIVE_BF16 else ()):
        x, w, b = torch.randn(2, 5, 16), torch.randn(8, 16), torch.randn(8)
        mode = cpu.PackedGemms(precision, [w])
        with mode:
            y1 = torch.nn.functional.linear(x, w, b)
            y2 = torch.nn.functional.linear(x[:1], w, b)
            other = torch.randn(8, 16)
            y3 = torch.nn.functional.linear(x, other, b)  # not a frozen tensor: runs unpacked, exactly F.linear
        assert len(mode._packed) == (2 if precision == "fp32" else 1) and mode.unpacked == 1
        assert torch.equal(y3, torch.nn.functional.linear(x, other, b))
        tol = dict(rtol=2e-2, atol=2e-2) if precision == "bf16" else dict(rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y1, torch.nn.functional.linear(x, w, b), **tol)
        torch.testing.assert_close(y2, y1[:1], **tol)
    if not NATIVE_BF16:
        return
    calls = []
    fast = cpu.optimize(copy.deepcopy(model), precision="bf16", bf16_modules=())  # every GEMM packed fp32, in the mode
    original = fast.gemms.linear
    fast.gemms.linear = lambda x, w, b: calls.append(tuple(w.shape)) or original(x, w, b)
    fast(**_inputs(model.config))
    assert len(calls) > 50 and fast.gemms.unpacked == 0, (len(calls), fast.gemms.unpacked)


def test_dtype_float32_keeps_the_models_numbers(pair):
    """dtype=torch.float32 asks for the model's own numbers: eager as it is, no mode, nothing rerouted."""
    ref_model, model = pair
    fast = sam3lt.optimize(copy.deepcopy(model), dtype=torch.float32)
    assert fast.gemms is None and not fast.cpu_plan.packed and "the model's own numbers" in repr(fast)
    inputs = _inputs(model.config)
    torch.testing.assert_close(fast(**inputs).pred_masks, _reference(ref_model, inputs).pred_masks, rtol=1e-5,
                               atol=1e-5)


def test_plain_forward_outside_optimize_is_untouched(pair):
    """The mode is entered only around the fast path's calls: the plain model afterwards is fp32 eager, bitwise."""
    ref_model, model = pair
    inputs = _inputs(model.config)
    before = _reference(ref_model, inputs)
    fast = cpu.optimize(copy.deepcopy(model))
    fast(**inputs)
    assert torch.equal(_reference(ref_model, inputs).pred_masks, before.pred_masks)


def test_bf16_plan_scope(pair):
    """The bf16 plan's default scope (cpu.default_bf16_modules) names real submodules and is stated; the rest of
    the model runs packed fp32: the mask decoder's own GEMMs and the patch embedding stay fp32."""
    _, model = pair
    fast = cpu.optimize(copy.deepcopy(model), precision="bf16")
    plan = fast.cpu_plan
    assert plan.bf16_modules == cpu.default_bf16_modules(fast.model)
    assert "vision_encoder.backbone.layers" in plan.bf16_modules and "mask_decoder.pixel_decoder" in repr(fast)
    gemms, m = fast.gemms, fast.model
    assert gemms._in_bf16(m.vision_encoder.backbone.layers[0].mlp.fc1.weight)
    assert gemms._in_bf16(m.detr_decoder.layers[0].mlp.fc1.weight)
    assert not gemms._in_bf16(m.mask_decoder.mask_embedder.layers[0].weight)
    assert not gemms._in_bf16(m.vision_encoder.backbone.embeddings.patch_embeddings.projection.weight)
    assert not gemms._in_bf16(m.vision_encoder.neck.fpn_layers[-2].proj2.weight)  # the level the DETR reads


@pytest.mark.skipif(not NATIVE_BF16, reason=f"no native bf16 here: {WHY}")
def test_bf16_modules_option(pair):
    """bf16_modules picks the scope: none (every GEMM and convolution packed fp32: fp32 eager's numbers up to
    rounding) or a custom list; the accuracy rule holds for the whole model in bf16 scope too."""
    ref_model, model = pair
    inputs = _inputs(model.config)
    ref = _reference(ref_model, inputs)
    none = cpu.optimize(copy.deepcopy(model), precision="bf16", bf16_modules=())
    assert none.cpu_plan.bf16_modules == () and "bf16 in no module" in repr(none)
    torch.testing.assert_close(none(**inputs).pred_masks, ref.pred_masks, rtol=1e-4, atol=1e-4)
    everything = cpu.optimize(copy.deepcopy(model), precision="bf16",
                              bf16_modules=("vision_encoder", "text_encoder", "text_projection", "detr_encoder",
                                            "detr_decoder", "mask_decoder", "dot_product_scoring"))
    stats = agreement(everything(**inputs), ref)
    assert stats["mask_iou"] >= MIN_MASK_IOU and stats["score_max_diff"] <= MAX_SCORE_DIFF, stats


def test_bf16_modules_bad_names(pair):
    _, model = pair
    with pytest.raises(ValueError, match="bf16_modules: the model has no submodule 'vision'"):
        cpu.optimize(copy.deepcopy(model), bf16_modules=("vision",))
    with pytest.raises(TypeError, match="bf16_modules"):
        cpu.optimize(copy.deepcopy(model), bf16_modules="vision_encoder")
    with pytest.raises(ValueError, match="bf16: expected tensors among frozen"):
        cpu.PackedGemms("bf16", [torch.randn(2)], [torch.randn(2)])
    with pytest.raises(ValueError, match="activations"):
        w = torch.randn(4, 4)
        cpu.PackedGemms("bf16", [w], activations=[(w, "silu")])


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=pytest.mark.skipif(
    not NATIVE_BF16, reason=f"no native bf16 here: {WHY}"))])
@pytest.mark.parametrize("transposed", [False, True])
def test_packed_convolutions(precision, transposed):
    """Convolutions on frozen weights run oneDNN's packed convolution (channels-last output), equal to F.conv2d /
    F.conv_transpose2d up to rounding, for any input size; grouped ones, other weights and a torch without the
    packed ops run torch's own convolution."""
    F = torch.nn.functional
    gen = seeds.gen(1)
    if transposed:
        w, b = torch.randn(8, 6, 2, 2, generator=gen), torch.randn(6, generator=gen)
        conv = lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2)  # noqa: E731
    else:
        w, b = torch.randn(6, 8, 3, 3, generator=gen), torch.randn(6, generator=gen)
        conv = lambda x, w, b: F.conv2d(x, w, b, padding=1)  # noqa: E731
    mode = cpu.PackedGemms(precision, [w, b])
    tol = dict(rtol=3e-2, atol=1e-1) if precision == "bf16" else dict(rtol=1e-5, atol=1e-5)
    for shape in ((1, 8, 10, 10), (2, 8, 7, 5)):
        x = torch.randn(*shape, generator=gen)
        with torch.no_grad(), mode:
            y = conv(x, w, b)
        assert y.dtype == torch.float32 and y.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(y, conv(x, w, b), **tol)
    assert sum(1 for k in mode._packed if k[0] == "conv") == 1  # packed once, for every input size
    grouped, other = torch.randn(8, 1, 3, 3, generator=gen), torch.randn(6, 8, 3, 3, generator=gen)
    x = torch.randn(1, 8, 6, 6, generator=gen)
    mode = cpu.PackedGemms(precision, [w, b, grouped])
    with torch.no_grad(), mode:
        assert torch.equal(F.conv2d(x, grouped, groups=8), F.conv2d(x, grouped, groups=8).contiguous())
        assert torch.equal(F.conv2d(x, other, padding=1), torch.nn.functional.conv2d(x, other, padding=1))
    assert not any(k[0] == "conv" for k in mode._packed)
    mode.convolutions = False  # a torch without oneDNN's packed convolutions
    with torch.no_grad(), mode:
        assert torch.equal(conv(x, w, b), conv(x, w, b)) and not mode._packed


# ---- Winograd 3×3 convolutions (sam3lt.ops.conv3x3's cpu backend; its numerics: tests/test_conv.py) -----------
def _conv3x3_routes(model, types=None):
    from sam3lt.model.common import Conv3x3

    return {name: m.backend for name, m in model.named_modules() if isinstance(m, types or Conv3x3)}


def _count_winograd(monkeypatch) -> list:
    from sam3lt.ops import _backend

    impl, calls = _backend._REGISTRY["conv3x3"]["cpu"], []

    def counted(*args):
        calls.append(tuple(args[0].shape))
        return fn(*args)

    fn = impl.fn
    monkeypatch.setattr(impl, "fn", counted)
    return calls


@pytest.mark.skipif(_cpu.IMPORT_ERROR is not None, reason=str(_cpu.IMPORT_ERROR))
def test_winograd_in_optimize(pair, monkeypatch):
    """optimize(winograd=True), the default: the fp32 plan's 3×3 convolutions run sam3lt's Winograd (the cpu
    backend, counted) within the fast path's rule, and the plan says so; winograd=False routes every Conv3x3 to
    the eager reference (oneDNN's packed convolution: no Winograd call); a bad value names the argument."""
    ref_model, model = pair
    inputs = _inputs(model.config, 2, 5)
    ref = _reference(ref_model, inputs)
    calls = _count_winograd(monkeypatch)
    fast = cpu.optimize(copy.deepcopy(model), precision="fp32")
    out = fast(**inputs)
    routes = _conv3x3_routes(fast.model)
    assert routes and set(routes.values()) == {None} and calls
    assert "Winograd F(4×4, 3×3)" in fast.cpu_plan.describe()
    stats = agreement(out, ref)
    assert stats["mask_iou"] >= MIN_MASK_IOU and stats["score_max_diff"] <= MAX_SCORE_DIFF, stats
    torch.testing.assert_close(out.pred_masks, ref.pred_masks, rtol=1e-4, atol=1e-4)
    calls.clear()
    fast = cpu.optimize(copy.deepcopy(model), precision="fp32", winograd=False)
    fast(**inputs)
    assert set(_conv3x3_routes(fast.model).values()) == {"eager"} and calls == []
    assert "oneDNN (winograd=False)" in fast.cpu_plan.describe()
    with pytest.raises(ValueError, match="winograd"):
        cpu.optimize(copy.deepcopy(model), winograd="yes")
    with pytest.raises(ValueError, match="winograd"):
        cpu.optimize(copy.deepcopy(model), winograd=None)


@pytest.mark.skipif(not NATIVE_BF16, reason=f"no native bf16 here: {WHY}")
def test_bf16_scope_convolutions_stay_bf16(pair, monkeypatch):
    """The bf16 plan runs the 3×3 and 2×2 transposed convolutions of its scope in bf16 (routed to the eager
    reference, which the plan packs as oneDNN bf16 convolutions) and keeps the cpu backend for the fp32 ones
    outside it."""
    from sam3lt.model.common import Conv3x3, ConvTranspose2x2

    _, model = pair
    fast = cpu.optimize(copy.deepcopy(model), precision="bf16")
    routes = _conv3x3_routes(fast.model, (Conv3x3, ConvTranspose2x2))
    scope = fast.cpu_plan.bf16_modules
    for name, backend in routes.items():
        in_scope = any(name.startswith(s + ".") for s in scope)
        assert backend == ("eager" if in_scope else None), (name, backend)
    assert "eager" in routes.values() and None in routes.values()


def test_winograd_without_the_cpu_extension(pair, monkeypatch):
    """Without sam3lt._cpu the plan states oneDNN and why."""
    monkeypatch.setattr(_cpu, "IMPORT_ERROR", "sam3lt._cpu is not built (test)")
    _, model = pair
    fast = cpu.optimize(copy.deepcopy(model), precision="fp32")
    assert "oneDNN (sam3lt._cpu is not built (test))" in fast.cpu_plan.describe()


@pytest.mark.skipif(not NATIVE_BF16, reason=f"no native bf16 here: {WHY}")
def test_fused_activations(pair):
    """The bf16 GEMMs of MLP hidden layers apply their activation (oneDNN post-op) and the caller's in-place
    activation is skipped: once per such GEMM in a forward; a fused output used otherwise raises."""
    _, model = pair
    fast = cpu.optimize(copy.deepcopy(model), precision="bf16")
    fast(**_inputs(model.config))
    assert fast.gemms.fused > 0 and fast.gemms._pending is None
    F = torch.nn.functional
    w, b, x = torch.randn(16, 8), torch.randn(16), torch.randn(3, 8)
    mode = cpu.PackedGemms("bf16", [w, b], activations=[(w, "gelu")])
    with torch.no_grad(), mode:
        y = F.linear(x, w, b)
        assert y.dtype == torch.bfloat16 and torch.ops.aten.gelu_(y) is y and mode.fused == 1
    torch.testing.assert_close(y.float(), F.gelu(F.linear(x, w, b)), rtol=2e-2, atol=2e-2)
    with torch.no_grad(), mode:
        y = F.linear(x, w, b)
        with pytest.raises(RuntimeError, match="before the activation"):
            y + 1


# ---- the decision and its fallbacks ---------------------------------------------------------------------------
def _fake_cpu(monkeypatch, flags, capability="AVX512", onednn_bf16=True, cap=None):
    monkeypatch.setattr(cpu, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16, raising=False)
    if cap is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)


@pytest.mark.parametrize("flags, capability, onednn, cap, expected, words", [
    ({"avx512f", "avx512_bf16", "amx_bf16"}, "AVX512", True, None, "bf16", "amx_bf16"),
    ({"avx512f", "avx512_bf16"}, "AVX512", True, "avx512_core_amx", "bf16", "avx512_bf16"),
    ({"avx2", "avx512f", "avx512bw"}, "AVX512", True, None, "fp32", "neither avx512_bf16 nor amx_bf16"),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, "AVX512", True, "AVX2", "fp32", "ONEDNN_MAX_CPU_ISA=AVX2"),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, "AVX512", True, "avx512_core", "fp32", "ONEDNN_MAX_CPU_ISA=AVX512_CORE"),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, "AVX2", True, None, "fp32", "capability is AVX2"),
    ({"avx512f", "avx512_bf16", "amx_bf16"}, "AVX512", False, None, "fp32", "oneDNN reports no bf16"),
    (None, "AVX512", True, None, "fp32", "unreadable"),
], ids=["amx", "avx512-bf16, cap above", "avx512 without bf16", "onednn capped avx2", "onednn capped avx512_core",
        "torch capability avx2", "onednn says no", "no cpuinfo"])
def test_precision_decision(monkeypatch, flags, capability, onednn, cap, expected, words):
    _fake_cpu(monkeypatch, flags, capability, onednn, cap)
    chosen, reason = cpu.choose_precision("auto")
    assert chosen == expected and words in reason, reason


def test_decision_is_stated(pair, monkeypatch, caplog):
    _, model = pair
    _fake_cpu(monkeypatch, {"avx2"})
    with caplog.at_level("INFO", logger="sam3lt.cpu"):
        fast = sam3lt.optimize(copy.deepcopy(model))  # the public entry point dispatches to sam3lt.cpu on a CPU
    assert fast.cpu_plan.precision == "fp32" and "neither avx512_bf16 nor amx_bf16" in fast.cpu_plan.reason
    assert "MKL GEMMs on packed weights" in repr(fast)
    assert any("MKL GEMMs on packed weights" in r.getMessage() for r in caplog.records)


def test_forced_bf16_without_native_support_warns_once(pair, monkeypatch):
    _, model = pair
    _fake_cpu(monkeypatch, {"avx2"})
    with pytest.warns(RuntimeWarning, match="emulates bf16") as record:
        fast = cpu.optimize(copy.deepcopy(model), precision="bf16")
    assert len([w for w in record if "emulates" in str(w.message)]) == 1
    assert fast.cpu_plan.precision == "bf16"  # done as asked, not silently changed
    with pytest.warns(RuntimeWarning, match="emulates bf16"):
        cpu.optimize(copy.deepcopy(model), dtype=torch.bfloat16)


def test_bad_arguments_name_themselves(pair):
    _, model = pair
    with pytest.raises(ValueError, match="precision"):
        cpu.optimize(copy.deepcopy(model), precision="int8")
    with pytest.raises(ValueError, match="threads"):
        cpu.optimize(copy.deepcopy(model), threads=0)
    with pytest.raises(ValueError, match="precision"):
        cpu.PackedGemms("fp16", [])


def test_failed_compile_warns_once_and_runs_uncompiled(pair, monkeypatch):
    """inductor unable to build (no compiler, ...): one warning, then the uncompiled stages, still correct."""
    ref_model, model = pair

    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("inductor: no working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    fast = cpu.optimize(copy.deepcopy(model), precision="fp32", compile=True)
    inputs = _inputs(model.config)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = fast(**inputs)
        fast(**inputs)
    messages = [str(w.message) for w in record if "torch.compile failed" in str(w.message)]
    assert len(messages) == 1 and "no working C++ compiler" in messages[0], messages
    assert not fast.cpu_plan.compiled and "torch.compile failed" in fast.cpu_plan.reason  # stated, not silent
    torch.testing.assert_close(out.pred_masks, _reference(ref_model, inputs).pred_masks, rtol=1e-4, atol=1e-4)


def test_keep_freed_memory_reports_what_it_did():
    first = cpu.keep_freed_memory()
    assert first == cpu.keep_freed_memory()  # once per process
    assert first.startswith(("glibc malloc keeps", "malloc unchanged"))


# ---- the eager linear's in-place epilogue ---------------------------------------------------------------------
@pytest.mark.parametrize("activation", [None, "gelu", "relu"])
@pytest.mark.parametrize("residual", [False, True])
def test_linear_reference_in_place_epilogue_is_bitwise_out_of_place(activation, residual):
    def out_of_place(x, w, b):  # the plain composition the in-place epilogue must reproduce
        y = torch.nn.functional.linear(x, w, b)
        y = y if activation is None else ACTIVATIONS[activation](y)
        return y if r is None else y + r

    gen = seeds.gen(0)
    x, w, b = torch.randn(3, 7, 16, generator=gen), torch.randn(24, 16, generator=gen), torch.randn(24, generator=gen)
    r = torch.randn(3, 7, 24, generator=gen) if residual else None
    with torch.no_grad():
        assert torch.equal(linear_reference(x, w, b, activation, r), out_of_place(x, w, b))
    # with autograd recording, out of place (gelu/relu backward need their input / output), same values and grads
    w.requires_grad_(True)
    y = linear_reference(x, w, b, activation, r)
    y.sum().backward()
    grad = w.grad.clone()
    w.grad = None
    out_of_place(x, w, b).sum().backward()
    assert torch.equal(grad, w.grad)


def test_packed_gemms_decline_the_cpu_linear_for_their_weights_only_inside():
    """Inside the mode (entered once or nested) ops.linear's cpu backend steps aside for the mode's frozen weights,
    and nothing of it stays behind after the last exit."""
    from sam3lt import ops

    w, other = torch.randn(8, 16), torch.randn(8, 16)
    x = torch.randn(200, 16)
    mode = cpu.PackedGemms("fp32", [w])
    with torch.no_grad():
        assert ops.explain("linear", x, w)["cpu"] == "runs"
        with mode:
            with mode:
                assert "PackedGemms" in ops.explain("linear", x, w)["cpu"]
            assert "PackedGemms" in ops.explain("linear", x, w)["cpu"]
            assert ops.explain("linear", x, other)["cpu"] == "runs"
        assert ops.explain("linear", x, w)["cpu"] == "runs" and not getattr(_cpu._RULES, "stack", [])
