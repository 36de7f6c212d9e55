"""add_layer_norm (residual add + LayerNorm) on every backend registered for it (tests/_backends.py) against the
eager reference, argument errors and dispatch."""
from _interp import CUDA, DEVICE, check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401
from _backends import targets

import warnings

import pytest
import torch
import torch.nn.functional as F

import sam3lt.ops as ops
from sam3lt.ops import _backend


def _inputs(gen, shape, dtype, param_dtype=None, scale=1.0, device=DEVICE):
    channels = shape[-1]
    param_dtype = param_dtype or dtype
    x, residual = (randn(gen, *shape, dtype=dtype, scale=scale, device=device) for _ in range(2))
    weight, bias = (randn(gen, channels, dtype=param_dtype, device=device) for _ in range(2))
    return x, residual, weight, bias


def _check(backend, x, residual, weight, bias, eps, what=""):
    out_sum, normed = ops.add_layer_norm(x, residual, weight, bias, eps, backend=backend)
    ref_sum, ref_normed = ops.add_layer_norm_reference(x, residual, weight, bias, eps)
    assert out_sum.shape == x.shape and out_sum.dtype == x.dtype
    assert torch.equal(out_sum, ref_sum), f"{what}: the sum is one rounding of x + residual: bit-exact"
    # the spec normalises the stored (rounded) sum: the fp64 reference starts from it too
    ref64 = F.layer_norm(ref_sum.double(), (x.shape[-1],), weight.double(), bias.double(), eps)
    check_close(normed, ref64, ref_normed, x.dtype, what)


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("add_layer_norm", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("rows", [1, 7, 300])
@pytest.mark.parametrize("channels", [64, 256, 1024, 100])
def test_add_layer_norm(target, channels, rows, dtype, request):
    args = _inputs(seed_for(request), (rows, channels), dtype, device=target.device)
    _check(target.backend, *args, 1e-5, f"{rows}x{channels}")


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("add_layer_norm", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("shape", [(2, 5, 7, 64), (1, 9, 9, 100), (3, 1, 2, 256)], ids=str)
def test_add_layer_norm_4d(target, shape, dtype, request):
    _check(target.backend, *_inputs(seed_for(request), shape, dtype, device=target.device), 1e-6, str(shape))


@kernel_test
@pytest.mark.parametrize("target", targets("add_layer_norm"), indirect=True)
@pytest.mark.parametrize("eps", [1e-6, 1e-5, 1e-3, 0.1])
def test_add_layer_norm_eps(target, eps, request):
    # small activations: eps is a sizeable part of the variance
    args = _inputs(seed_for(request), (7, 100), torch.float32, scale=0.02, device=target.device)
    _check(target.backend, *args, eps, f"eps={eps}")


@kernel_test
@pytest.mark.parametrize("target", targets("add_layer_norm"), indirect=True)
@pytest.mark.parametrize("layout", ["channel_stride", "transposed", "mixed", "strided_params"])
def test_add_layer_norm_non_contiguous(target, layout, request):
    gen, dev = seed_for(request), target.device
    x, residual, weight, bias = _inputs(gen, (4, 6, 100), torch.float32, device=dev)
    if layout == "channel_stride":  # a view with column stride 2 and a wider row stride
        x, residual = randn(gen, 4, 6, 200, device=dev)[..., ::2], randn(gen, 4, 6, 300, device=dev)[..., 50:150]
    elif layout == "transposed":  # leading dims that do not collapse: the launcher copies
        x, residual = (randn(gen, 6, 4, 100, device=dev).transpose(0, 1) for _ in range(2))
    elif layout == "mixed":
        residual = randn(gen, 100, 6, 4, device=dev).permute(2, 1, 0)
    else:
        weight, bias = randn(gen, 300, device=dev)[::3], randn(gen, 100, 2, device=dev)[:, 1]
    assert not (x.is_contiguous() and residual.is_contiguous() and weight.is_contiguous())
    _check(target.backend, x, residual, weight, bias, 1e-5, layout)


@kernel_test
@pytest.mark.parametrize("target", targets("add_layer_norm"), indirect=True)
def test_add_layer_norm_fp32_params_with_fp16_input(target, request):
    """fp16 activations with fp32 LayerNorm parameters (torch's mixed-dtype layer_norm): fp16 outputs."""
    args = _inputs(seed_for(request), (7, 256), torch.float16, torch.float32, device=target.device)
    _check(target.backend, *args, 1e-5)


@kernel_test
@pytest.mark.parametrize("target", targets("add_layer_norm"), indirect=True)
def test_add_layer_norm_empty(target, request):
    x, residual, weight, bias = _inputs(seed_for(request), (0, 64), torch.float32, device=target.device)
    out_sum, normed = ops.add_layer_norm(x, residual, weight, bias, backend=target.backend)
    assert out_sum.shape == normed.shape == (0, 64)


@kernel_test
def test_add_layer_norm_opcheck(request):
    gen = seed_for(request)
    x, residual, weight, bias = _inputs(gen, (2, 3, 5, 100), torch.float32)
    op = torch.ops.sam3lt.add_layer_norm.default
    torch.library.opcheck(op, (x, residual, weight, bias, 1e-5))
    torch.library.opcheck(op, (randn(gen, 5, 2, 64).transpose(0, 1), randn(gen, 2, 5, 64), weight[:64],
                               bias[:64], 1e-6))


def test_add_layer_norm_module_matches_nn_layer_norm():
    gen = torch.Generator().manual_seed(3)
    ln = torch.nn.LayerNorm(32, eps=1e-6)
    with torch.no_grad():
        ln.weight.copy_(torch.randn(32, generator=gen))
        ln.bias.copy_(torch.randn(32, generator=gen))
    x, residual = torch.randn(2, 3, 32, generator=gen), torch.randn(2, 3, 32, generator=gen)
    with torch.no_grad():
        out_sum, normed = ops.add_layer_norm_module(x, residual, ln, backend="eager")
        assert torch.equal(out_sum, x + residual) and torch.equal(normed, ln(x + residual))
    with pytest.raises(ValueError, match="ln must be"):
        ops.add_layer_norm_module(x, residual, torch.nn.LayerNorm(32, elementwise_affine=False))


def _bad_args(case):
    x, residual, weight, bias = torch.randn(3, 8), torch.randn(3, 8), torch.randn(8), torch.randn(8)
    if case == "x_not_tensor":
        x = x.tolist()
    elif case == "x_int":
        x = x.int()
    elif case == "x_scalar":
        x = residual = torch.tensor(1.0)
    elif case == "residual_shape":
        residual = torch.randn(3, 9)
    elif case == "residual_dtype":
        residual = residual.double()
    elif case == "weight_size":
        weight = torch.randn(9)
    elif case == "bias_size":
        bias = torch.randn(1, 8)
    elif case == "bias_int":
        bias = bias.long()
    elif case == "bias_dtype":
        bias = bias.half()
    elif case == "residual_device":
        residual = residual.to("meta")
    return x, residual, weight, bias


@pytest.mark.parametrize("case, exc, name", [
    ("x_not_tensor", TypeError, "x must be a tensor"), ("x_int", TypeError, "x must be a floating-point tensor"),
    ("x_scalar", ValueError, "x must have at least one"), ("residual_shape", ValueError, "residual shape"),
    ("residual_dtype", TypeError, "residual dtype"), ("weight_size", ValueError, r"weight must be \(8,\)"),
    ("bias_size", ValueError, r"bias must be \(8,\)"), ("bias_int", TypeError, "bias must be a floating-point tensor"),
    ("bias_dtype", TypeError, "bias dtype"), ("residual_device", ValueError, "residual is on meta"),
])
@pytest.mark.parametrize("backend", [None, "eager"])
def test_add_layer_norm_argument_errors(case, exc, name, backend):
    with pytest.raises(exc, match=f"add_layer_norm: {name}"):
        ops.add_layer_norm(*_bad_args(case), backend=backend)


def test_dispatch_on_cpu_without_interpreter(monkeypatch):
    """auto on CPU tensors: triton passes (says why), the cuda registration (torch's CUDA kernels, only when cuda
    is named) is skipped, eager runs; silently."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    gen = torch.Generator().manual_seed(0)
    args = (torch.randn(3, 8, generator=gen), torch.randn(3, 8, generator=gen), torch.randn(8, generator=gen),
            torch.randn(8, generator=gen), 1e-5)
    info = ops.explain("add_layer_norm", *args)
    assert info["eager"] == "runs" and info["triton"] != "runs" and info["cuda"] != "runs", info
    assert "CPU" in info["triton"] or "triton" in info["triton"], info
    assert _backend.select("add_layer_norm", None, *args)[0] == "eager"
    assert not _backend._REGISTRY["add_layer_norm"]["cuda"].auto
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        auto = ops.add_layer_norm(*args)
    forced = ops.add_layer_norm(*args, backend="eager")
    assert all(torch.equal(a, b) for a, b in zip(auto, forced))
    with pytest.raises(ops.BackendUnavailable, match="cuda"):  # named cuda (torch's CUDA kernels) needs CUDA
        ops.add_layer_norm(*args, backend="cuda")
    assert all(torch.equal(a, b) for a, b in zip(auto, ops.add_layer_norm_reference(*args)))


@kernel_test
def test_dispatch_picks_triton_where_it_runs(request):
    x, residual, weight, bias = _inputs(seed_for(request), (3, 64), torch.float32)
    assert ops.explain("add_layer_norm", x, residual, weight, bias, 1e-5)["triton"] == "runs"
    with ops.use_backend("eager"):
        assert _backend.select("add_layer_norm", None, x, residual, weight, bias, 1e-5)[0] == "eager"


@pytest.mark.parametrize("case, reason", [("wide", "channels >"), ("bf16", "bfloat16"),
                                          ("param_dtype", "weight dtype")])
def test_triton_supports_reasons(case, reason):
    x, residual, weight, bias = torch.randn(2, 16), torch.randn(2, 16), torch.randn(16), torch.randn(16)
    if case == "wide":
        x = residual = torch.randn(1, 16384)
        weight = bias = torch.randn(16384)
    elif case == "bf16":
        if CUDA:
            pytest.skip("the interpreter's bf16 limit")
        x, residual = x.bfloat16(), residual.bfloat16()
    else:
        x, residual = x.half(), residual.half()
        weight, bias = weight.bfloat16(), bias.bfloat16()
    got = _backend.unavailable_reason("add_layer_norm", "triton", x, residual, weight, bias, 1e-5)
    if "triton is not installed" not in str(got) and not (case == "bf16" and "CPU" in str(got)):
        assert got is not None and reason in got, got
