"""sam3lt packaging: the CUDA extension (project metadata and package layout are in pyproject.toml).

The CUDA extension ``sam3lt._C`` (``csrc/``) is added to ``ext_modules`` by ``_cuda_extensions()`` when a CUDA
toolkit and a CUDA build of torch are present. It is built against the torch of the build environment, so install
with ``pip install --no-build-isolation`` (an isolated build has no torch). Environment:

- ``SAM3LT_SKIP_CUDA_BUILD=1``: pure-Python install, never build the extension.
- ``SAM3LT_FORCE_CUDA_BUILD=1``: build it, and fail the install when it cannot be built.
- ``TORCH_CUDA_ARCH_LIST``: target architectures (default ``"8.0;9.0"``: A100 and H100/H200 SASS).
- ``MAX_JOBS``: parallel compile jobs (ninja; default: the number of CPUs).
- ``CUDA_HOME``: the toolkit; otherwise found from ``nvcc`` on ``PATH`` or ``/usr/local/cuda``.

The CPU extension ``sam3lt._cpu`` (``csrc/cpu/``: the ``cpu`` backend of ``sam3lt.ops``, e.g. the Winograd 3×3
convolution) needs only torch and a C++ compiler; it is built whenever torch is importable, unless
``SAM3LT_SKIP_CPU_BUILD=1``. Without it the ``cpu`` backend says why and ``auto`` runs the eager references.

Without a toolkit (and without ``SAM3LT_FORCE_CUDA_BUILD``) the install has no ``sam3lt._C`` and the ``cuda`` backend
of ``sam3lt.ops`` reports why it is unavailable. One line printed at build time says what is built; when an
install that builds code (a wheel, an editable install, build_ext) leaves the extension out for any reason but
``SAM3LT_SKIP_CUDA_BUILD``, that reason is also a warning, which pip shows (``pip install .``, ``-e .``) where it
hides the printed line.
"""
import glob
import os
import shutil
import sys
import warnings

from setuptools import setup

_HERE = os.path.dirname(os.path.abspath(__file__))
_DEFAULT_ARCHS = "8.0;9.0"
_BUILD_NOTE = "pure Python (no CUDA extension)"
_CMDCLASS = {}
# setup.py runs once per build-backend hook; these commands are the ones that build code (metadata hooks, sdist
# and --version do not), so the warning below comes once per install
_BUILD_COMMANDS = {"bdist_wheel", "editable_wheel", "build", "build_ext", "install", "develop"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home():
    """The CUDA toolkit root: $CUDA_HOME / $CUDA_PATH, else the parent of the ``nvcc`` on PATH (when it holds
    include/cuda_runtime.h: /usr/local/bin/nvcc may be a wrapper script), else /usr/local/cuda; None if none has nvcc."""
    def ok(root):
        return bool(root) and os.path.isfile(os.path.join(root, "bin", "nvcc")) and \
            os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))

    for var in ("CUDA_HOME", "CUDA_PATH"):
        root = os.environ.get(var)
        if root:
            return root if ok(root) else None  # an explicit but broken toolkit is an error, not a fallback
    nvcc = shutil.which("nvcc")
    candidates = []
    if nvcc:
        candidates += [os.path.dirname(os.path.dirname(nvcc)), os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    candidates.append("/usr/local/cuda")
    for root in candidates:
        if ok(root):
            return root
    return None


def _pip_cuda_includes():
    """Include folders of the pip-installed CUDA packages (nvidia/cu13/include, nvidia/*/include): torch's CUDA
    headers include cuBLAS/cuSPARSE headers that a minimal toolkit may lack."""
    dirs = []
    for base in sys.path:
        if base and os.path.isdir(os.path.join(base, "nvidia")):
            dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "include")))
            dirs += sorted(glob.glob(os.path.join(base, "nvidia", "*", "*", "include")))
    seen, out = set(), []
    for d in dirs:
        if os.path.isdir(d) and os.path.realpath(d) not in seen:
            seen.add(os.path.realpath(d))
            out.append(d)
    return out


def _cuda_extensions():
    """The CUDAExtension ``sam3lt._C`` (csrc/), built with ninja, or [] with the reason in ``_BUILD_NOTE``."""
    global _BUILD_NOTE
    force = _env_flag("SAM3LT_FORCE_CUDA_BUILD")

    def skip(reason):
        global _BUILD_NOTE
        if force:
            raise RuntimeError(f"sam3lt: SAM3LT_FORCE_CUDA_BUILD is set but the CUDA extension cannot be built: {reason}")
        _BUILD_NOTE = f"pure Python (no CUDA extension: {reason})"
        if _BUILD_COMMANDS.intersection(sys.argv[1:]):
            # a UserWarning from setup.py is what pip passes on (the print below needs pip -v); lineno 0: one line
            warnings.warn_explicit(f"sam3lt: installing without the CUDA extension sam3lt._C: {reason}; the 'cuda' "
                                   "backend will be unavailable (set SAM3LT_SKIP_CUDA_BUILD=1 to build pure Python "
                                   "on purpose)", UserWarning, filename=__file__, lineno=0)
        return []

    if _env_flag("SAM3LT_SKIP_CUDA_BUILD"):
        if force:
            raise RuntimeError("sam3lt: SAM3LT_SKIP_CUDA_BUILD and SAM3LT_FORCE_CUDA_BUILD are both set")
        _BUILD_NOTE = "pure Python (SAM3LT_SKIP_CUDA_BUILD is set)"
        return []
    try:
        import torch
    except ImportError:
        return skip("torch is not importable (install torch first and use pip --no-build-isolation)")
    if torch.version.cuda is None:
        return skip(f"torch {torch.__version__} is not a CUDA build")
    cuda_home = _find_cuda_home()
    if cuda_home is None:
        return skip("no CUDA toolkit found (set CUDA_HOME or put nvcc on PATH)")
    # torch.utils.cpp_extension reads CUDA_HOME when it is imported, and TORCH_CUDA_ARCH_LIST when it builds
    os.environ["CUDA_HOME"] = cuda_home
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", "").strip() or _DEFAULT_ARCHS
    os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    import torch.utils.cpp_extension as cpp

    cpp.CUDA_HOME = cuda_home  # in case it was imported before CUDA_HOME was set

    # the toolkit's own headers first: the pip packages' copies only fill in what a minimal toolkit lacks
    # (a pip cuda_runtime.h of another minor version must not shadow the one matching nvcc)
    includes = [os.path.join(_HERE, "csrc"), os.path.join(cuda_home, "include")] + _pip_cuda_includes()
    # build metadata for sam3lt/_ext.py, for ops.cpp only (the C++ compiler: nvcc would split the ',' list), as
    # bare tokens that ops.cpp stringizes (ninja runs the compilers through a shell)
    arch_tokens = ",".join(a for a in archs.replace(";", " ").replace(",", " ").split() if a)
    defines = [f"-DSAM3LT_TORCH_VERSION={torch.__version__}", f"-DSAM3LT_CUDA_ARCHS={arch_tokens}"]
    ext = cpp.CUDAExtension(
        name="sam3lt._C",
        # ops.cpp and one csrc/<family>.cu per op family: a new family's kernels are picked up by name
        sources=[os.path.relpath(f, _HERE)
                 for f in [os.path.join(_HERE, "csrc", "ops.cpp")] + sorted(glob.glob(os.path.join(_HERE, "csrc", "*.cu")))],
        include_dirs=includes,
        extra_compile_args={
            # no -std: BuildExtension adds the one this torch needs (C++17 or C++20; the sources take both)
            "cxx": ["-O3"] + defines,
            # no --use_fast_math: the element-wise kernels must round exactly as torch; the softmax uses
            # ex2.approx explicitly (csrc/common.h: fast_exp2)
            # --threads: the archs of one file compile in parallel (the attention files dominate the build)
            "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo", "--threads", str(len(arch_tokens.split(",")))],
        },
    )
    _CMDCLASS["build_ext"] = cpp.BuildExtension.with_options(use_ninja=True)
    _BUILD_NOTE = (f"the CUDA extension sam3lt._C (archs {archs}, CUDA {torch.version.cuda}, "
                   f"nvcc in {cuda_home}, torch {torch.__version__}, MAX_JOBS={os.environ.get('MAX_JOBS', 'all CPUs')})")
    return [ext]


def _cpu_extensions():
    """The CppExtension ``sam3lt._cpu`` (csrc/cpu/), or [] with the reason in ``_CPU_NOTE``."""
    global _CPU_NOTE
    if _env_flag("SAM3LT_SKIP_CPU_BUILD"):
        _CPU_NOTE = "no CPU extension (SAM3LT_SKIP_CPU_BUILD is set)"
        return []
    try:
        import torch
        import torch.utils.cpp_extension as cpp
    except ImportError:
        _CPU_NOTE = "no CPU extension (torch is not importable)"
        return []
    ext = cpp.CppExtension(
        name="sam3lt._cpu",
        sources=[os.path.relpath(f, _HERE) for f in sorted(glob.glob(os.path.join(_HERE, "csrc", "cpu", "*.cpp")))],
        # -fopenmp: at::parallel_for's OpenMP loop (libgomp is torch's, already loaded); the kernels pick their
        # vector width at load time (target_clones), so no -march
        extra_compile_args={"cxx": ["-O3", "-fopenmp", f"-DSAM3LT_TORCH_VERSION={torch.__version__}"]},
        extra_link_args=["-fopenmp"],
    )
    _CMDCLASS.setdefault("build_ext", cpp.BuildExtension.with_options(use_ninja=True))
    _CPU_NOTE = f"the CPU extension sam3lt._cpu (torch {torch.__version__})"
    return [ext]


_CPU_NOTE = "no CPU extension"
ext_modules = _cuda_extensions() + _cpu_extensions()
print(f"sam3lt: building {_BUILD_NOTE}; {_CPU_NOTE}")

setup(ext_modules=ext_modules, cmdclass=_CMDCLASS)
