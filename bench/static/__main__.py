"""python -m bench.static [--arch 90 [80]] [--quick] [--out DIR]: the static audit (see bench/static/__init__.py).

Writes <out>/sm<arch>.json and <out>/sm<arch>.md per arch; exit 1 on a new violation (not in allowlist.json).
Triton's cache goes to a temporary folder removed at exit: nothing is reused across runs.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.pop("TRITON_INTERPRET", None)  # before triton's first import: the interpreter compiles nothing
_CACHE = tempfile.mkdtemp(prefix="sam3lt-static-")
os.environ["TRITON_CACHE_DIR"] = _CACHE

from . import arch as arch_mod  # noqa: E402
from . import cuda_audit, report, shapes, triton_audit  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "bench", "results", "static")
QUICK_SCENARIOS = ((1, 4),)
QUICK_KERNELS = ("_attn_kernel", "_window_attn_kernel")


def _versions() -> dict:
    import torch
    import triton

    nvcc = subprocess.run([cuda_audit.nvcc_path(), "--version"], capture_output=True, text=True).stdout
    release = next((line.split("release")[-1].strip() for line in nvcc.splitlines() if "release" in line), "?")
    return {"torch": torch.__version__, "triton": triton.__version__, "nvcc": release}


def _commit() -> str:
    proc = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=ROOT)
    return proc.stdout.strip() or "unknown"


def run_arch(cc: int, rec, quick: bool, allowlist: list[dict], with_cuda: bool, smem_limit: int | None = None) -> dict:
    import dataclasses

    import triton

    arch = arch_mod.get(cc)
    if smem_limit is not None:
        arch = dataclasses.replace(arch, smem_per_block=smem_limit)
    triton_audit.install_driver(cc)
    for kernel in rec.kernels.values():  # a JIT function keeps its first target per device: start afresh
        kernel.device_caches.clear()
    start = time.perf_counter()
    trows, binaries = triton_audit.audit(rec, QUICK_KERNELS if quick else None)
    rows = report.triton_rows(arch, trows, binaries)
    t_triton = time.perf_counter() - start
    entries, notes = [], []
    if with_cuda:
        entries = cuda_audit.compile_all(cc, triton.knobs.nvidia.cuobjdump.path)
        crows, notes = report.cuda_rows(arch, entries, cuda_audit.model_launches(list(rec.ops.values()), arch.sms))
        rows += crows
    if not quick:
        notes += [f"{name}: a Triton kernel of sam3lt.kernels that nothing launched here (add it to "
                  f"bench/static/shapes.py)" for name in sorted(set(shapes.all_kernels()) - set(rec.kernels))]
    found = report.violations(arch, rows)
    return {"arch": cc, "card": arch.card, "versions": _versions(), "commit": _commit(), "quick": quick,
            "seconds": {"triton": round(t_triton, 1), "cuda": round(time.perf_counter() - start - t_triton, 1)},
            "binaries": len(binaries), "rows": rows, "cuda_instantiations": entries, "notes": notes,
            "violations": report.check(found, allowlist, cc)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities (90, 80)")
    parser.add_argument("--quick", action="store_true", help="one scenario, the attention kernels only (tests)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the csrc/*.cu kernels")
    parser.add_argument("--out", default=OUT, help="folder for sm<arch>.json / .md")
    parser.add_argument("--allowlist", default=report.ALLOWLIST, help="known violations with reasons")
    parser.add_argument("--smem-limit", type=int, default=None,
                        help="pretend blocks may use at most this many bytes of shared memory (tests: a sure "
                             "launch-limit violation)")
    args = parser.parse_args(argv)
    for cc in args.arch:
        try:
            arch_mod.get(cc)  # unknown arch: a clear error before minutes of work
        except ValueError as exc:
            parser.error(str(exc))
    allowlist = report.load_allowlist(args.allowlist)
    if len(args.arch) > 1:  # one process per arch, in parallel: each is single-threaded compiler work
        rest = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.isdigit() and a != "--arch"]
        procs = [subprocess.Popen([sys.executable, "-m", "bench.static", "--arch", str(cc), *rest],
                                  cwd=ROOT) for cc in args.arch]
        return max(p.wait() for p in procs)
    start = time.perf_counter()
    try:
        triton_audit.install_driver(args.arch[0])
        rec = shapes.record_model(arch_mod.get(args.arch[0]), QUICK_SCENARIOS if args.quick else shapes.SCENARIOS)
        if not args.quick:
            shapes.record_extras(rec)
        t_record = time.perf_counter() - start
        os.makedirs(args.out, exist_ok=True)
        failed = False
        for cc in args.arch:
            rep = run_arch(cc, rec, args.quick, allowlist, not args.no_cuda, args.smem_limit)
            rep["seconds"]["record"] = round(t_record, 1)
            with open(os.path.join(args.out, f"sm{cc}.json"), "w", encoding="utf-8") as f:
                json.dump(rep, f, indent=1, default=sorted)
            with open(os.path.join(args.out, f"sm{cc}.md"), "w", encoding="utf-8") as f:
                f.write(report.markdown(rep))
            v = rep["violations"]
            print(f"sm_{cc}: {len(rep['rows'])} launches, {rep['binaries']} Triton binaries, "
                  f"{len(rep['cuda_instantiations'])} CUDA kernels; violations: {len(v['new'])} new, "
                  f"{len(v['allowed'])} allowlisted, {len(v['stale'])} stale; {rep['seconds']}")
            for x in v["new"]:
                print(f"  NEW {x['kind']}: {x['backend']} {x['kernel']} {x['config']}: {x['detail']} "
                      f"(scenarios {', '.join(x['scenarios'])})")
            failed |= bool(v["new"])
        print(f"total {time.perf_counter() - start:.0f} s; results in {args.out}")
        return 1 if failed else 0
    finally:
        shutil.rmtree(_CACHE, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
