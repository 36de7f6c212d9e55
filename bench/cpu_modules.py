"""Per-module CPU breakdown: sam3lt eager vs HF transformers' Sam3LiteTextModel, same weights, fp32, side by side.

sam3lt runs twice: as a user gets it (``auto``: the CPU kernels of ``sam3lt._cpu`` where they take the inputs,
e.g. the Winograd 3×3 convolutions; ``sam3lt.ops.explain`` names them), and on its eager references alone
(``use_backend("eager")``: torch's kernels, as HF). Neither is ``sam3lt.optimize`` (bench/cpu_optimize.py).

    python bench/cpu_modules.py [--image-size 336] [--vit-layers 8] [--reps 7] [--threads N] [--out DIR] [--name STEM]

Each rep runs one full forward of HF then the sam3lt ones (interleaved, so machine noise hits both alike) and
times every module from forward hooks inside that forward: the figures add up to the real call, with its
caches and allocator state, not to a module run alone. Rows: the vision trunk (ViT + FPN neck), its patch/
position embeddings, the ViT layers (the trunk's backbone minus its embeddings), the neck, the text encoder (+
projection), the DETR encoder, the DETR decoder, the mask decoder (+ dot-product scoring), the whole model.

Two clocks per module: wall time and process CPU time (all threads). On a shared 2-core machine another
process can take a core in the middle of a GEMM, which stalls both OpenMP threads at the next barrier: wall
time then measures the neighbour, CPU time (mostly) does not. Medians over ``--reps``; the ratio column is HF /
sam3lt (> 1: sam3lt faster). Writes ``<name>.json`` and ``<name>.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cpu_models import add_args, machine, setup, write  # noqa: E402

# (row, module path) both models share; "ViT layers" is derived (backbone − embeddings)
MODULES = (("vision trunk (ViT + neck)", "vision_encoder"), ("ViT backbone", "vision_encoder.backbone"),
           ("ViT embeddings", "vision_encoder.backbone.embeddings"), ("FPN neck", "vision_encoder.neck"),
           ("text encoder", "text_encoder"), ("text projection", "text_projection"),
           ("DETR encoder", "detr_encoder"), ("DETR decoder", "detr_decoder"), ("mask decoder", "mask_decoder"),
           ("scoring", "dot_product_scoring"))
ROWS = ("vision trunk (ViT + neck)", "ViT embeddings", "ViT layers", "FPN neck", "text encoder (+ projection)",
        "DETR encoder", "DETR decoder", "mask decoder (+ scoring)", "whole model")


class ModuleClock:
    """Inclusive wall / CPU time of named submodules in one forward, from forward (pre-)hooks."""

    def __init__(self, model: torch.nn.Module):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._open: dict[str, tuple[float, float]] = {}
        self.handles = []
        for row, path in MODULES:
            module = model.get_submodule(path)
            self.handles.append(module.register_forward_pre_hook(self._start(row)))
            self.handles.append(module.register_forward_hook(self._stop(row)))

    def _start(self, row):
        def hook(module, args):
            self._open[row] = (time.perf_counter(), time.process_time())
        return hook

    def _stop(self, row):
        def hook(module, args, out):
            w0, c0 = self._open.pop(row)
            self.wall[row] = self.wall.get(row, 0.0) + time.perf_counter() - w0
            self.cpu[row] = self.cpu.get(row, 0.0) + time.process_time() - c0
        return hook

    def run(self, fn) -> tuple[dict, dict]:
        self.wall, self.cpu = {}, {}
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        self.wall["whole model"], self.cpu["whole model"] = time.perf_counter() - w0, time.process_time() - c0
        return _rows(self.wall), _rows(self.cpu)


def _rows(t: dict) -> dict:
    g = lambda k: t.get(k, 0.0)  # noqa: E731
    return {"vision trunk (ViT + neck)": g("vision trunk (ViT + neck)"), "ViT embeddings": g("ViT embeddings"),
            "ViT layers": g("ViT backbone") - g("ViT embeddings"), "FPN neck": g("FPN neck"),
            "text encoder (+ projection)": g("text encoder") + g("text projection"),
            "DETR encoder": g("DETR encoder"), "DETR decoder": g("DETR decoder"),
            "mask decoder (+ scoring)": g("mask decoder") + g("scoring"), "whole model": g("whole model")}


def measure(runners: dict, reps: int) -> dict:
    """runners: name -> (model whose modules are clocked, call). Returns {name: {"wall"|"cpu": {row: [s, ...]}}}."""
    clocks = {name: ModuleClock(model) for name, (model, _) in runners.items()}
    out = {name: {"wall": {r: [] for r in ROWS}, "cpu": {r: [] for r in ROWS}, "minflt": []} for name in runners}
    for name, (_, fn) in runners.items():
        fn()  # warm-up (lazy caches, oneDNN primitives)
    for _ in range(reps):
        for name, (_, fn) in runners.items():
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
            wall, cpu = clocks[name].run(fn)
            out[name]["minflt"].append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
            for r in ROWS:
                out[name]["wall"][r].append(wall[r])
                out[name]["cpu"][r].append(cpu[r])
    return out


def table(res: dict, a: str = "hf", b: str = "sam3lt", c: str = "sam3lt_eager") -> str:
    med = lambda xs: statistics.median(xs) * 1e3  # noqa: E731
    lines = ["| module | HF wall (ms) | sam3lt wall (ms) | HF / sam3lt wall | HF CPU (ms) | sam3lt CPU (ms) | "
             "HF / sam3lt CPU | sam3lt, eager references: wall (ms) | HF / that |", "|---|---|---|---|---|---|---|---|---|"]
    for r in ROWS:
        hw, ow, hc, oc = med(res[a]["wall"][r]), med(res[b]["wall"][r]), med(res[a]["cpu"][r]), med(res[b]["cpu"][r])
        ew = med(res[c]["wall"][r])
        bold = "**" if r == "whole model" else ""
        lines.append(f"| {bold}{r}{bold} | {hw:.1f} | {ow:.1f} | {bold}{hw / ow:.2f}×{bold} | {hc:.1f} | {oc:.1f} | "
                     f"{bold}{hc / oc:.2f}×{bold} | {ew:.1f} | {hw / ew:.2f}× |")
    paired = {k: statistics.median(h / o for h, o in zip(res[a]["wall"]["whole model"], res[k]["wall"]["whole model"]))
              for k in (b, c)}
    lines.append(f"\nMedian of the per-rep whole-model wall ratios: **{paired[b]:.2f}×** (eager references "
                 f"{paired[c]:.2f}×). Page faults per forward (median): HF {statistics.median(res[a]['minflt']):.0f}, "
                 f"sam3lt {statistics.median(res[b]['minflt']):.0f}.")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_args(parser, "cpu_modules")
    args = parser.parse_args(argv)

    import sam3lt

    hf, ours, config, kwargs = setup(args)
    refs = copy.deepcopy(ours)  # its own hooks

    def eager_refs():
        with sam3lt.use_backend("eager"):
            return refs(**kwargs)

    res = measure({"hf": (hf, lambda: hf(**kwargs)), "sam3lt": (ours, lambda: ours(**kwargs)),
                   "sam3lt_eager": (refs, eager_refs)}, args.reps)
    conv = ours.vision_encoder.neck.fpn_layers[0].proj2
    x = torch.zeros(1, conv.in_channels, 8, 8)
    with torch.no_grad():
        backends = f"auto ran conv3x3 on {sam3lt.ops.select('conv3x3', None, x, conv.weight, conv.bias, 1)[0]}"
    head = (f"CPU per-module breakdown, fp32 eager, {args.image_size}² image, {args.vit_layers} ViT layers "
            f"({len(config.vision_config.backbone_config.global_attn_indexes)} global), one 16-token prompt (32 "
            f"padded), {torch.get_num_threads()} threads, median of {args.reps}; {machine()}; {backends}; 1-min "
            f"load average at the end {os.getloadavg()[0]:.1f}.\n\n")
    md = head + table(res)
    result = {"benchmark": "cpu_modules", "machine": machine(), "python": sys.version.split()[0],
              "torch": torch.__version__, "platform": platform.platform(), "threads": torch.get_num_threads(),
              "settings": vars(args), "backends": backends, "seconds": res, "load_average_1min": os.getloadavg()[0]}
    return write(args, result, md)


if __name__ == "__main__":
    main()
