"""The compiled extension ``sam3lt._C`` without a GPU: it is built and imports wherever the install had a CUDA
toolkit, its ops and schemas are registered, the Meta (fake) implementations give the right shapes, and a
missing or broken extension never breaks ``import sam3lt`` (the cuda backend reports why instead).

Whether the extension must exist: required when ``SAM3LT_REQUIRE_CUDA_EXT=1`` or when a CUDA toolkit (nvcc) is
found, as ``setup.py`` would have built it then; skipped (with the reason) only when ``SAM3LT_SKIP_CUDA_BUILD=1``
was set, or when neither a toolkit nor a CUDA build of torch is present.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sam3lt
import sam3lt.ops as ops
from sam3lt import _ext
from sam3lt.ops import _backend, _cuda

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flag(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _toolkit():
    """The nvcc setup.py would find (CUDA_HOME, PATH, /usr/local/cuda), or None."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            path = os.path.join(os.environ[var], "bin", "nvcc")
            return path if os.path.isfile(path) else None
    return shutil.which("nvcc") or next((p for p in ["/usr/local/cuda/bin/nvcc"] if os.path.isfile(p)), None)


def _requirement():
    """(required, why not)."""
    if _flag("SAM3LT_SKIP_CUDA_BUILD"):
        return False, "the build was skipped (SAM3LT_SKIP_CUDA_BUILD is set)"
    if _flag("SAM3LT_REQUIRE_CUDA_EXT"):
        return True, ""
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build: the install is pure Python"
    if _toolkit() is None:
        return False, "no CUDA toolkit (nvcc) here: the install is pure Python"
    return True, ""


REQUIRED, NOT_REQUIRED_WHY = _requirement()
needs_ext = pytest.mark.skipif(_ext.EXT is None and not REQUIRED, reason=NOT_REQUIRED_WHY or "no extension")

# the one op list of the extension (csrc/ops.h: X(name, "(arguments) -> result"))
SCHEMAS = {name: f"sam3lt_C::{name}{schema}" for name, schema in
           re.findall(r'X\((\w+), "([^"]*)"\)', (Path(__file__).parents[1] / "csrc" / "ops.h").read_text())}


@needs_ext
def test_extension_is_built_and_imports():
    assert _ext.EXT is not None, f"sam3lt._C is required here but unusable: {_ext.IMPORT_ERROR}"
    import sam3lt._C as C

    assert C.__torch_version__ == torch.__version__
    assert C.__cuda_archs__ and all(_ext._parse_arch(a) for a in C.__cuda_archs__.split(","))
    assert set(SCHEMAS) and set(_cuda.kernel_ops()) == set(SCHEMAS)


@needs_ext
@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_op_schemas(name):
    assert _ext.EXT is not None, _ext.IMPORT_ERROR
    op = getattr(torch.ops.sam3lt_C, name).default
    assert str(op._schema) == SCHEMAS[name]
    # the same arguments as the Triton backend's sam3lt:: op, where that one exists
    triton_op = getattr(getattr(torch.ops, "sam3lt", None), name, None) if hasattr(torch.ops, "sam3lt") else None
    if triton_op is not None:
        try:
            theirs = triton_op.default._schema
        except (AttributeError, RuntimeError):
            return
        assert [(a.name, str(a.type)) for a in op._schema.arguments] == \
            [(a.name, str(a.type)) for a in theirs.arguments]


def _meta_cases(dtype):
    m = dict(device="meta", dtype=dtype)
    return [
        ("repmixer_dwconv", (torch.empty(3, 77, 64, **m), torch.empty(64, 11, **m), torch.empty(64, **m), True),
         (3, 77, 64), dtype),
        ("window_attention", (torch.empty(2, 20, 20, 3 * 64, **m), torch.empty(64, 16, device="meta"),
                              torch.empty(64, 16, device="meta"), 4, 8, torch.empty(3 * 64, **m)), (2, 20, 20, 64), dtype),
        ("window_attention", (torch.empty(1, 9, 7, 3 * 32, **m), torch.empty(63, 32, device="meta"),
                              torch.empty(63, 32, device="meta"), 1, 0, None), (1, 9, 7, 32), dtype),
        ("box_bias_attention", (torch.empty(2, 8, 200, 32, **m), torch.empty(2, 8, 72 * 72, 32, **m),
                                torch.empty(2, 8, 72 * 72, 32, **m), torch.empty(2, 8, 200, 72, device="meta"),
                                torch.empty(2, 8, 200, 72, device="meta")), (2, 200, 256), dtype),
        ("masked_attention", (torch.empty(4, 8, 9, 16, **m), torch.empty(4, 8, 13, 16, **m),
                              torch.empty(4, 8, 13, 16, **m), torch.empty(4, 13, device="meta", dtype=torch.bool)),
         (4, 9, 128), dtype),
        ("masked_attention", (torch.empty(1, 2, 5, 64, **m), torch.empty(1, 2, 5, 64, **m),
                              torch.empty(1, 2, 5, 64, **m), None), (1, 5, 128), dtype),
        ("upsample_nearest_add", (torch.empty(2, 32, 18, 18, **m), torch.empty(2, 32, 36, 36, **m)),
         (2, 32, 36, 36), dtype),
        ("masks_to_binary", (torch.empty(5, 72, 72, **m), [480, 640], 0.5), (5, 480, 640), torch.bool),
    ]


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_meta_implementations(dtype):
    assert _ext.EXT is not None, _ext.IMPORT_ERROR
    for name, args, shape, out_dtype in _meta_cases(dtype):
        out = getattr(torch.ops.sam3lt_C, name)(*args)
        assert out.device.type == "meta", name
        assert tuple(out.shape) == shape and out.dtype == out_dtype, (name, tuple(out.shape), out.dtype)


@needs_ext
def test_fake_cuda_tensors():
    """Fake (FakeTensorMode) CUDA tensors, as torch.compile traces them: shapes from the Meta implementations."""
    assert _ext.EXT is not None, _ext.IMPORT_ERROR
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        for name, args, shape, out_dtype in _meta_cases(torch.bfloat16):
            fake_args = [torch.empty(a.shape, dtype=a.dtype, device="cuda") if isinstance(a, torch.Tensor) else a
                         for a in args]
            out = getattr(torch.ops.sam3lt_C, name)(*fake_args)
            assert out.device.type == "cuda" and tuple(out.shape) == shape and out.dtype == out_dtype, name


def test_status():
    available, reason = _cuda.status()
    assert isinstance(available, bool) and isinstance(reason, str) and reason
    if _ext.EXT is None:
        assert not available and reason == _ext.IMPORT_ERROR
    elif not torch.cuda.is_available():
        assert not available and "no CUDA GPU" in reason


@pytest.mark.parametrize("case, reason", [
    ("cpu", "CPU"),
    ("int", "must be a floating-point tensor"),
    ("head_dim_12", "not a multiple of 8"),
    ("head_dim_256", "> 128"),
    ("bad_tables", "cos/sin must be"),
    ("even_taps", "even kernel size"),
    ("box_keys", "Hg·Wg"),
    ("mask_shape", "key_padding_mask must be"),
])
def test_supports_reasons(case, reason):
    r = _backend.unavailable_reason
    qkv = torch.randn(1, 4, 4, 3 * 16)
    if case == "cpu":
        got = r("window_attention", "cuda", qkv, torch.randn(16, 16), torch.randn(16, 16), 1, 4, None)
    elif case == "int":
        got = r("upsample_nearest_add", "cuda", torch.ones(1, 1, 2, 2, dtype=torch.int32),
                torch.ones(1, 1, 4, 4, dtype=torch.int32))
    elif case == "head_dim_12":
        got = r("masked_attention", "cuda", *(torch.randn(1, 2, 3, 12),) * 3, None)
    elif case == "head_dim_256":
        got = r("window_attention", "cuda", torch.randn(1, 4, 4, 3 * 256), torch.randn(16, 256),
                torch.randn(16, 256), 1, 4, None)
    elif case == "bad_tables":
        got = r("window_attention", "cuda", qkv, torch.randn(9, 16), torch.randn(9, 16), 1, 4, None)
    elif case == "even_taps":
        got = r("repmixer_dwconv", "cuda", torch.randn(1, 3, 4), torch.randn(4, 4), torch.randn(4), True)
    elif case == "box_keys":
        q = torch.randn(1, 2, 3, 16)
        got = r("box_bias_attention", "cuda", q, torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16),
                torch.randn(1, 2, 3, 3), torch.randn(1, 2, 3, 3))
    else:
        q = torch.randn(1, 2, 3, 16)
        got = r("masked_attention", "cuda", q, q, q, torch.ones(1, 5, dtype=torch.bool))
    assert got is not None
    if _ext.EXT is not None or case != "cpu":
        assert reason in got, got
    else:
        assert got == _ext.IMPORT_ERROR


def test_forced_cuda_raises_with_reason():
    x, w, b = torch.randn(2, 5, 8), torch.randn(8, 3), torch.randn(8)
    with pytest.raises(ops.BackendUnavailable, match="backend 'cuda' cannot run these inputs") as info:
        ops.repmixer_dwconv(x, w, b, backend="cuda")
    assert str(info.value).endswith(_backend.unavailable_reason("repmixer_dwconv", "cuda", x, w, b, True))
    with pytest.raises(ops.BackendUnavailable, match="cuda"):
        ops.mask_product(torch.randn(1, 3, 4), torch.randn(1, 4, 2, 2), backend="cuda")


def test_every_op_has_a_cuda_implementation():
    for name in _cuda.kernel_ops() + ["mask_product"]:
        assert "cuda" in _backend._REGISTRY[name], name
    assert not _backend._REGISTRY["mask_product"]["cuda"].auto  # auto keeps torch's matmul (eager)


@pytest.mark.parametrize("archs, capability, ok", [
    (("8.0", "9.0"), (9, 0), True), (("8.0", "9.0"), (8, 6), True), (("8.0", "9.0"), (10, 0), False),
    (("8.0", "9.0+PTX"), (10, 0), True), (("9.0",), (8, 0), False), (("9.0a",), (9, 0), True),
    (("8.6",), (8, 0), False), ((), (7, 5), True),
])
def test_arch_matching(archs, capability, ok, monkeypatch):
    monkeypatch.setattr(_ext, "ARCHS", archs)
    assert _ext.arch_supported(capability) is ok


def _python(code, **env):
    full_env = {k: v for k, v in os.environ.items() if k not in ("SAM3LT_DISABLE_CUDA_EXT", "SAM3LT_BACKEND")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=300,
                          cwd=REPO)


_PROBE = ("import warnings, torch, sam3lt\n"
          "from sam3lt.ops import _cuda\n"
          "x, w, b = torch.randn(1, 5, 8), torch.randn(8, 3), torch.randn(8)\n"
          "with warnings.catch_warnings():\n"
          "    warnings.simplefilter('ignore')\n"
          "    assert torch.equal(sam3lt.ops.repmixer_dwconv(x, w, b), sam3lt.ops.repmixer_dwconv_reference(x, w, b, True))\n"
          "try:\n"
          "    sam3lt.ops.repmixer_dwconv(x, w, b, backend='cuda')\n"
          "except sam3lt.ops.BackendUnavailable as exc:\n"
          "    print('FORCED:', exc)\n"
          "print('STATUS:', _cuda.status())\n"
          "with warnings.catch_warnings(record=True) as rec:\n"  # non-CPU inputs: a missing backend is reported once
          "    warnings.simplefilter('always')\n"
          "    for _ in range(2):\n"
          "        sam3lt.ops.repmixer_dwconv(x.to('meta'), w.to('meta'), b.to('meta'))\n"
          "for r in rec:\n"
          "    print('WARNING:', r.message)\n")


@pytest.mark.parametrize("how, expected", [
    ("blocked", "failed to import"),
    ("broken", "failed to import"),
    ("other_torch", "built against torch 0.0.1"),
    ("disabled", "disabled by SAM3LT_DISABLE_CUDA_EXT"),
])
def test_unusable_extension_never_breaks_import(how, expected):
    """import sam3lt works with a missing / broken / mismatched extension; status and forced calls give the reason."""
    setup = {
        "blocked": "import sys; sys.modules['sam3lt._C'] = None\n",
        "broken": ("import sys, types\n"
                   "class _Finder:\n"
                   "    def find_spec(self, name, path=None, target=None):\n"
                   "        if name == 'sam3lt._C':\n"
                   "            raise ImportError('undefined symbol: _ZN3c105ErrorC2E (simulated)')\n"
                   "sys.meta_path.insert(0, _Finder())\n"),
        "other_torch": ("import sys, types\n"
                        "fake = types.ModuleType('sam3lt._C'); fake.__torch_version__ = '0.0.1'\n"
                        "sys.modules['sam3lt._C'] = fake\n"),
        "disabled": "",
    }[how]
    env = {"SAM3LT_DISABLE_CUDA_EXT": "1"} if how == "disabled" else {}
    proc = _python(setup + _PROBE, **env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    forced = [line for line in proc.stdout.splitlines() if line.startswith("FORCED:")]
    status = [line for line in proc.stdout.splitlines() if line.startswith("STATUS:")]
    assert forced and status, proc.stdout
    assert "backend 'cuda' cannot run these inputs" in forced[0]
    assert expected in forced[0] and expected in status[0] and "False" in status[0], proc.stdout
    cuda_warnings = [line for line in proc.stdout.splitlines() if line.startswith("WARNING:") and "cuda" in line]
    assert len(cuda_warnings) == 1 and "the cuda backend is unavailable" in cuda_warnings[0], proc.stdout
    assert expected in cuda_warnings[0]


@pytest.mark.skipif(_ext.EXT is None, reason="needs the built extension")
def test_built_extension_is_not_reported_missing():
    proc = _python(_PROBE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not [line for line in proc.stdout.splitlines() if line.startswith("WARNING:") and "cuda" in line]


def _setup_line(**env):
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("SAM3LT_SKIP_CUDA_BUILD", "SAM3LT_FORCE_CUDA_BUILD", "TORCH_CUDA_ARCH_LIST")}
    full_env.update(env)
    proc = subprocess.run([sys.executable, "setup.py", "--version"], capture_output=True, text=True, env=full_env,
                          cwd=REPO, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("sam3lt: building")]
    return proc, lines


def test_setup_skip_flag():
    proc, lines = _setup_line(SAM3LT_SKIP_CUDA_BUILD="1", SAM3LT_SKIP_CPU_BUILD="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert lines == ["sam3lt: building pure Python (SAM3LT_SKIP_CUDA_BUILD is set); no CPU extension "
                     "(SAM3LT_SKIP_CPU_BUILD is set)"]


def test_setup_force_flag_fails_loudly_without_toolkit(tmp_path):
    proc, _ = _setup_line(SAM3LT_FORCE_CUDA_BUILD="1", CUDA_HOME=str(tmp_path / "no-cuda"))
    assert proc.returncode != 0
    assert "SAM3LT_FORCE_CUDA_BUILD is set but the CUDA extension cannot be built" in proc.stderr


@pytest.mark.skipif(torch.version.cuda is None or _toolkit() is None, reason="needs nvcc and a CUDA build of torch")
def test_setup_builds_extension_with_toolkit():
    proc, lines = _setup_line(TORCH_CUDA_ARCH_LIST="9.0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("sam3lt: building the CUDA extension sam3lt._C (archs 9.0,"), lines
    proc, lines = _setup_line()
    assert lines[0].startswith("sam3lt: building the CUDA extension sam3lt._C (archs 8.0;9.0,"), lines
