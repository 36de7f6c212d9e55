"""The sam3lt:: custom ops: torch.library.opcheck, and torch.compile(fullgraph=True) through the dispatch."""
from _interp import CUDA, DEVICE, interpreter_env, kernel_test, randn, seed_for  # noqa: F401

import warnings

import pytest
import torch

import sam3lt.ops as ops
import seeds


def samples(gen, dtype=torch.float32):
    """Small inputs for every op, keyed by op name (positional args as the public functions pass them)."""
    qkv = randn(gen, 1, 5, 6, 3 * 32, dtype=dtype)
    cos, sin = randn(gen, 16, 16), randn(gen, 16, 16)
    q = randn(gen, 1, 2, 7, 16, dtype=dtype)
    kv = [randn(gen, 1, 2, 12, 16, dtype=dtype) for _ in range(2)]
    return {
        "repmixer_dwconv": (randn(gen, 2, 9, 8, dtype=dtype), randn(gen, 8, 3, dtype=dtype),
                            randn(gen, 8, dtype=dtype), True),
        "window_attention": (qkv, cos, sin, 2, 4, randn(gen, 3 * 32, dtype=dtype)),
        "box_bias_attention": (q, *kv, randn(gen, 1, 2, 7, 3), randn(gen, 1, 2, 7, 4)),
        "masked_attention": (q, *kv, (torch.arange(12) < 9).repeat(1, 1).to(DEVICE)),
        "upsample_nearest_add": (randn(gen, 1, 3, 4, 5, dtype=dtype), randn(gen, 1, 3, 8, 10, dtype=dtype)),
        "mask_product": (randn(gen, 1, 5, 16, dtype=dtype), randn(gen, 1, 16, 4, 6, dtype=dtype)),
        "masks_to_binary": (randn(gen, 2, 6, 7, dtype=dtype, scale=3.0), [11, 9], 0.5),
    }


OPS = list(samples(seeds.gen(0)).keys())


@kernel_test
@pytest.mark.parametrize("name", OPS)
def test_opcheck(name, request):
    args = samples(seed_for(request))[name]
    op = getattr(torch.ops.sam3lt, name).default
    torch.library.opcheck(op, args)


def _all_ops(args):
    return {name: getattr(ops, name)(*a) for name, a in args.items()}


@kernel_test
def test_compile_fullgraph_triton(request):
    """torch.compile(fullgraph=True) traces the dispatch and the sam3lt:: ops with no graph break."""
    args = samples(seed_for(request))
    with ops.use_backend("triton"):
        eager = _all_ops(args)
        torch._dynamo.reset()
        compiled = torch.compile(_all_ops, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(args)
    for name in OPS:
        assert torch.equal(compiled[name], eager[name]) or torch.allclose(compiled[name], eager[name],
                                                                           rtol=1e-5, atol=1e-5), name


@kernel_test
def test_eager_fast_path_matches_the_op(request):
    """Plain eager calls run the op body directly (no custom-op dispatch); the result is the op's."""
    args = samples(seed_for(request))
    for name in OPS:
        fast = getattr(ops, name)(*args[name], backend="triton")
        via_op = getattr(torch.ops.sam3lt, name)(*args[name])
        assert torch.equal(fast, via_op), name


@kernel_test
def test_requires_grad_goes_through_the_op(request):
    """Inputs that need autograd take the custom op, which has no backward: a clear error, not silent detaching."""
    x, w, b, residual = samples(seed_for(request))["repmixer_dwconv"]
    x = x.clone().requires_grad_()
    y = ops.repmixer_dwconv(x, w, b, residual, backend="triton")
    assert y.requires_grad
    with pytest.raises(RuntimeError, match="no autograd formula"):
        y.sum().backward()


@kernel_test
@pytest.mark.skipif(not CUDA, reason="needs CUDA (auto picks triton only for CUDA tensors)")
def test_compile_auto_picks_triton_on_cuda(request):
    args = samples(seed_for(request), torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback on CUDA
        out = torch.compile(_all_ops, fullgraph=True)(args)
    with ops.use_backend("eager"):
        ref = _all_ops(args)
    for name in OPS:
        if name == "masks_to_binary":
            assert (out[name] != ref[name]).float().mean() < 0.01
        else:
            assert torch.allclose(out[name].float(), ref[name].float(), rtol=2e-2, atol=2e-2), name


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback")
def test_compile_fullgraph_auto_fallback_on_cpu(monkeypatch):
    """Under auto on the CPU every op falls back to eager inside the compiled graph (the warning is not
    emitted while tracing, where it would break the graph)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = samples(seeds.gen(1))
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops, fullgraph=True, backend="eager")(args)
    with ops.use_backend("eager"):
        eager = _all_ops(args)
    for name in OPS:
        assert torch.equal(compiled[name], eager[name]), name


# ---------------------------------------------------------------- add_layer_norm (two outputs: checked on its own)

def _ln_args(gen):
    return (randn(gen, 2, 3, 4, 100), randn(gen, 2, 3, 4, 100), randn(gen, 100), randn(gen, 100), 1e-5)


def _ln_twice(args):
    """The ViT's pattern: the sum feeds the next fused add."""
    x, r, w, b, eps = args
    s, h = ops.add_layer_norm(x, r, w, b, eps)
    return ops.add_layer_norm(s, h, w, b, eps)


def _same(a, b, rtol=0.0, atol=0.0):
    return all(torch.allclose(u, v, rtol=rtol, atol=atol) for u, v in zip(a, b))


@kernel_test
def test_add_layer_norm_opcheck_and_fast_path(request):
    args = _ln_args(seed_for(request))
    torch.library.opcheck(torch.ops.sam3lt.add_layer_norm.default, args)
    assert _same(ops.add_layer_norm(*args, backend="triton"), torch.ops.sam3lt.add_layer_norm(*args))


@kernel_test
def test_add_layer_norm_compile_fullgraph_triton(request):
    args = _ln_args(seed_for(request))
    with ops.use_backend("triton"):
        eager = _ln_twice(args)
        torch._dynamo.reset()
        compiled = torch.compile(_ln_twice, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(args)
    assert _same(compiled, eager, 1e-5, 1e-5)


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback")
def test_add_layer_norm_compile_fullgraph_auto_fallback_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _ln_args(seeds.gen(2))
    torch._dynamo.reset()
    compiled = torch.compile(_ln_twice, fullgraph=True, backend="eager")(args)
    with ops.use_backend("eager"):
        assert _same(compiled, _ln_twice(args))


# ---------------------------------------------------------------- linear (auto=False: triton only when named)

def _lin_args(gen):
    return (randn(gen, 2, 7, 32), randn(gen, 48, 32), randn(gen, 48), randn(gen, 32, 48, scale=0.2), randn(gen, 32))


def _lin_mlp(args, backend=None):
    """The ViT MLP's pattern: fc1 + GELU, then fc2 + bias + residual."""
    x, w1, b1, w2, b2 = args
    h = ops.linear(x, w1, b1, "gelu", backend=backend)
    return ops.linear(h, w2, b2, None, x, backend=backend)


@kernel_test
def test_linear_fast_path_and_compile_fullgraph_triton(request):
    args = _lin_args(seed_for(request))
    x, w1, b1, _, _ = args
    fast = ops.linear(x, w1, b1, "relu", backend="triton")
    assert torch.equal(fast, torch.ops.sam3lt.linear(x, w1, b1, "relu", None))
    with ops.use_backend("triton"):
        eager = _lin_mlp(args)
        torch._dynamo.reset()
        compiled = torch.compile(_lin_mlp, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(args)
    assert torch.allclose(compiled, eager, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback")
def test_linear_compile_fullgraph_auto_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _lin_args(seeds.gen(3))
    torch._dynamo.reset()
    compiled = torch.compile(_lin_mlp, fullgraph=True, backend="eager")(args)
    with ops.use_backend("eager"):
        assert torch.equal(compiled, _lin_mlp(args))


# ---------------------------------------------------------------- box_bias (two outputs, int arguments)

def _bb_args(gen):
    boxes = torch.rand(2, 7, 4, generator=gen).to(DEVICE)
    weights = []
    for _ in "yx":
        weights += [randn(gen, 24, 2), randn(gen, 24), randn(gen, 8, 24, scale=0.2), randn(gen, 8)]
    return (boxes, 5, 9, *weights)


def _bb_layer(args):
    """The decoder's pattern: the bias of the current boxes, consumed by the attention's bias tables."""
    y, x = ops.box_bias(*args)
    return y + 1, x.sum(-1)


@kernel_test
def test_box_bias_opcheck_and_compile_fullgraph_triton(request):
    args = _bb_args(seed_for(request))
    torch.library.opcheck(torch.ops.sam3lt.box_bias.default, args)
    with ops.use_backend("triton"):
        eager = _bb_layer(args)
        torch._dynamo.reset()
        compiled = torch.compile(_bb_layer, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(args)
    assert _same(compiled, eager, 1e-5, 1e-5)


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback")
def test_box_bias_compile_fullgraph_auto_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _bb_args(seeds.gen(4))
    torch._dynamo.reset()
    compiled = torch.compile(_bb_layer, fullgraph=True, backend="eager")(args)
    with ops.use_backend("eager"):
        assert _same(compiled, _bb_layer(args))


# ---------------------------------------------------------------- box_refine (two outputs, an int argument)

def _br_args(gen):
    delta = randn(gen, 2, 7, 4, scale=2.0)
    boxes = torch.rand(2, 7, 4, generator=gen).to(DEVICE)
    return (delta, boxes, 16)


def _br_layer(args):
    """The decoder's pattern: refine the boxes, then use both the boxes and their encoding."""
    new, enc = ops.box_refine(*args)
    return new * 2, enc.sum(-1)


@kernel_test
def test_box_refine_opcheck_and_compile_fullgraph_triton(request):
    args = _br_args(seed_for(request))
    torch.library.opcheck(torch.ops.sam3lt.box_refine.default, args)
    with ops.use_backend("triton"):
        eager = _br_layer(args)
        torch._dynamo.reset()
        compiled = torch.compile(_br_layer, fullgraph=True, backend="inductor" if CUDA else "aot_eager")(args)
    assert _same(compiled, eager, 1e-5, 1e-5)


@pytest.mark.skipif(CUDA, reason="checks the CPU fallback")
def test_box_refine_compile_fullgraph_auto_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _br_args(seeds.gen(5))
    torch._dynamo.reset()
    compiled = torch.compile(_br_layer, fullgraph=True, backend="eager")(args)
    with ops.use_backend("eager"):
        assert _same(compiled, _br_layer(args))
