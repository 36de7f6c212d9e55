"""The cuda backend (``sam3lt._C``, csrc/) against the eager references, on two targets that share the cases:

- ``gpu``: the compiled extension through ``sam3lt.ops.<op>(..., backend="cuda")`` on a CUDA GPU, fp32/fp16/bf16.
  Skipped without a GPU ("needs a CUDA GPU"). On a GPU machine an unusable extension fails the tests, unless the
  build was deliberately skipped (``SAM3LT_SKIP_CUDA_BUILD=1``).
- ``emulated``: the same kernel sources and host code (csrc/<family>.cu, csrc/<family>.h) compiled for the CPU against
  csrc/emu/cuda_emu.h, which runs every CUDA thread as a fiber with real barrier, warp-shuffle and wmma
  semantics (see that file). Built on first use with ``torch.utils.cpp_extension.load`` (about 30 s with two
  cores; needs a C++ compiler); ``SAM3LT_SKIP_EMULATION=1`` skips it. Threads are scheduled in a seeded random
  order per test; a separate test checks that other orders give bit-identical results (missing barriers would
  not), and outputs are allocated between guard bytes (out-of-bounds writes) and filled with NaN first
  (elements never written).

The case lists are the Triton backend's (tests/test_<op>.py), the tolerance is the same flash-attention style
bound (``_interp.check_close``). GPU-only extras: shapes of the real model (576-token windows, 5184-token global
attention, 200 queries over a 72×72 grid), opcheck, torch.compile, and whole-model parity cuda vs eager on the
tiny config.
"""
import _interp  # noqa: F401  (first: decides how triton is imported)

import glob
import os

import pytest
import torch
import torch.nn.functional as F

import sam3lt
import sam3lt.ops as ops
import seeds
from _interp import check_close
from sam3lt.ops import _backend, _cuda
from test_cross_attention import BOX_CASES, MASK_CASES
from test_repmixer import CASES as REPMIXER_CASES
from test_repmixer import _ref_pair as repmixer_refs
from test_upsample import BINARY_CASES, SIZES, _check_binary
from test_window_attention import CASES as WINDOW_CASES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = torch.cuda.is_available()
ALL_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SKIPPED_BUILD = os.environ.get("SAM3LT_SKIP_CUDA_BUILD", "").strip().lower() in ("1", "true", "yes", "on")
_ORDERS = {"forward": 0, "reverse": 1, "random": 2}


# ---------------------------------------------------------------- targets

def _build_emulated():
    """Compile csrc/emu/emu_ops.cpp and every csrc/*.cu, as one C++ unit, for the CPU; torch.ops.sam3lt_emu.*."""
    if hasattr(torch.ops, "sam3lt_emu") and hasattr(torch.ops.sam3lt_emu, "selftest"):
        return
    from torch.utils import cpp_extension

    version = torch.__version__.replace("+", "_").replace(".", "_")
    build = os.path.join(REPO, "build", f"sam3lt_emu_torch{version}")
    os.makedirs(build, exist_ok=True)
    parts = [os.path.join(REPO, "csrc", "emu", "emu_ops.cpp")] + sorted(glob.glob(os.path.join(REPO, "csrc", "*.cu")))
    unit = os.path.join(build, "emu_all.cpp")
    text = "".join(f'#include "{p}"\n' for p in parts)
    if not os.path.exists(unit) or open(unit).read() != text:  # rewritten only when the list changes (no rebuild)
        with open(unit, "w") as f:
            f.write(text)
    cpp_extension.load(name="sam3lt_emu", sources=[unit],
                       extra_cflags=["-O2", "-DSAM3LT_EMULATE"], extra_include_paths=[os.path.join(REPO, "csrc")],
                       build_directory=build, is_python_module=False, verbose=False)


class Target:
    def __init__(self, name, device, dtypes):
        self.name, self.device, self.dtypes = name, device, dtypes
        self.seed = 0

    def run(self, op, *args):
        if self.name == "gpu":
            return getattr(ops, op)(*args, backend="cuda")
        torch.ops.sam3lt_emu.set_schedule(_ORDERS["random"], self.seed)
        if op == "masks_to_binary":
            logits, size, threshold = args
            return torch.ops.sam3lt_emu.masks_to_binary(logits, [int(s) for s in size], float(threshold))
        return getattr(torch.ops.sam3lt_emu, op)(*args)


_emulation_error = None


@pytest.fixture(scope="session")
def emulated_target():
    global _emulation_error
    if os.environ.get("SAM3LT_SKIP_EMULATION", "").strip().lower() in ("1", "true", "yes", "on"):
        pytest.skip("SAM3LT_SKIP_EMULATION is set")
    if _emulation_error is None:
        try:
            _build_emulated()
        except Exception as exc:  # the first test reports the build log; the rest say so briefly
            _emulation_error = f"{type(exc).__name__}: {exc}"
            raise
    else:
        pytest.fail(f"the emulated kernels failed to build: {_emulation_error[:2000]}")
    return Target("emulated", "cpu", ALL_DTYPES)


@pytest.fixture(scope="session")
def gpu_target():
    if not GPU:
        pytest.skip("needs a CUDA GPU")
    available, reason = _cuda.status()
    if not available:
        if SKIPPED_BUILD:
            pytest.skip(f"the CUDA extension was not built (SAM3LT_SKIP_CUDA_BUILD): {reason}")
        pytest.fail(f"a CUDA GPU is present but the cuda backend is unavailable: {reason}")
    return Target("gpu", "cuda", ALL_DTYPES)


@pytest.fixture(params=["gpu", "emulated"])
def target(request):
    t = request.getfixturevalue(f"{request.param}_target")
    t.seed = seeds.for_test(request.node.nodeid)
    return t


def _gen(request):
    return seeds.gen_for(request)


def _randn(gen, *shape, device, dtype=torch.float32, scale=1.0):
    return (torch.randn(*shape, generator=gen) * scale).to(device=device, dtype=dtype)


# ---------------------------------------------------------------- repmixer_dwconv

@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("B, L, C, K, residual", REPMIXER_CASES + [(2, 9, 12, 13, True), (1, 30, 40, 21, False)])
def test_repmixer(target, B, L, C, K, residual, dtype, request):
    gen, dev = _gen(request), target.device
    x = _randn(gen, B, L, C, device=dev, dtype=dtype)
    w = _randn(gen, C, K, device=dev, dtype=dtype, scale=0.3)
    b = _randn(gen, C, device=dev, dtype=dtype)
    out = target.run("repmixer_dwconv", x, w, b, residual)
    assert out.is_contiguous()
    check_close(out, *repmixer_refs(x, w, b, residual), dtype, f"B{B} L{L} C{C} K{K}")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["channels_first_view", "strided_slice", "strided_weight"])
def test_repmixer_non_contiguous(target, layout, dtype, request):
    gen, dev = _gen(request), target.device
    B, L, C, K = 2, 23, 24, 11
    if layout == "channels_first_view":
        x = _randn(gen, B, C, L, device=dev, dtype=dtype).transpose(1, 2)
    else:
        x = _randn(gen, B, 2 * L, C + 3, device=dev, dtype=dtype)[:, ::2, 1:C + 1]
    if layout == "strided_weight":
        w = _randn(gen, K, C, device=dev, dtype=dtype, scale=0.3).t()
    else:
        w = _randn(gen, C, K, device=dev, dtype=dtype, scale=0.3)
    b = _randn(gen, 2 * C, device=dev, dtype=dtype)[::2]
    out = target.run("repmixer_dwconv", x, w, b, True)
    check_close(out, *repmixer_refs(x, w, b, True), dtype, layout)


def test_repmixer_empty(target):
    x = torch.empty(0, 7, 8, device=target.device)
    out = target.run("repmixer_dwconv", x, torch.ones(8, 3, device=target.device), torch.ones(8, device=target.device), True)
    assert out.shape == (0, 7, 8)


# ---------------------------------------------------------------- window_attention

def _rope(gen, tokens, head_dim, device):
    angles = torch.rand(tokens, head_dim // 2, generator=gen, dtype=torch.float64) * 6.3
    return (angles.cos().repeat_interleave(2, -1).float().to(device),
            angles.sin().repeat_interleave(2, -1).float().to(device))


def _window_case(target, gen, B, H, W, heads, D, window, pad, dtype):
    C = heads * D
    qkv = _randn(gen, B, H, W, 3 * C, device=target.device, dtype=dtype)
    cos, sin = _rope(gen, window * window if window else H * W, D, target.device)
    pad_value = _randn(gen, 3 * C, device=target.device, dtype=dtype) if pad else None
    return qkv, cos, sin, heads, window, pad_value


def _check_window(target, qkv, cos, sin, heads, window, pad, dtype, what):
    out = target.run("window_attention", qkv, cos, sin, heads, window, pad)
    assert out.is_contiguous() and out.shape == (*qkv.shape[:3], qkv.shape[-1] // 3)
    pad64 = None if pad is None else pad.double()
    ref64 = ops.window_attention_reference(qkv.double(), cos.double(), sin.double(), heads, window, pad64)
    ref = ops.window_attention_reference(qkv, cos, sin, heads, window, pad)
    check_close(out, ref64, ref, dtype, what)
    return out


# extra: head dims zero-padded to the next instantiation (8 -> 16, 40 -> 64, 96 -> 128) and 128 itself
WINDOW_EXTRA = [(1, 6, 7, 2, 8, 4, True), (1, 5, 5, 1, 40, 0, False), (1, 9, 10, 1, 128, 4, True),
                (1, 4, 9, 1, 96, 3, True)]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("B, H, W, heads, D, window, pad", WINDOW_CASES + WINDOW_EXTRA)
def test_window_attention(target, B, H, W, heads, D, window, pad, dtype, request):
    args = _window_case(target, _gen(request), B, H, W, heads, D, window, pad, dtype)
    _check_window(target, *args, dtype, f"B{B} {H}x{W} h{heads} D{D} win{window}")


@pytest.mark.parametrize("window", [0, 4])
def test_window_attention_non_contiguous(target, window, request):
    gen, dev = _gen(request), target.device
    B, H, W, heads, D = 2, 6, 7, 2, 16
    C = heads * D
    qkv = _randn(gen, B, H + 1, W + 2, 3 * C + 8, device=dev)[:, 1:, 1:W + 1, 4:4 + 3 * C]
    cos, sin = _rope(gen, window * window if window else H * W, D, dev)
    cos = torch.cat([cos, cos], dim=1)[:, :D]
    pad = _randn(gen, 2 * 3 * C, device=dev)[::2]
    assert not qkv.is_contiguous() and not cos.is_contiguous() and not pad.is_contiguous()
    _check_window(target, qkv, cos, sin, heads, window, pad, torch.float32, "non-contiguous")


def test_window_attention_padding_is_attended(target, request):
    gen, dev = _gen(request), target.device
    heads, D, window = 1, 16, 4
    qkv = _randn(gen, 1, 6, 6, 3 * heads * D, device=dev)
    cos, sin = _rope(gen, window * window, D, dev)
    pad_a = _randn(gen, 3 * heads * D, device=dev)
    pad_b = pad_a.clone()
    pad_b[2 * heads * D:] += 5.0
    out_a = target.run("window_attention", qkv, cos, sin, heads, window, pad_a)
    out_b = target.run("window_attention", qkv, cos, sin, heads, window, pad_b)
    assert torch.equal(out_a[:, :4, :4], out_b[:, :4, :4])
    assert not torch.allclose(out_a[:, 4:, :], out_b[:, 4:, :])


# ---------------------------------------------------------------- box_bias_attention / masked_attention

def _heads_view(gen, B, L, heads, D, dtype, device):
    return _randn(gen, B, L, heads * D, device=device, dtype=dtype).view(B, L, heads, D).transpose(1, 2)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("B, heads, Lq, Hg, Wg, D", BOX_CASES + [(1, 2, 12, 4, 4, 8), (1, 1, 20, 9, 10, 64)])
def test_box_bias_attention(target, B, heads, Lq, Hg, Wg, D, dtype, request):
    gen, dev = _gen(request), target.device
    q = _heads_view(gen, B, Lq, heads, D, dtype, dev)
    k = _heads_view(gen, B, Hg * Wg, heads, D, dtype, dev)
    v = _heads_view(gen, B, Hg * Wg, heads, D, dtype, dev)
    bias_y = _randn(gen, B, heads, Lq, Hg, device=dev, scale=2.0)
    bias_x = _randn(gen, B, heads, Lq, Wg, device=dev, scale=2.0)
    out = target.run("box_bias_attention", q, k, v, bias_y, bias_x)
    ref64 = ops.box_bias_attention_reference(q.double(), k.double(), v.double(), bias_y.double(), bias_x.double())
    check_close(out, ref64, ops.box_bias_attention_reference(q, k, v, bias_y, bias_x), dtype, f"Lq{Lq} {Hg}x{Wg} D{D}")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_box_bias_attention_bias_in_input_dtype(target, dtype, request):
    gen, dev = _gen(request), target.device
    B, heads, Lq, Hg, Wg, D = 1, 2, 12, 5, 6, 16
    q, k, v = (_randn(gen, B, heads, L, D, device=dev, dtype=dtype) for L in (Lq, Hg * Wg, Hg * Wg))
    bias_y = _randn(gen, B, heads, Lq, Hg, device=dev, dtype=dtype)
    bias_x = _randn(gen, B, heads, Wg, Lq, device=dev, dtype=dtype).transpose(-1, -2)
    out = target.run("box_bias_attention", q, k, v, bias_y, bias_x)
    ref64 = ops.box_bias_attention_reference(q.double(), k.double(), v.double(), bias_y.double(), bias_x.double())
    check_close(out, ref64, ops.box_bias_attention_reference(q, k, v, bias_y, bias_x), dtype)


def _mask(gen, kind, B, Lk, device):
    if kind == "none":
        return None
    valid = torch.rand(B, Lk, generator=gen) > 0.3
    valid[:, 0] = True
    lengths = torch.randint(1, Lk + 1, (B,), generator=gen)
    valid &= torch.arange(Lk)[None, :] < lengths[:, None]
    if kind == "one_row_empty":
        valid[1] = False
    if kind == "int_mask":
        return valid.to(torch.int32).to(device)
    return valid.to(device)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("B, heads, Lq, Lk, D, kind", MASK_CASES + [(2, 2, 77, 77, 16, "padded"),
                                                                   (1, 1, 3, 130, 128, "padded")])
def test_masked_attention(target, B, heads, Lq, Lk, D, kind, dtype, request):
    gen, dev = _gen(request), target.device
    q = _heads_view(gen, B, Lq, heads, D, dtype, dev)
    k = _heads_view(gen, B, Lk, heads, D, dtype, dev)
    v = _heads_view(gen, B, Lk, heads, D, dtype, dev)
    mask = _mask(gen, kind, B, Lk, dev)
    out = target.run("masked_attention", q, k, v, mask)
    ref64 = ops.masked_attention_reference(q.double(), k.double(), v.double(), mask)
    check_close(out, ref64, ops.masked_attention_reference(q, k, v, mask), dtype, kind)
    if kind == "one_row_empty":
        assert torch.equal(out[1], torch.zeros_like(out[1]))


# ---------------------------------------------------------------- upsample_nearest_add / masks_to_binary

@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("src, dst", SIZES, ids=lambda s: "x".join(map(str, s)))
def test_upsample_nearest_add_exact(target, src, dst, dtype, request):
    gen, dev = _gen(request), target.device
    x = _randn(gen, 2, 3, *src, device=dev, dtype=dtype)
    skip = _randn(gen, 2, 3, *dst, device=dev, dtype=dtype)
    out = target.run("upsample_nearest_add", x, skip)
    ref = ops.upsample_nearest_add_reference(x, skip)
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.equal(out, ref)


@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_upsample_nearest_add_non_contiguous(target, layout, request):
    gen, dev = _gen(request), target.device
    if layout == "channels_last":
        x = _randn(gen, 2, 5, 6, 7, device=dev).to(memory_format=torch.channels_last)
        skip = _randn(gen, 2, 5, 12, 14, device=dev).to(memory_format=torch.channels_last)
    else:
        x = _randn(gen, 2, 10, 6, 9, device=dev)[:, ::2, :, 1:8]
        skip = _randn(gen, 2, 5, 13, 16, device=dev)[..., 1:15]
    assert torch.equal(target.run("upsample_nearest_add", x, skip), ops.upsample_nearest_add_reference(x, skip))


@pytest.mark.parametrize("threshold", [0.5, 0.3])
@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("src, size", BINARY_CASES, ids=lambda s: "x".join(map(str, s)))
def test_masks_to_binary(target, src, size, dtype, threshold, request):
    logits = _randn(_gen(request), *src, device=target.device, dtype=dtype, scale=3.0)
    _check_binary(target.run("masks_to_binary", logits, size, threshold), logits, size, threshold, dtype)


def test_masks_to_binary_non_contiguous_and_empty(target, request):
    logits = _randn(_gen(request), 3, 12, 10, device=target.device, scale=3.0).transpose(1, 2)
    _check_binary(target.run("masks_to_binary", logits, (31, 17), 0.5), logits, (31, 17), 0.5, torch.float32)
    out = target.run("masks_to_binary", torch.empty(0, 12, 10, device=target.device), (31, 17), 0.5)
    assert out.shape == (0, 31, 17) and out.dtype == torch.bool


# ---------------------------------------------------------------- the emulator itself

def test_emulator_detects_missing_barriers(emulated_target):
    """The method behind the emulated tests: a missing __syncthreads changes results with the schedule, a
    divergent one is an error, a correct kernel is schedule independent."""
    expected = (torch.arange(64, dtype=torch.int32) + 1) % 64
    for order in _ORDERS.values():
        torch.ops.sam3lt_emu.set_schedule(order, 3)
        assert torch.equal(torch.ops.sam3lt_emu.selftest(0), expected)
    racy = []
    for order in _ORDERS.values():
        torch.ops.sam3lt_emu.set_schedule(order, 3)
        racy.append(torch.ops.sam3lt_emu.selftest(1))
    assert not all(torch.equal(r, expected) for r in racy)
    with pytest.raises(RuntimeError, match="__syncthreads"):
        torch.ops.sam3lt_emu.selftest(2)


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
def test_emulated_results_do_not_depend_on_the_schedule(emulated_target, dtype, request):
    """Every op, several shapes, under forward / reverse / two random thread orders: bit-identical outputs."""
    gen = _gen(request)
    cases = []
    for shape in [(1, 7, 9, 2, 16, 4, True), (1, 9, 9, 1, 64, 0, False), (1, 5, 6, 1, 128, 4, True)]:
        cases.append(("window_attention", _window_case(emulated_target, gen, *shape, dtype)))
    q = _randn(gen, 2, 2, 70, 32, device="cpu", dtype=dtype)
    kv = [_randn(gen, 2, 2, 72, 32, device="cpu", dtype=dtype) for _ in range(2)]
    cases.append(("box_bias_attention", (q, *kv, _randn(gen, 2, 2, 70, 9, device="cpu"),
                                         _randn(gen, 2, 2, 70, 8, device="cpu"))))
    cases.append(("masked_attention", (q, *kv, _mask(gen, "one_row_empty", 2, 72, "cpu"))))
    cases.append(("repmixer_dwconv", (_randn(gen, 2, 30, 20, device="cpu", dtype=dtype),
                                      _randn(gen, 20, 11, device="cpu", dtype=dtype), _randn(gen, 20, device="cpu",
                                                                                             dtype=dtype), True)))
    cases.append(("upsample_nearest_add", (_randn(gen, 1, 2, 5, 7, device="cpu", dtype=dtype),
                                           _randn(gen, 1, 2, 11, 13, device="cpu", dtype=dtype))))
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
def test_window_attention_model_shapes(gpu_target, B, H, W, heads, D, window, pad, dtype, request):
    args = _window_case(gpu_target, _gen(request), B, H, W, heads, D, window, pad, dtype)
    _check_window(gpu_target, *args, dtype, f"{H}x{W} win{window}")


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("B, heads, Lq, Hg, Wg, D", MODEL_BOX_CASES)
def test_box_bias_attention_model_shapes(gpu_target, B, heads, Lq, Hg, Wg, D, dtype, request):
    gen, dev = _gen(request), "cuda"
    q = _heads_view(gen, B, Lq, heads, D, dtype, dev)
    k = _heads_view(gen, B, Hg * Wg, heads, D, dtype, dev)
    v = _heads_view(gen, B, Hg * Wg, heads, D, dtype, dev)
    bias_y = _randn(gen, B, heads, Lq, Hg, device=dev, scale=2.0)
    bias_x = _randn(gen, B, heads, Lq, Wg, device=dev, scale=2.0)
    out = gpu_target.run("box_bias_attention", q, k, v, bias_y, bias_x)
    ref64 = ops.box_bias_attention_reference(q.double(), k.double(), v.double(), bias_y.double(), bias_x.double())
    check_close(out, ref64, ops.box_bias_attention_reference(q, k, v, bias_y, bias_x), dtype)


def _samples(gen, dtype=torch.float32):
    dev = "cuda"
    return {
        "repmixer_dwconv": (_randn(gen, 2, 9, 8, device=dev, dtype=dtype), _randn(gen, 8, 3, device=dev, dtype=dtype),
                            _randn(gen, 8, device=dev, dtype=dtype), True),
        "window_attention": (_randn(gen, 1, 5, 6, 3 * 32, device=dev, dtype=dtype), *_rope(gen, 16, 16, dev), 2, 4,
                             _randn(gen, 3 * 32, device=dev, dtype=dtype)),
        "box_bias_attention": (_randn(gen, 1, 2, 7, 16, device=dev, dtype=dtype),
                               _randn(gen, 1, 2, 12, 16, device=dev, dtype=dtype),
                               _randn(gen, 1, 2, 12, 16, device=dev, dtype=dtype),
                               _randn(gen, 1, 2, 7, 3, device=dev), _randn(gen, 1, 2, 7, 4, device=dev)),
        "masked_attention": (_randn(gen, 1, 2, 7, 16, device=dev, dtype=dtype),
                             _randn(gen, 1, 2, 12, 16, device=dev, dtype=dtype),
                             _randn(gen, 1, 2, 12, 16, device=dev, dtype=dtype),
                             (torch.arange(12, device=dev) < 9)[None]),
        "upsample_nearest_add": (_randn(gen, 1, 3, 4, 5, device=dev, dtype=dtype),
                                 _randn(gen, 1, 3, 8, 10, device=dev, dtype=dtype)),
        "masks_to_binary": (_randn(gen, 2, 6, 7, device=dev, dtype=dtype, scale=3.0), [11, 9], 0.5),
    }


@pytest.mark.parametrize("name", _cuda.kernel_ops())
def test_opcheck(gpu_target, name, request):
    args = _samples(_gen(request))[name]
    torch.library.opcheck(getattr(torch.ops.sam3lt_C, name).default, args)


def test_auto_picks_cuda_on_gpu(gpu_target, request):
    for name, args in _samples(_gen(request), torch.float16).items():
        assert _backend.select(name, None, *args)[0] == "cuda", name


def test_compile_fullgraph_cuda(gpu_target, request):
    args = _samples(_gen(request))

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
    for name in _cuda.kernel_ops() + _cuda.torch_ops():
        impl = _backend._REGISTRY[name]["cuda"]
        fn = impl.fn
        if emulated:  # the emulated kernels stand in for the extension, on CPU tensors (torch's ops run as they are)
            fn = fn if name in _cuda.torch_ops() else (lambda n: lambda *a: Target("emulated", "cpu", ()).run(n, *a))(name)
            monkeypatch.setattr(impl, "supports", lambda *a: None)
        monkeypatch.setattr(impl, "fn", (lambda f, n: lambda *a: calls.append(n) or f(*a))(fn, name))
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
def test_model_parity_cuda_vs_eager(gpu_target, dtype, rtol, monkeypatch):
    _model_parity("cuda", dtype, rtol, monkeypatch)


@pytest.mark.parametrize("dtype, rtol", [(torch.float32, 1e-4), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
def test_model_parity_emulated_vs_eager(emulated_target, dtype, rtol, monkeypatch):
    """The same whole-model check on the CPU, with the emulated kernels standing in for sam3lt._C."""
    _model_parity("cpu", dtype, rtol, monkeypatch, emulated=True)
