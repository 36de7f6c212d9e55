"""CUDA kernels (every ``csrc/*.cu``, found by glob) compiled with ``nvcc -cubin -arch=sm_XX -Xptxas -v``.

Each instantiation the launchers reach gets its ptxas report and SASS counts. The grids at the model's shapes
come from the recorded op calls through :data:`LAUNCH_MODELS`, which mirror the host launchers (csrc); a model
that no longer finds its kernel or its constants in the sources reports the grid as unknown rather than guess.
"""
from __future__ import annotations

import concurrent.futures
import glob
import math
import os
import re
import shutil
import subprocess
import tempfile

from . import metrics

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "csrc")
CTYPES = {"bfloat16": "__nv_bfloat16", "float16": "__half", "float32": "float"}


def nvcc_path() -> str:
    for cand in (os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin", "nvcc"), shutil.which("nvcc")):
        if cand and os.path.isfile(cand):
            return cand
    raise FileNotFoundError("nvcc not found (set CUDA_HOME)")


def _compile(src: str, cc: int, out_dir: str, nvcc: str) -> tuple[str, str]:
    cubin = os.path.join(out_dir, os.path.basename(src) + f".sm{cc}.cubin")
    cmd = [nvcc, "-cubin", f"-arch=sm_{cc}", "-O3", "-std=c++17", "-Xptxas", "-v", "-I", CSRC, "-o", cubin, src]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"nvcc failed on {src}:\n{proc.stderr[-3000:]}")
    return cubin, proc.stderr + proc.stdout


def demangle(names: list[str]) -> dict[str, str]:
    if not names or not shutil.which("c++filt"):
        return {n: n for n in names}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def source_constants(sources: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """``constexpr int kName = N`` values and each kernel's ``__launch_bounds__`` thread count."""
    text = "\n".join(open(s, encoding="utf-8").read() for s in sources)
    consts = {m.group(1): int(m.group(2)) for m in re.finditer(r"constexpr\s+int\s+(\w+)\s*=\s*(\d+)\s*;", text)}
    bounds = {}
    for m in re.finditer(r"__launch_bounds__\((\w+)(?:\s*,[^)]*)?\)\s+(\w+)\s*\(", text):
        value = consts.get(m.group(1), int(m.group(1)) if m.group(1).isdigit() else None)
        if value:
            bounds[m.group(2)] = value
    return consts, bounds


def compile_all(cc: int, cuobjdump: str, jobs: int = 2) -> list[dict]:
    """One entry per compiled kernel function: file, name, demangled name, ptxas report, SASS counts, threads."""
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cu")))
    if not sources:
        raise FileNotFoundError(f"no CUDA sources in {CSRC}")
    nvcc = nvcc_path()
    _, bounds = source_constants(sources + sorted(glob.glob(os.path.join(CSRC, "*.cuh"))))
    entries = []
    with tempfile.TemporaryDirectory() as tmp, concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for src, (cubin, log) in zip(sources, pool.map(lambda s: _compile(s, cc, tmp, nvcc), sources)):
            ptxas = metrics.parse_ptxas(log)
            sass = metrics.sass_of(cubin, cuobjdump)
            names = demangle(list(ptxas))
            for name, info in ptxas.items():
                m = re.search(r"(\w+)\s*[<(]", names[name].removeprefix("void "))
                base = m.group(1) if m else name
                entries.append({"file": os.path.basename(src), "mangled": name, "kernel": names[name],
                                "base": base, "threads": bounds.get(base), **info,
                                "sass": sass.get(name, {})})
    return entries


# ---------------------------------------------------------------- launch models (mirror the host launchers)

def _attn_smem(dtype: str, d: int, bm: int, bn: int) -> int:
    """AttnSmem<T, D>::bytes (csrc/flash_attention.cuh): Q and two K and two V tiles (rows padded by 16 bytes),
    plus an fp32 P tile for fp32 inputs."""
    size = 4 if dtype == "float32" else 2
    ld = d + 16 // size
    return size * (bm * ld + 4 * bn * ld) + (4 * bm * (bn + 4) if size == 4 else 0)


def _attn_width(d: int) -> int:
    return 16 if d <= 16 else 32 if d <= 32 else 64 if d <= 64 else 128


def _window(args, c, sms):
    (_, (b, h, w, c3), _, dtype), heads, window = args[0], args[3], args[4]
    d = c3 // 3 // heads
    wh, ww = (window, window) if window > 0 else (h, w)
    blocks = b * heads * math.ceil(h / wh) * math.ceil(w / ww) * math.ceil(wh * ww / c["kBM"])
    width = _attn_width(d)
    # the RoPE pass first (launch_window_attention): q/k of every token, plus pad_value's per window position
    padded = len(args) > 5 and args[5] is not None and (h % wh or w % ww)
    chunks = (b * h * w + (wh * ww if padded else 0)) * 2 * (c3 // 3) // 8
    return [(f"rope_qk_kernel<{CTYPES[dtype]}>", (math.ceil(chunks / c["kRopeThreads"]),), 0, None),
            (f"attention_kernel<{CTYPES[dtype]}, {width}, (sam3lt::AttnMode)0, false>", (blocks,),
             _attn_smem(dtype, width, c["kBM"], c["kBN"]), d)]


def _splits(ctas: int, lk: int, bn: int, sms: int) -> int:
    """plan_splits (csrc/cross_attention.h): keys split across grid.y to reach ~2 CTAs per SM, >= 8 tiles each."""
    tiles = math.ceil(lk / bn)
    want = min(math.ceil(2 * sms / ctas), tiles // 8, 16)
    return 1 if want <= 1 else math.ceil(tiles / math.ceil(tiles / want))


def _generic(args, c, sms, mode=1):
    """mode (csrc/params.h AttnMode): 1 kGeneric (masked_attention), 2 kBoxBias (box_bias_attention)."""
    _, (b, heads, lq, d), _, dtype = args[0]
    lk = args[1][1][2]
    width = _attn_width(d)
    ctas = b * heads * math.ceil(lq / c["kBM"])
    splits = _splits(ctas, lk, c["kBN"], sms)
    smem = _attn_smem(dtype, width, c["kBM"], c["kBN"])
    split = "true" if splits > 1 else "false"
    out = [(f"attention_kernel<{CTYPES[dtype]}, {width}, (sam3lt::AttnMode){mode}, {split}>", (ctas, splits), smem, d)]
    if splits > 1:  # the merge of the splits' partial outputs
        out.append((f"merge_splits_kernel<{CTYPES[dtype]}>", (math.ceil(b * heads * lq * d / 256),), 0, None))
    return out


def _taps(k):
    return k if k in (3, 5, 7, 9, 11) else 0


def _repmixer(args, c, sms):
    _, (b, length, ch), _, dtype = args[0]
    return [(f"repmixer_dwconv_kernel<{CTYPES[dtype]}, {_taps(args[1][1][-1])}>",
             (math.ceil(b * length * ch / c["kRepmixerThreads"]),), 0, None)]


def _repmixer_block(args, c, sms):  # the cuda backend runs the pair as two repmixer_dwconv launches
    return _repmixer((args[0], args[1]), c, sms) + _repmixer((args[0], args[3]), c, sms)


def _upsample(args, c, sms):
    _, shape, _, dtype = args[1]
    return [(f"upsample_nearest_add_kernel<{CTYPES[dtype]}>", (math.ceil(math.prod(shape) / c["kUpsampleThreads"]),),
             0, None)]


def _binary(args, c, sms):
    _, shape, _, dtype = args[0]
    total = shape[0] * args[1][0] * args[1][1]
    return [(f"masks_to_binary_kernel<{CTYPES[dtype]}>", (math.ceil(total / c["kUpsampleThreads"]),), 0, None)]


# op -> (constants it needs from the sources, model)
LAUNCH_MODELS = {
    "window_attention": (("kBM", "kBN", "kRopeThreads"), _window),
    "box_bias_attention": (("kBM", "kBN"), lambda args, c, sms: _generic(args, c, sms, mode=2)),
    "masked_attention": (("kBM", "kBN"), _generic),
    "repmixer_dwconv": (("kRepmixerThreads",), _repmixer),
    "repmixer_block_dwconv": (("kRepmixerThreads",), _repmixer_block),
    "upsample_nearest_add": (("kUpsampleThreads",), _upsample),
    "masks_to_binary": (("kUpsampleThreads",), _binary),
}


def model_launches(ops: list[dict], sms: int) -> list[dict]:
    """(kernel instantiation, grid, dynamic smem, head dim) per recorded op call that has a CUDA kernel, on a card
    of ``sms`` SMs."""
    sources = sorted(glob.glob(os.path.join(CSRC, "*.cu"))) + sorted(glob.glob(os.path.join(CSRC, "*.cuh")))
    consts, _ = source_constants(sources)
    out = []
    for call in ops:
        model = LAUNCH_MODELS.get(call["op"])
        if model is None:
            continue
        needed, fn = model
        missing = [n for n in needed if n not in consts]
        if missing:
            out.append({"op": call["op"], "kernel": None, "note": f"constants {missing} not found in csrc/"})
            continue
        for kernel, grid, smem, head_dim in fn(call["args"], consts, sms):
            out.append({"op": call["op"], "kernel": kernel, "grid": list(grid), "ctas": math.prod(grid),
                        "dynamic_smem": smem, "head_dim": head_dim,
                        "scenarios": sorted(call["scenarios"])})
    return out
