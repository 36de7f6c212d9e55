"""Packaging, without compiling: the sdist holds what building sam3lt needs (every CUDA source and header, csrc/emu,
the build files, the package) and no tests; the wheel installs the package sam3lt only (with sam3lt.kernels; no
top-level kernels, bench or tests); an install that builds code but leaves the CUDA extension out says why in one
warning line; the editable install is a plain path entry, without setuptools' warning about folders named like
the package. CI's scripts/check_dist.py does the whole round trip with the extension (build, install into fresh
venvs, import sam3lt._C); the file lists here are checked by its functions.
"""
import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("check_dist", REPO / "scripts" / "check_dist.py")
check_dist = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_dist)

_FLAGS = ("SAM3LT_SKIP_CUDA_BUILD", "SAM3LT_FORCE_CUDA_BUILD", "SAM3LT_SKIP_CPU_BUILD", "TORCH_CUDA_ARCH_LIST")


def _env(**extra):
    """The environment without the build flags, plus ``extra``; never the CPU extension (nothing compiles here)."""
    return {**{k: v for k, v in os.environ.items() if k not in _FLAGS}, "SAM3LT_SKIP_CPU_BUILD": "1", **extra}


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    """The sdist, and the wheel built from it, pure Python (SAM3LT_SKIP_CUDA_BUILD: the sdist must hold the CUDA
    sources whether or not the machine that makes it would build them)."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, REPO], env=_env(SAM3LT_SKIP_CUDA_BUILD="1"))
    (sdist,) = out.glob("sam3lt-*.tar.gz")
    (wheel,) = out.glob("sam3lt-*.whl")
    return sdist, wheel


def test_sdist_holds_every_cuda_source_and_header_and_no_tests(dists):
    with tarfile.open(dists[0]) as tar:
        names = tar.getnames()
    assert check_dist.sdist_problems(names) == []
    files = {n.split("/", 1)[1] for n in names if "/" in n}
    csrc = {p.relative_to(REPO).as_posix() for p in (REPO / "csrc").rglob("*") if p.is_file()}
    assert {f for f in csrc if f.endswith(".h")} >= {"csrc/common.h", "csrc/host.h", "csrc/params.h"}
    assert csrc <= files and "csrc/emu/cuda_emu.h" in files and {"setup.py", "pyproject.toml"} <= files
    assert not [f for f in files if f.startswith(("tests/", "bench/", "scripts/"))]


def test_wheel_installs_only_the_package(dists):
    with zipfile.ZipFile(dists[1]) as whl:
        names = whl.namelist()
    assert check_dist.wheel_problems(names, with_extension=False) == []
    assert {n.split("/")[0] for n in names} == {"sam3lt", "sam3lt-0.1.0.dist-info"}


def test_file_checks_catch_what_was_wrong():
    """The checks above would have failed on the sdist and wheels this project shipped before: no headers, half the
    tests, a top-level kernels package."""
    root = "sam3lt-0.1.0/"
    old_sdist = [root + f for f in ("setup.py", "csrc/ops.cpp", "csrc/window_attention.cu", "tests/test_cli.py")]
    problems = check_dist.sdist_problems(old_sdist)
    assert "missing csrc/common.h" in problems and "missing csrc/emu/cuda_emu.h" in problems
    assert "should not ship tests/test_cli.py" in problems
    problems = check_dist.wheel_problems(["sam3lt/__init__.py", "kernels/__init__.py"], with_extension=True)
    assert "installs top-level kernels" in problems and "missing sam3lt/kernels/linear.py" in problems
    assert "the CUDA extension sam3lt/_C*.so is missing" in problems


_SETUP = ("import runpy, sys\n"
          "if sys.argv[1] == 'no-torch': sys.modules['torch'] = None\n"
          "sys.argv = ['setup.py'] + sys.argv[2:]\n"
          "runpy.run_path('setup.py', run_name='__main__')\n")


@pytest.mark.parametrize("case, args, env, reason", [
    ("no-torch", ["build_ext", "--help"], {}, "torch is not importable (install torch first and use pip "
                                               "--no-build-isolation)"),
    ("torch", ["bdist_wheel", "--help"], {"CUDA_HOME": "/nonexistent"}, "no CUDA toolkit found"),
    ("no-torch", ["--version"], {}, None),  # metadata only: pip runs setup.py for these too, they stay quiet
    ("no-torch", ["build_ext", "--help"], {"SAM3LT_SKIP_CUDA_BUILD": "1"}, None),  # pure Python on purpose
])
def test_build_that_leaves_the_extension_out_warns_once(case, args, env, reason):
    """The line pip shows for ``pip install .`` and ``-e .`` (a UserWarning from setup.py; pip hides its print)."""
    out = _run([sys.executable, "-W", "always", "-c", _SETUP, case, *args], cwd=REPO, env=_env(**env))
    said = [line for line in out.splitlines() if check_dist.LEFT_OUT in line]
    if reason is None:
        assert said == [], out
    else:
        assert len(said) == 1 and reason in said[0] and "UserWarning" in said[0], out
        assert "warnings.warn" not in out, out  # no second line quoting setup.py's source


def test_editable_install_exposes_only_the_package_and_does_not_warn(tmp_path):
    python = check_dist.make_venv(tmp_path / "venv")
    out = _run([python, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-e", REPO],
               env=_env(SAM3LT_SKIP_CUDA_BUILD="1", PIP_DISABLE_PIP_VERSION_CHECK="1"))
    assert "BuildBackendWarning" not in out and "same name" not in out, out
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    assert [p.read_text().strip() for p in site.glob("__editable__*.pth")] == [str(REPO / "src")]
    probe = ("import importlib.util, sam3lt, sam3lt.kernels\n"
             "print(sam3lt.__file__, sam3lt.kernels.__file__)\n"
             "for name in ('kernels', 'bench', 'tests', 'setup'):\n"
             "    spec = importlib.util.find_spec(name)\n"
             f"    assert spec is None or not (spec.origin or '').startswith({str(REPO)!r}), spec\n")
    where = _run([python, "-c", probe], cwd=tmp_path).split()
    assert where == [str(REPO / "src" / "sam3lt" / "__init__.py"), str(REPO / "src" / "sam3lt" / "kernels" / "__init__.py")]
