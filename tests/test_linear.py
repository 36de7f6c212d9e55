"""linear (GEMM + bias / activation / residual epilogue) on every backend registered for it (tests/_backends.py)
against the eager reference; argument checks, backend selection (auto keeps cuBLAS) and the model's MLP."""
from _interp import DEVICE, check_close, interpreter_env, kernel_test, randn, seed_for  # noqa: F401
from _backends import targets

import pytest
import torch

import sam3lt.ops as ops
from sam3lt.model.common import MLP
from sam3lt.ops import _backend

ACTS = [None, "gelu", "relu"]


def _check(backend, x, w, b=None, act=None, r=None, what=""):
    out = ops.linear(x, w, b, act, r, backend=backend)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    check_close(out, ops.linear_reference(d(x), d(w), d(b), act, d(r)), ops.linear_reference(x, w, b, act, r),
                x.dtype, what)


# (M, K, N): one token, ragged everything, a multiple of the blocks, more row blocks than GROUP_M (swizzle), K = 0
SHAPES = [(1, 64, 96), (77, 200, 130), (300, 256, 512), (1100, 40, 130), (5, 0, 7)]


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("linear", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("M, K, N", SHAPES, ids=lambda v: str(v))
def test_linear_shapes(target, M, K, N, dtype, request):
    gen, dev = seed_for(request), target.device
    x, w, b, r = (randn(gen, *shape, dtype=dtype, device=dev) for shape in ((M, K), (N, K), (N,), (M, N)))
    _check(target.backend, x, w, b, "gelu", r, (M, K, N))


@kernel_test
@pytest.mark.parametrize("target, dtype", targets("linear", dtypes=True), indirect=["target"])
@pytest.mark.parametrize("act", ACTS, ids=str)
@pytest.mark.parametrize("bias, residual", [(False, False), (True, False), (False, True), (True, True)],
                         ids=["plain", "bias", "residual", "bias+residual"])
def test_linear_epilogues(target, act, bias, residual, dtype, request):
    gen, dev = seed_for(request), target.device
    x = randn(gen, 2, 3, 11, 72, dtype=dtype, device=dev)  # 4-D x: 66 rows
    w = randn(gen, 40, 72, dtype=dtype, scale=0.2, device=dev)
    b = randn(gen, 40, dtype=dtype, device=dev) if bias else None
    r = randn(gen, 2, 3, 11, 40, dtype=dtype, device=dev) if residual else None
    _check(target.backend, x, w, b, act, r, f"{act} bias={bias} residual={residual}")


@kernel_test
@pytest.mark.parametrize("target", targets("linear"), indirect=True)
def test_linear_strided_inputs(target, request):
    gen, dev = seed_for(request), target.device
    x = randn(gen, 3, 40, 17, device=dev)[:, ::2].transpose(1, 2)  # (3, 17, 20), K not innermost: reshape copies
    x_sliced = randn(gen, 4, 9, 50, device=dev)[..., 3:35]  # (4, 9, 32), row stride 50: a view
    w_t = randn(gen, 20, 33, device=dev).t()  # weight (33, 20) as a transposed view: strides (1, 33)
    w = randn(gen, 33, 64, device=dev)[:, ::2]  # (33, 32), K stride 2
    b = randn(gen, 66, device=dev)[::2]  # (33,), stride 2
    r = randn(gen, 9, 4, 33, device=dev).transpose(0, 1)  # (4, 9, 33), non-contiguous residual
    r_t = randn(gen, 17, 3, 33, device=dev).transpose(0, 1)
    _check(target.backend, x, w_t, b, "gelu", r_t, "x transposed")
    _check(target.backend, x_sliced, w, b, "relu", r, "x sliced")


@kernel_test
@pytest.mark.parametrize("target", targets("linear"), indirect=True)
def test_linear_empty(target, request):
    gen, dev = seed_for(request), target.device
    x, w = randn(gen, 0, 7, 16, device=dev), randn(gen, 8, 16, device=dev)
    out = ops.linear(x, w, None, "gelu", backend=target.backend)
    assert out.shape == (0, 7, 8)


@kernel_test
def test_auto_keeps_cublas_and_triton_is_named(request, monkeypatch):
    """auto=False: under auto the reference (cuBLAS) runs, or on the CPU MKL on packed weights (the cpu backend);
    backend="triton" (per call or process-wide) runs the kernel."""
    gen = seed_for(request)
    args = (randn(gen, 5, 32), randn(gen, 24, 32), randn(gen, 24), "gelu", None)
    assert _backend.select("linear", None, *args)[0] == ("cpu" if args[0].is_cpu else "eager")
    # cuda (torch's cuBLAS, for a model forced to cuda) and triton run only when named
    assert not _backend._REGISTRY["linear"]["cuda"].auto and not _backend._REGISTRY["linear"]["triton"].auto
    calls = []
    impl = _backend._REGISTRY["linear"]["triton"]
    monkeypatch.setattr(impl, "fn", (lambda f: lambda *a: calls.append(1) or f(*a))(impl.fn))
    ops.linear(*args)
    assert not calls
    out = ops.linear(*args, backend="triton")
    with ops.use_backend("triton"):
        again = ops.linear(*args)
    assert len(calls) == 2 and torch.equal(out, again)


@kernel_test
def test_mlp_backend_override(request):
    """The model's MLP: eager is bitwise fc2(act(fc1(x))); under ``use_backend("triton")`` the fused GEMM runs."""
    torch.manual_seed(0)
    x = randn(seed_for(request), 2, 9, 32)
    for act in ("gelu", "relu", "quick_gelu"):
        mlp = MLP(32, 80, act).to(DEVICE)
        with torch.no_grad():
            plain = mlp.fc2(mlp.act(mlp.fc1(x)))
            assert torch.equal(mlp(x), plain), act
            with ops.use_backend("triton"):
                fused = mlp(x)
        torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-5)


def _bad(**kw):
    args = dict(x=torch.randn(3, 8), weight=torch.randn(5, 8), bias=torch.randn(5), activation=None, residual=None)
    args.update(kw)
    return args


@pytest.mark.parametrize("kw, exc, name", [
    (dict(weight=torch.randn(5, 7)), ValueError, "weight"),
    (dict(weight=torch.randn(5, 8, 1)), ValueError, "weight"),
    (dict(bias=torch.randn(4)), ValueError, "bias"),
    (dict(residual=torch.randn(3, 4)), ValueError, "residual"),
    (dict(activation="silu"), ValueError, "activation"),
    (dict(x=torch.ones(3, 8, dtype=torch.long)), TypeError, "x"),
    (dict(weight=torch.randn(5, 8).half()), TypeError, "weight"),
    (dict(bias=[0.0] * 5), TypeError, "bias"),
    (dict(residual=torch.randn(3, 5, device="meta")), ValueError, "residual"),
])
def test_argument_errors_name_the_argument(kw, exc, name):
    with pytest.raises(exc, match=rf"linear: {name}\b"):
        ops.linear(**_bad(**kw))


def test_triton_supports_gives_reasons():
    x, w = torch.randn(3, 8), torch.randn(5, 8)
    assert "weight" in _backend.unavailable_reason("linear", "triton", x, torch.randn(5, 7))
    assert "activation" in _backend.unavailable_reason("linear", "triton", x, w, None, "tanh", None)
    assert "dtype" in _backend.unavailable_reason("linear", "triton", x.double(), w.double())  # fp64: valid for the op, not the kernel


@kernel_test
def test_opcheck(request):
    gen = seed_for(request)
    for args in [(randn(gen, 2, 5, 32), randn(gen, 24, 32), randn(gen, 24), "gelu", randn(gen, 2, 5, 24)),
                 (randn(gen, 7, 20), randn(gen, 9, 20), None, None, None)]:
        torch.library.opcheck(torch.ops.sam3lt.linear.default, args)


def test_packed_cpu_linear_packs_once_per_weight(no_grad):
    """The cpu backend packs a weight once, for the row count of its first large call; a weight changed in place
    is packed again; other row counts run the reference (bitwise)."""
    from sam3lt.ops import _cpu
    from sam3lt.ops.linear import PACK_MIN_ROWS

    w, b = torch.randn(48, 40), torch.randn(48)
    x = torch.randn(2, PACK_MIN_ROWS, 40)
    ref = lambda x, w: ops.linear_reference(x.double(), w.double(), b.double(), "relu")  # noqa: E731
    out = ops.linear(x, w, b, "relu", backend="cpu")
    torch.testing.assert_close(out.double(), ref(x, w), rtol=1e-5, atol=1e-5)
    rows, packed, _ = _cpu._DERIVED[id(w)][1]["mkl"][1]
    assert rows == 2 * PACK_MIN_ROWS and packed is not None
    small = torch.randn(3, 40)  # another row count: the reference, bitwise
    assert torch.equal(ops.linear(small, w, b, "relu", backend="cpu"), ops.linear_reference(small, w, b, "relu"))
    w.mul_(-2.0)
    torch.testing.assert_close(ops.linear(x, w, b, "relu", backend="cpu").double(), ref(x, w), rtol=1e-5, atol=1e-5)
