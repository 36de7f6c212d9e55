"""Compile every Triton kernel for a CUDA target without a GPU, and trace the sam3lt:: ops as on a GPU.

Run as a script in a process where triton is *not* in interpreter mode (``tests/test_gpu_compile.py`` does):

    python tests/_gpu_compile_check.py [capability, default 90]

Registers, spills, SASS and occupancy at the model's launches are the static audit's (``python -m bench.static``,
tests/test_static_audit.py); this script keeps the compile-every-dtype and tracing checks.

1. A stand-in Triton driver (``bench.static.triton_audit``) reports a CUDA target of the given capability; each
   launcher of ``sam3lt.kernels`` runs at the model's real shapes (and odd ones) with ``launch`` replaced by
   ``kernel.warmup``, which compiles through TTIR/TTGIR/LLVM/PTX and ``ptxas`` to a cubin without launching.
   Checked: it compiles, and shared memory fits the target.
2. With fake CUDA tensors, ``aot_function`` traces a function calling each public op with the triton
   backend, as torch.compile does on a GPU: the ``sam3lt::`` triton_ops must decompose into
   ``triton_kernel_wrapper_functional`` nodes (the kernel launches recorded by ``wrap_triton``).

Prints one JSON object; exits non-zero on a failure.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time

os.environ.pop("TRITON_INTERPRET", None)

import torch  # noqa: E402
import triton  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout, for bench/
from bench.static.triton_audit import install_driver  # noqa: E402

CAPABILITY = int(sys.argv[1]) if len(sys.argv) > 1 else 90
# largest shared memory one block may use (opt-in): sm_80 163 KiB, sm_86/89 99 KiB, sm_90 227 KiB
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}.get(CAPABILITY, 101376)

install_driver(CAPABILITY)  # the stand-in driver of the static audit (bench/static)

import sam3lt.ops as ops  # noqa: E402
import sam3lt.kernels  # noqa: E402
from sam3lt.kernels import box_bias, box_refine, cross_attention, layer_norm, linear, repmixer, rope, upsample, window_attention  # noqa: E402,F401

MODULES = tuple(importlib.import_module(f"sam3lt.kernels.{family}") for family in sam3lt.kernels.FAMILIES)


def compile_all() -> list[dict]:
    results = []

    def compile_only(kernel, grid, *args, **kwargs):
        start = time.time()
        compiled = kernel.warmup(*args, grid=grid, **kwargs)
        meta = compiled.metadata
        results.append({"kernel": kernel.__name__, "case": case, "grid": [int(g) for g in grid],
                        "num_warps": meta.num_warps, "num_stages": meta.num_stages, "shared": meta.shared,
                        "seconds": round(time.time() - start, 2)})

    saved = [m.launch for m in MODULES]
    for m in MODULES:
        m.launch = compile_only
    try:
        for dtype in (torch.float16, torch.bfloat16, torch.float32):
            def e(*shape, dt=dtype):
                return torch.empty(*shape, dtype=dt)

            f32 = torch.float32
            case = f"repmixer text encoder {dtype}"
            repmixer.repmixer_dwconv(e(1, 77, 512), e(512, 11), e(512), True)
            case = f"repmixer conv-ffn {dtype}"
            repmixer.repmixer_dwconv(e(4, 77, 512).transpose(1, 2).contiguous().transpose(1, 2), e(512, 3), e(512),
                                     False)
            case = f"window 24 on 72x72 {dtype}"
            window_attention.window_attention(e(1, 72, 72, 3072), e(576, 64, dt=f32), e(576, 64, dt=f32), 16, 24,
                                              e(3072))
            case = f"window 24 on 70x70 (padded) {dtype}"
            window_attention.window_attention(e(1, 70, 70, 3072), e(576, 64, dt=f32), e(576, 64, dt=f32), 16, 24,
                                              e(3072))
            case = f"global 72x72 {dtype}"
            window_attention.window_attention(e(1, 72, 72, 3072), e(5184, 64, dt=f32), e(5184, 64, dt=f32), 16, 0,
                                              None)
            case = f"box-bias cross-attention {dtype}"
            cross_attention.box_bias_attention(e(1, 8, 201, 32), e(1, 8, 5184, 32), e(1, 8, 5184, 32),
                                               e(1, 8, 201, 72, dt=f32), e(1, 8, 201, 72, dt=f32))
            case = f"DETR encoder self-attention {dtype}"
            cross_attention.masked_attention(e(1, 8, 5184, 32), e(1, 8, 5184, 32), e(1, 8, 5184, 32), None)
            case = f"text cross-attention, masked {dtype}"
            cross_attention.masked_attention(e(1, 8, 5184, 32), e(1, 8, 36, 32), e(1, 8, 36, 32),
                                           torch.ones(1, 36, dtype=torch.bool))
            case = f"upsample + add {dtype}"
            upsample.upsample_nearest_add(e(1, 256, 72, 72), e(1, 256, 144, 144))
            case = f"mask product {dtype}"
            upsample.mask_product(e(1, 200, 256), e(1, 256, 288, 288))
            case = f"masks to binary {dtype}"
            upsample.masks_to_binary(e(4, 288, 288), (1080, 1920), 0.5)
            case = f"ViT add + LayerNorm {dtype}"
            layer_norm.add_layer_norm(e(1, 72, 72, 1024), e(1, 72, 72, 1024), e(1024), e(1024), 1e-6)
            case = f"DETR add + LayerNorm {dtype}"
            layer_norm.add_layer_norm(e(1, 5184, 256), e(1, 5184, 256), e(256), e(256), 1e-5)
            case = f"ViT fc1 + GELU {dtype}"
            linear.linear(e(1, 72, 72, 1024), e(4736, 1024), e(4736), "gelu", None)
            case = f"ViT fc2 + residual {dtype}"
            linear.linear(e(1, 72, 72, 4736), e(1024, 4736), e(1024), None, e(1, 72, 72, 1024))
            case = f"DETR fc1 + ReLU, ragged {dtype}"
            linear.linear(e(201, 256), e(2048, 256), e(2048), "relu", None)
            rpb = (e(256, 2), e(256), e(8, 256), e(8))  # box_rpb_embed layer1/layer2
            case = f"DETR decoder box bias 72x72 {dtype}"
            box_bias.box_bias(e(1, 200, 4), 72, 72, *rpb, *rpb)
            case = f"DETR decoder box bias, 4 prompts, 5x9, ragged hidden {dtype}"
            box_bias.box_bias(e(4, 200, 4), 5, 9, e(40, 2), e(40), e(3, 40), e(3), e(40, 2), e(40), e(3, 40), e(3))
            case = f"DETR decoder box refine + encoding, 200 queries, num_feats 128 {dtype}"
            box_refine.box_refine(e(1, 200, 4), e(1, 200, 4), 128)
            case = f"DETR decoder box refine, 16 prompts, expanded boxes, num_feats 6 {dtype}"
            box_refine.box_refine(e(16, 200, 4), e(1, 200, 4).expand(16, 200, 4), 6)
            case = f"ViT RoPE on fused QKV, global 72x72 {dtype}"
            rope.rope_qkv(e(1, 5184, 3072), e(5184, 64, dt=f32), e(5184, 64, dt=f32), 16)
            case = f"ViT RoPE on fused QKV, 9 windows of 24x24 {dtype}"
            rope.rope_qkv(e(9, 576, 3072), e(576, 64, dt=f32), e(576, 64, dt=f32), 16)
    finally:
        for m, launch in zip(MODULES, saved):
            m.launch = launch
    return results


def trace_ops() -> dict:
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm)

    def model(x, w, b, qkv, cos, sin, pad, q, k, v, by, bx, mask, up, skip, a, p, logits):
        with ops.use_backend("triton"):
            return (ops.repmixer_dwconv(x, w, b, True), ops.window_attention(qkv, cos, sin, 2, 4, pad),
                    ops.box_bias_attention(q, k, v, by, bx), ops.masked_attention(q, k, v, mask),
                    ops.upsample_nearest_add(up, skip), ops.mask_product(a, p),
                    ops.masks_to_binary(logits, (11, 9), 0.5))

    with FakeTensorMode():
        def e(*shape, dt=torch.float16):
            return torch.empty(*shape, device="cuda", dtype=dt)

        args = (e(2, 9, 8), e(8, 3), e(8), e(1, 5, 6, 96), e(16, 16, dt=torch.float32), e(16, 16, dt=torch.float32),
                e(96), e(1, 2, 7, 16), e(1, 2, 12, 16), e(1, 2, 12, 16), e(1, 2, 7, 3), e(1, 2, 7, 4),
                e(1, 12, dt=torch.bool), e(1, 3, 4, 5), e(1, 3, 8, 10), e(1, 5, 16), e(1, 16, 4, 6), e(2, 6, 7))
        outs = aot_function(model, fw_compiler=capture)(*args)
    code = graphs[0].code
    return {"kernel_nodes": code.count("higher_order.triton_kernel_wrapper_functional("),
            "clones_only_outputs": code.count("tensors_to_clone = ['out_ptr']"),
            "sam3lt_ops_left": code.count("torch.ops.sam3lt"),
            "out_shapes": [list(o.shape) for o in outs], "out_dtypes": [str(o.dtype) for o in outs]}


def trace_box_bias() -> dict:
    """box_bias (two outputs, int arguments) traced like trace_ops: one kernel launch writing only its outputs."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm)

    def model(boxes, w1, b1, w2, b2):
        with ops.use_backend("triton"):
            return ops.box_bias(boxes, 6, 9, w1, b1, w2, b2, w1, b1, w2, b2)

    with FakeTensorMode():
        def e(*shape):
            return torch.empty(*shape, device="cuda", dtype=torch.bfloat16)

        outs = aot_function(model, fw_compiler=capture)(e(2, 7, 4), e(32, 2), e(32), e(8, 32), e(8))
    code = graphs[0].code
    return {"kernel_nodes": code.count("higher_order.triton_kernel_wrapper_functional("),
            "clones_only_outputs": code.count("tensors_to_clone = ['out_y_ptr', 'out_x_ptr']"),
            "sam3lt_ops_left": code.count("torch.ops.sam3lt"),
            "out_shapes": [list(o.shape) for o in outs], "out_dtypes": [str(o.dtype) for o in outs]}


def trace_box_refine() -> dict:
    """box_refine (two outputs, an int argument) traced like trace_ops: one kernel launch writing only its outputs."""
    from functorch.compile import make_boxed_func
    from torch._functorch.aot_autograd import aot_function
    from torch._subclasses.fake_tensor import FakeTensorMode

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm)

    def model(delta, boxes):
        with ops.use_backend("triton"):
            return ops.box_refine(delta, boxes, 16)

    with FakeTensorMode():
        def e(*shape):
            return torch.empty(*shape, device="cuda", dtype=torch.bfloat16)

        outs = aot_function(model, fw_compiler=capture)(e(2, 7, 4), e(2, 7, 4))
    code = graphs[0].code
    return {"kernel_nodes": code.count("higher_order.triton_kernel_wrapper_functional("),
            "clones_only_outputs": code.count("tensors_to_clone = ['new_ptr', 'enc_ptr']"),
            "sam3lt_ops_left": code.count("torch.ops.sam3lt"),
            "out_shapes": [list(o.shape) for o in outs], "out_dtypes": [str(o.dtype) for o in outs]}


def main() -> int:
    report = {"capability": CAPABILITY, "triton": triton.__version__, "torch": torch.__version__}
    failures = []
    try:
        compiled = compile_all()
        report["compiled"] = compiled
        for c in compiled:
            if c["shared"] > SMEM_LIMIT:
                failures.append(f"{c['kernel']} ({c['case']}): {c['shared']} B shared memory > {SMEM_LIMIT}")
    except Exception as exc:  # noqa: BLE001
        failures.append(f"compile: {type(exc).__name__}: {exc}")
    try:
        traced = trace_ops()
        report["trace"] = traced
        # 9 launches: one per op, but 3 for the padded window_attention (RoPE over the grid, RoPE of the pad
        # table, attention)
        if traced["kernel_nodes"] != 9 or traced["sam3lt_ops_left"] != 0 or traced["clones_only_outputs"] != 9:
            failures.append(f"trace: expected 9 kernel launches writing only their outputs and no opaque "
                            f"sam3lt ops, got {traced}")
    except Exception as exc:  # noqa: BLE001
        failures.append(f"trace: {type(exc).__name__}: {exc}")
    try:
        traced = trace_box_bias()
        report["trace_box_bias"] = traced
        if (traced["kernel_nodes"], traced["clones_only_outputs"], traced["sam3lt_ops_left"]) != (1, 1, 0) or \
                traced["out_shapes"] != [[2, 8, 8, 6], [2, 8, 8, 9]]:
            failures.append(f"trace box_bias: expected one kernel launch writing only its two outputs, got {traced}")
    except Exception as exc:  # noqa: BLE001
        failures.append(f"trace box_bias: {type(exc).__name__}: {exc}")
    try:
        traced = trace_box_refine()
        report["trace_box_refine"] = traced
        if (traced["kernel_nodes"], traced["clones_only_outputs"], traced["sam3lt_ops_left"]) != (1, 1, 0) or \
                traced["out_shapes"] != [[2, 7, 4], [2, 7, 64]]:
            failures.append(f"trace box_refine: expected one kernel launch writing only its two outputs, got {traced}")
    except Exception as exc:  # noqa: BLE001
        failures.append(f"trace box_refine: {type(exc).__name__}: {exc}")
    report["failures"] = failures
    print(json.dumps(report))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
