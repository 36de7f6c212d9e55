"""The sam3lt:: custom ops: torch.library.opcheck, and torch.compile(fullgraph=True) through the dispatch."""
from _interp import CUDA, DEVICE, interpreter_env, kernel_test, randn, seed_for  # noqa: F401

import warnings

import pytest
import torch

import sam3lt.ops as ops


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


OPS = list(samples(torch.Generator().manual_seed(0)).keys())


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
    args = samples(torch.Generator().manual_seed(1))
    torch._dynamo.reset()
    compiled = torch.compile(_all_ops, fullgraph=True, backend="eager")(args)
    with ops.use_backend("eager"):
        eager = _all_ops(args)
    for name in OPS:
        assert torch.equal(compiled[name], eager[name]), name
