"""CPU fast path vs HF: ``sam3lt.optimize(model)`` on the CPU against HF transformers' fp32 eager and sam3lt's fp32
eager, same weights, side by side in one process, and its accuracy against sam3lt fp32 eager (the fast path's rule:
mask IoU >= 0.99, scores within 1e-2).

    python bench/cpu_optimize.py [--image-size 336] [--vit-layers 8] [--reps 7] [--threads N] [--compile]
    ONEDNN_MAX_CPU_ISA=AVX2 python bench/cpu_optimize.py --name cpu_optimize_avx2   # a CPU without bf16 dot products

sam3lt runs as a user gets it (``auto``: the CPU kernels of ``sam3lt._cpu`` where they take the inputs, e.g. the
Winograd 3×3 convolutions); the accuracy reference is sam3lt on its eager references (``use_backend("eager")``).
Each rep calls HF, sam3lt eager and the fast path back to back (interleaved); medians of wall time and of process
CPU time (all threads; the steadier one on a shared machine, see bench/cpu_modules.py). Writes ``<name>.json`` and
``<name>.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cpu_models import add_args, interleaved, machine, setup, write  # noqa: E402

MIN_MASK_IOU, MAX_SCORE_DIFF = 0.99, 1e-2  # the fast path's accuracy rule (tests/test_fast.py, README)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, "cpu_optimize")
    parser.add_argument("--compile", action="store_true", help="sam3lt.optimize(..., compile=True)")
    args = parser.parse_args(argv)

    import sam3lt
    from sam3lt.fast import agreement

    hf, ours, config, kwargs = setup(args)
    start = time.perf_counter()
    fast = sam3lt.optimize(copy.deepcopy(ours), compile=args.compile)
    out = fast(**kwargs)  # first call: packs the weights (and compiles)
    setup_s = time.perf_counter() - start
    with sam3lt.use_backend("eager"):
        ref = ours(**kwargs)
    acc = agreement(out, ref)
    runners = {"hf_fp32_eager": lambda: hf(**kwargs), "sam3lt_fp32_eager": lambda: ours(**kwargs),
               "sam3lt_optimize": lambda: fast(**kwargs)}
    wall, cpu = interleaved(runners, args.reps)
    med = {k: statistics.median(v) * 1e3 for k, v in wall.items()}
    cmed = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    ok = acc["mask_iou"] >= MIN_MASK_IOU and acc["score_max_diff"] <= MAX_SCORE_DIFF
    rows = [("HF fp32 eager", "hf_fp32_eager"), ("sam3lt fp32 eager", "sam3lt_fp32_eager"),
            (f"sam3lt.optimize ({fast.cpu_plan.precision})", "sam3lt_optimize")]
    md = [f"CPU, {args.image_size}² image, {args.vit_layers} ViT layers, one 16-token prompt, {torch.get_num_threads()} "
          f"threads, median of {args.reps} interleaved reps; {machine()}; 1-min load average at the end "
          f"{os.getloadavg()[0]:.1f}.\n", f"Plan: {fast.cpu_plan.describe()}. Setup + first call {setup_s:.1f} s.\n",
          "| model | wall (ms) | HF / this, wall | CPU, all threads (ms) | HF / this, CPU |", "|---|---|---|---|---|"]
    for label, key in rows:
        md.append(f"| {label} | {med[key]:.0f} | {med['hf_fp32_eager'] / med[key]:.2f}× | {cmed[key]:.0f} | "
                  f"{cmed['hf_fp32_eager'] / cmed[key]:.2f}× |")
    md.append(f"\nAccuracy of the fast path vs sam3lt fp32 eager (eager references): mask IoU {acc['mask_iou']:.4f}, max score diff "
              f"{acc['score_max_diff']:.1e}, max box diff {acc['box_max_diff']:.1e}: "
              f"{'within' if ok else 'OUTSIDE'} the rule (IoU >= {MIN_MASK_IOU}, scores within {MAX_SCORE_DIFF}).\n")
    text = "\n".join(md)
    result = {"benchmark": "cpu_optimize", "machine": machine(), "settings": vars(args),
              "plan": fast.cpu_plan.describe(),
              "median_wall_ms": med, "median_cpu_ms": cmed,
              "all_wall_s": wall, "all_cpu_s": cpu, "accuracy": acc, "accuracy_ok": ok, "setup_s": setup_s,
              "load_average_1min": os.getloadavg()[0]}
    return write(args, result, text)


if __name__ == "__main__":
    main()
