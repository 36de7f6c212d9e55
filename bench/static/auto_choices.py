"""What ``auto`` runs for the S0 model on an untuned H200, per op, with the rule behind each (ops.explain).

    python -m bench.static.auto_choices [--out bench/results/static/auto-h200.md]

No GPU: fake CUDA tensors stand in, the device reports itself as an H200 with sam3lt._C's sm_90 code usable, and
the on-disk cache of measured choices points at an empty folder (untuned). One bf16 forward at 1008² with one
image and 4 prompts; every distinct op call is explained.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
import tempfile

import torch

from .shapes import IMAGE_SIZE, SEQ_LEN, meta, s0_model

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "results", "static", "auto-h200.md")


def explain_model(images: int = 1, prompts: int = 4) -> list[dict]:
    import sam3lt
    import sam3lt.ops as ops
    from sam3lt import _ext
    from sam3lt.model.common import clear_constant_caches
    from sam3lt.ops import _backend
    from sam3lt.testing import fake_cuda
    from torch._subclasses.fake_tensor import FakeTensorMode

    disk = sys.modules["sam3lt.ops.autotune"]
    saved = (disk.device_identity, dict(_ext._DEVICE_REASONS), _backend.select, os.environ.get(disk.ENV))
    rows: dict[tuple, dict] = {}

    def explaining_select(op, backend, *args):
        key = (op, meta(args))
        if key not in rows:
            info = ops.explain(op, *args)
            rows[key] = {"op": op, "runs": next(k for k, v in info.items() if v == "runs"), "rule": info.rule,
                         "others": {k: v for k, v in info.items() if v != "runs"}, "calls": 0}
        rows[key]["calls"] += 1
        return saved[2](op, backend, *args)

    with tempfile.TemporaryDirectory() as empty:
        os.environ[disk.ENV] = empty  # untuned: no measured choice anywhere
        disk.device_identity = lambda d: disk.identity("NVIDIA H200", (9, 0)) if d.type == "cuda" else None
        _ext._DEVICE_REASONS.update({0: None})  # as on an H200: the extension carries sm_90 code
        _backend.select = explaining_select
        ops.clear_tuning()
        clear_constant_caches()
        mode = FakeTensorMode()
        try:
            model = fake_cuda(s0_model().to(torch.bfloat16).fold_batchnorm(), mode)
            model.validate_inputs = False
            with mode, torch.inference_mode():
                model(pixel_values=torch.empty(images, 3, IMAGE_SIZE, IMAGE_SIZE, device="cuda", dtype=torch.bfloat16),
                      input_ids=torch.ones(prompts, SEQ_LEN, dtype=torch.long, device="cuda"))
        finally:
            disk.device_identity, _backend.select = saved[0], saved[2]
            _ext._DEVICE_REASONS.clear()
            _ext._DEVICE_REASONS.update(saved[1])
            if saved[3] is None:
                os.environ.pop(disk.ENV, None)
            else:
                os.environ[disk.ENV] = saved[3]
            ops.clear_tuning()
            clear_constant_caches()
    return list(rows.values())


def markdown(rows: list[dict]) -> str:
    by_op: dict[tuple, list[dict]] = collections.defaultdict(list)
    for r in rows:
        by_op[(r["op"], r["runs"], r["rule"])].append(r)
    lines = ["# `auto` on an untuned H200 (S0, bf16, 1008², 1 image × 4 prompts)", "",
             "`python -m bench.static.auto_choices`: fake CUDA tensors, the device reported as an H200, no measured "
             "choice (empty cache). ViT reduced to one windowed and one global layer (the others repeat them).", "",
             "| op | distinct shapes | calls | runs | rule (ops.explain) |", "|---|---|---|---|---|"]
    for (op, runs, rule), rs in sorted(by_op.items()):
        lines.append(f"| {op} | {len(rs)} | {sum(r['calls'] for r in rs)} | {runs} | {rule} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.static.auto_choices", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=OUT)
    args = parser.parse_args(argv)
    text = markdown(explain_model())
    with open(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
