"""Packaging check, run by CI (.ci/run) after the test suite: the sdist and the wheel build, install into fresh
venvs and import there. Run with the .venv's Python from the checkout: ``.venv/bin/python scripts/check_dist.py``.

1. ``python -m build --sdist --no-isolation``: the sdist; its files are checked (:func:`sdist_problems`).
2. ``pip wheel --no-build-isolation`` of that sdist: the wheel, built from the sdist as a packager would (the one
   compile of the CUDA extension here); its files are checked (:func:`wheel_problems`).
3. ``pip install --no-build-isolation`` of the sdist into a fresh venv (pip reuses the wheel it built and cached in
   step 2, so nothing is compiled twice), and of the wheel into another. In each, from a folder outside the
   checkout, sam3lt, sam3lt.kernels and, when they were built, sam3lt._C and sam3lt._cpu import from that venv, and the installed
   files are sam3lt's package, metadata and console script only.
4. A plain, isolated ``pip wheel`` of the unpacked sdist (no torch in pip's build environment) says in one warning
   line that the extension was left out.

The fresh venvs get sam3lt's dependencies (torch, triton, ...) from this interpreter's site-packages through a
.pth file naming a folder of links to them, sam3lt itself left out (:func:`make_venv`): none of them is
downloaded or copied (only step 4's isolated build environment fetches setuptools, as a user's would).
``SAM3LT_FORCE_CUDA_BUILD=1`` (CI) makes steps 2-3 fail unless the extension is built; it is built for
``TORCH_CUDA_ARCH_LIST`` or, when that is unset, for sm_90 only (half the compile of the default list, which the
test suite's build already covers).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
import venv
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAME = "sam3lt"
# the line setup.py warns with when an install leaves the extension out (pip shows it for a local folder)
LEFT_OUT = "sam3lt: installing without the CUDA extension sam3lt._C: "


def expected_sources() -> set[str]:
    """The files an sdist must hold, relative to its root: the build files, every CUDA source and header (csrc/,
    csrc/emu/) and every module of the package (sam3lt/ and kernels/, under src/sam3lt)."""
    files = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md", "LICENSE", "src/sam3lt/assets/NOTICE.txt"}
    for path in (REPO / "csrc").rglob("*"):
        if path.is_file():
            files.add(path.relative_to(REPO).as_posix())
    for folder, prefix in ((REPO / "sam3lt", "src/sam3lt"), (REPO / "kernels", "src/sam3lt/kernels")):
        for path in folder.rglob("*.py"):  # rglob does not follow the sam3lt/kernels link: kernels/ is listed itself
            files.add(f"{prefix}/{path.relative_to(folder).as_posix()}")
    return files


def _junk(name: str) -> bool:
    return name.endswith((".pyc", ".pyo", ".o")) or "__pycache__" in name.split("/")


def sdist_problems(names: list[str]) -> list[str]:
    """What is wrong with an sdist's member names (``tarfile.getnames()``); [] when nothing is."""
    root = names[0].split("/")[0]
    files = {n[len(root) + 1:] for n in names if n.startswith(root + "/")}
    problems = [f"missing {f}" for f in sorted(expected_sources() - files)]
    extra = [f for f in files if f.split("/")[0] in ("tests", "bench", "scripts", ".ci", "kernels", "sam3lt", "build")
             or _junk(f) or f.endswith(".so")]
    return problems + [f"should not ship {f}" for f in sorted(extra)]


def wheel_problems(names: list[str], *, with_extension: bool) -> list[str]:
    """What is wrong with a wheel's member names (``zipfile.namelist()``); [] when nothing is. Only the package
    ``sam3lt`` (with sam3lt.kernels) and its .dist-info may be installed: no top-level kernels, bench or tests."""
    top = {n.split("/")[0] for n in names}
    problems = [f"installs top-level {t}" for t in sorted(top) if t != NAME and not t.endswith(".dist-info")]
    need = {f"sam3lt/kernels/{p.name}" for p in (REPO / "kernels").glob("*.py")} | {"sam3lt/__init__.py",
                                                                                   "sam3lt/assets/NOTICE.txt"}
    problems += [f"missing {f}" for f in sorted(need - set(names))]
    if not any(n.startswith(f"{NAME}-") and n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("missing the license file .dist-info/licenses/LICENSE")
    problems += [f"should not ship {n}" for n in names if _junk(n)]
    has_ext = any(n.startswith("sam3lt/_C.") and n.endswith(".so") for n in names)
    if has_ext != with_extension:
        problems.append("the CUDA extension sam3lt/_C*.so is " + ("missing" if with_extension else "present"))
    if with_extension and not any(n.startswith("sam3lt/_cpu.") and n.endswith(".so") for n in names):
        problems.append("the CPU extension sam3lt/_cpu*.so is missing")  # built wherever torch is
    return problems


def make_venv(path: Path) -> Path:
    """A fresh venv (no pip of its own) that sees this interpreter's installed packages, sam3lt excepted, through a
    .pth file: a folder of links to them. Returns its python."""
    deps = path.parent / "deps"
    if not deps.exists():
        deps.mkdir()
        for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
            if not (entry.name.startswith((NAME, "__editable__")) or entry.suffix == ".pth"):
                (deps / entry.name).symlink_to(entry)
    venv.create(path, with_pip=False)
    python = path / "bin" / "python"
    purelib = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      text=True).strip()
    Path(purelib, "deps.pth").write_text(f"{deps}\n")
    return python


def run(cmd: list, *, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run, echo the command, return stdout+stderr; exit with the output when it fails."""
    print("+", " ".join("<probe>" if "\n" in str(c) else str(c) for c in cmd), flush=True)
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"check_dist: failed ({proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}")
    return proc.stdout + proc.stderr


_PROBE = """
import importlib.metadata as md, sys, sam3lt, sam3lt.kernels
from sam3lt import _ext
where = [sam3lt.__file__, sam3lt.kernels.__file__]
assert all(w.startswith(sys.prefix + "/") for w in where), f"imported from outside the venv: {where}"
files = [str(f) for f in md.files("sam3lt")]
stray = [f for f in files if f.split("/")[0] not in ("sam3lt", "sam3lt-" + md.version("sam3lt") + ".dist-info")
         and not f.endswith("/bin/sam3lt")]
assert not stray, f"installed outside the package: {stray}"
if sys.argv[1] == "1":
    import sam3lt._C, sam3lt._cpu
    from sam3lt.ops import _cpu
    assert _ext.EXT is not None, _ext.IMPORT_ERROR
    assert _cpu.EXT is not None, _cpu.IMPORT_ERROR
print("ok:", sam3lt.__file__, "| extensions:", _ext.EXT is not None, "|", len(files), "files")
"""


def check_installed(python: Path, with_extension: bool, cwd: Path) -> None:
    print(run([python, "-c", _PROBE, int(with_extension)], cwd=cwd).strip().splitlines()[-1])


def main() -> None:
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="sam3lt-dist-"))
    # one architecture unless told otherwise: this checks packaging, the test suite's build covers the default list
    env = {"TORCH_CUDA_ARCH_LIST": "9.0", **os.environ, "PIP_CACHE_DIR": str(tmp / "pip-cache"),
           "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONNOUSERSITE": "1"}
    try:
        dist, wheels, outside = tmp / "dist", tmp / "wheels", tmp / "elsewhere"
        outside.mkdir()
        run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", dist, REPO], env=env)
        (sdist,) = dist.glob("sam3lt-*.tar.gz")
        with tarfile.open(sdist) as tar:
            problems = sdist_problems(tar.getnames())
            if problems:
                sys.exit("check_dist: sdist " + sdist.name + ": " + "; ".join(problems))
            tar.extractall(tmp / "unpacked", filter="data")
        print(f"sdist {sdist.name}: ok ({time.perf_counter() - start:.0f} s)")

        venv_w = make_venv(tmp / "venv-wheel")
        run([venv_w, "-m", "pip", "wheel", "--no-build-isolation", "--no-deps", "--no-index", "-w", wheels, sdist],
            env=env)
        (wheel,) = wheels.glob("sam3lt-*.whl")
        with_extension = "py3-none-any" not in wheel.name
        with zipfile.ZipFile(wheel) as whl:
            problems = wheel_problems(whl.namelist(), with_extension=with_extension)
        if problems:
            sys.exit("check_dist: wheel " + wheel.name + ": " + "; ".join(problems))
        print(f"wheel {wheel.name}, built from the sdist: ok ({time.perf_counter() - start:.0f} s)")

        venv_s = make_venv(tmp / "venv-sdist")
        # named, so that pip looks the sdist up in its wheel cache (a bare path is never looked up)
        out = run([venv_s, "-m", "pip", "install", "--no-build-isolation", "--no-index", f"sam3lt @ {sdist.as_uri()}"],
                  env=env)
        rebuilt = "Building wheel for sam3lt" in out
        check_installed(venv_s, with_extension, outside)
        print(f"sdist installed into a fresh venv ({'built again' if rebuilt else 'pip reused the wheel it built'}) "
              f"({time.perf_counter() - start:.0f} s)")
        run([venv_w, "-m", "pip", "install", "--no-index", wheel], env=env)
        check_installed(venv_w, with_extension, outside)
        print(f"wheel installed into a fresh venv ({time.perf_counter() - start:.0f} s)")

        # what a user sees from a plain `pip install .`: pip's isolated build environment has no torch
        iso_env = {k: v for k, v in env.items() if k not in ("SAM3LT_FORCE_CUDA_BUILD", "SAM3LT_SKIP_CUDA_BUILD")}
        (unpacked,) = (tmp / "unpacked").iterdir()
        out = run([venv_w, "-m", "pip", "wheel", "--no-deps", "-w", tmp / "isolated", unpacked], env=iso_env)
        said = [line.strip() for line in out.splitlines() if LEFT_OUT in line]
        if len(said) != 1 or "torch is not importable" not in said[0]:
            sys.exit(f"check_dist: an isolated pip build should warn once that the extension is left out:\n{out}")
        print(f"isolated build warns: {said[0]}")
        print(f"check_dist: ok ({time.perf_counter() - start:.0f} s)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
