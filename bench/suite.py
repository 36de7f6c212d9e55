"""The benchmark suite's entry point: ``sam3lt bench`` / ``python -m bench``.

Sections (``--sections``; all by default), each written to ``<out>/<section>.json`` after every result so that
a run stopped part-way (a timeout, a crash) keeps what it measured:

- ``fast``: the fast path (``sam3lt.optimize``: bf16, static buffers, CUDA graphs on a GPU): its breakdown (full
  forward, vision / text / heads stages, an extra prompt on a cached image, batch-8 throughput, peak memory,
  agreement with fp32 eager) and its end-to-end rows (``bench/e2e.py``). Runs first: it is what issue 6 measures.
- ``ops``: device ceilings, then every op family (``bench/ops``) per backend and baseline.
- ``layers``: per-component times, sam3lt per backend and HF eager (``bench/layers.py``).
- ``e2e``: latency, throughput, prompts per image, peak memory (``bench/e2e.py``).
- ``compile``: HF ``torch.compile``, whole model then per component (GPU only; ``bench/compiled.py``).
- ``fast-compile``: the fast path with ``compile=True`` (GPU; on the CPU only with ``--compile-on-cpu``).

Then ``results.json``, ``bench.md``, ``summary.md``, ``goals.md`` (issue 6's goals, ``bench/goals.py``) and
``speedups.png`` are written from every section file
in the folder (``--report-only`` does only that, e.g. after sections ran as separate processes).

On a GPU the real model shapes run (the released S0 model on 1008² images); on the CPU reduced sizes, which
the output, the JSON (``run.size``, ``settings.size_note``) and the tables say.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
ALL_SECTIONS = ("fast", "ops", "layers", "e2e", "compile", "fast-compile")  # the order they run in
SIZE_NOTES = {
    "full": "real model shapes: the released S0 model on 1008² images; ops at the model's shapes",
    "cpu": "reduced for the CPU: full-width model with an 8-layer ViT on 336² images (DETR over 24² tokens); ops "
           "at half the model's grid (9 windows of 144 tokens, 1296 global tokens, 36² DETR keys, masks 144² → "
           "540×960)",
    "tiny": "reduced for the CPU (--quick): Sam3LiteTextConfig.tiny() (280² images, 3-layer ViT of width 64, "
            "12 queries); ops at small shapes (4 windows of 64 tokens, 256 global tokens, 16² DETR keys, "
            "masks 72² → 270×480)",
}


def _csv(text: str) -> list[str]:
    return [t.strip() for t in str(text).split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    return [int(t) for t in _csv(text)]


def _families(text: str) -> list[str]:
    """--families: names of ``bench/ops`` FAMILIES (the one list), comma-separated; an unknown one is refused."""
    from .ops import ALIASES, FAMILIES

    names = [ALIASES.get(name, name) for name in _csv(text)]
    unknown = [name for name in names if name not in FAMILIES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown op family {', '.join(unknown) or repr(text)}; expected some of "
                                         f"{','.join(FAMILIES)}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .ops import FAMILIES

    p.add_argument("--quick", action="store_true",
                   help="a small run: on the CPU the tiny model and small op shapes; on a GPU the real shapes with "
                        "fewer repetitions, fp32 end to end at batch 1 only, HF compile in bf16 only")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="output folder (default: bench/results/<run name>)")
    p.add_argument("--name", default=None, help="run name (default: cpu-quick, cpu, <gpu>-quick or <gpu>)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="default: cuda when available")
    p.add_argument("--size", default="auto", choices=["auto", "full", "cpu", "tiny"],
                   help="size class (default: full on GPU, cpu on CPU, tiny on CPU with --quick)")
    p.add_argument("--sections", default=",".join(ALL_SECTIONS), type=_csv,
                   help=f"comma-separated subset of {','.join(ALL_SECTIONS)} (default: all)")
    p.add_argument("--families", default=None, type=_families,
                   help=f"comma-separated op families for the ops section, some of {', '.join(FAMILIES)} "
                        f"(default: all)")
    p.add_argument("--dtypes", default="float32,bfloat16", type=_csv, help="default: float32,bfloat16")
    p.add_argument("--backends", default="eager,triton,cuda", type=_csv,
                   help="sam3lt backends (eager, triton, cuda, auto); default: eager,triton,cuda")
    p.add_argument("--batches", default=None, type=_ints, help="images per call (default 1,4,8; CPU: 1,4)")
    p.add_argument("--prompts", default=None, type=_ints,
                   help="prompts per image (default 1,4,16,64; CPU without --quick: 1,4,16)")
    p.add_argument("--text", default="s0", help="text encoder preset: s0, s1 or l (default s0)")
    p.add_argument("--reps", type=int, default=None, help="timed calls per case (default 10; --quick 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per case (default 3)")
    p.add_argument("--case-budget-s", type=float, default=None,
                   help="seconds per timed case; fewer repetitions when a call is slow (at least 3)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="stop starting new cases after this many seconds (the rest are recorded as skipped)")
    p.add_argument("--compile-budget-s", type=float, default=None,
                   help="seconds of HF torch.compile work before the compile section stops (default 600; "
                        "--quick 240)")
    p.add_argument("--compile-on-cpu", action="store_true",
                   help="run the fast-compile section on the CPU too (it is skipped there by default: compiling "
                        "takes minutes)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--plot", default="auto", choices=["auto", "matplotlib", "pillow"],
                   help="PNG renderer (default: matplotlib if installed, else Pillow)")
    p.add_argument("--report-only", action="store_true",
                   help="only merge the section files already in --out and write the JSON/markdown/PNG")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


class SectionWriter:
    """``<out>/<section>.json``, rewritten (atomically) after every record."""

    def __init__(self, folder: Path, section: str, header: dict):
        self.path = folder / f"{section}.json"
        self.start = time.time()
        self.data = {**header, "section": section, "complete": False, "records": []}
        self.save()

    def record(self, rec: dict) -> None:
        self.data["records"].append(rec)
        self.save()

    def set(self, key: str, value) -> None:
        self.data[key] = value
        self.save()

    def finish(self) -> None:
        from .common import loadavg

        self.data["complete"] = True
        self.data["load_average_at_end"] = loadavg()
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = time.time() - self.start
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str) + "\n")
        os.replace(tmp, self.path)


def _slug(text: str) -> str:
    for word in ("H200", "H100", "A100", "L40S", "L4", "B200", "GH200"):
        if word.lower() in text.lower():
            return word.lower()
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:24] or "gpu"


def _progress(total: int, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency of sam3lt; stay quiet without it
        return None
    return tqdm(total=total, desc="sam3lt bench", unit="step", file=sys.stderr, disable=disable,
                dynamic_ncols=True, leave=True)


def run(args: argparse.Namespace) -> dict:
    import torch

    from . import report
    from .common import Context, Timer, environment, git_info, measure_ceilings

    unknown = [s for s in args.sections if s not in ALL_SECTIONS]
    if unknown:
        raise SystemExit(f"--sections: unknown section(s) {unknown}; expected some of {', '.join(ALL_SECTIONS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device: cuda was asked for but torch sees no CUDA device")
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
                          else "cpu")
    cuda = device.type == "cuda"
    size = args.size if args.size != "auto" else ("full" if cuda else ("tiny" if args.quick else "cpu"))
    if args.name:
        name = args.name
    else:
        base = _slug(torch.cuda.get_device_name(device)) if cuda else "cpu"
        name = f"{base}-quick" if args.quick else base
    out = Path(args.out) if args.out else RESULTS / name
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        result = report.write(out, args.plot)
        print(report.markdown(result, summary=True))
        return result

    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:  # as the HF baseline measurements: full fp32, no TF32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    batches = args.batches or ([1, 4, 8] if cuda or args.quick else [1, 4])
    prompts = args.prompts or ([1, 4, 16, 64] if cuda or args.quick else [1, 4, 16])
    timer = Timer(device, args.quick, args.reps, args.warmup, args.case_budget_s)
    deadline = time.time() + args.time_budget_s if args.time_budget_s else None
    compile_budget = args.compile_budget_s or (240.0 if args.quick else 600.0)
    ctx = Context(device=device, size=size, quick=args.quick, dtypes=args.dtypes, backends=args.backends,
                  timer=timer, deadline=deadline, compile_on_cpu=args.compile_on_cpu)
    git = git_info()
    run_info = {"name": name, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "commit": git["commit"],
                "dirty": git["dirty"], "argv": sys.argv[1:], "quick": args.quick, "size": size,
                "reduced_sizes": size != "full", "device": str(device)}
    from . import e2e
    from .models import describe_config, make_config

    settings = {"size": size, "size_note": SIZE_NOTES[size], "dtypes": args.dtypes, "backends": args.backends,
                "sections": args.sections, "batches": batches, "prompts": prompts, "text": args.text,
                "timing": timer.describe(), "tf32": False if cuda else None, "hf_attn_implementation": "sdpa",
                "sam3lt_validate_inputs": False, "compile_budget_s": compile_budget,
                "model": describe_config(make_config(size, args.text)),
                "postprocess": "post_process_instance_segmentation, all queries kept (threshold -1), masks > 0.5",
                "fast": {"dtype": e2e.FAST_DTYPE, "throughput_batch": e2e.THROUGHPUT_BATCH, "backend": "auto",
                         "cuda_graphs": cuda, "compile_on_cpu": args.compile_on_cpu,
                         "models": "one fresh sam3lt.optimize model per measured case, from a deep copy of the "
                                   "benchmark's sam3lt model, with that case's image batch and prompt count as "
                                   "its buckets"}}
    header = {"schema": "sam3lt-bench/1", "run": run_info, "env": environment(device), "settings": settings}
    where = "GPU" if cuda else "CPU"
    load = header["env"].get("load_average_at_start")
    if not cuda and load and torch.get_num_threads() > 1 and load[0] > 0.5 * (os.cpu_count() or 1):
        print(f"sam3lt bench: warning: the machine is busy (load average {load[0]:.1f} on {os.cpu_count()} cores); "
              f"multi-threaded CPU timings will be noisy (--threads 1 is steadier)", file=sys.stderr)
    print(f"sam3lt bench: {header['env']['device']} — {where} run, "
          f"{'REDUCED SIZES: ' if size != 'full' else ''}{SIZE_NOTES[size]}; writing {out}", file=sys.stderr)

    sections = [s for s in ALL_SECTIONS if s in args.sections]
    if set(sections) == set(ALL_SECTIONS):  # a full run replaces every section file of the folder
        for s in ALL_SECTIONS:
            (out / f"{s}.json").unlink(missing_ok=True)
    from . import compiled, layers, ops

    total = 0
    for s in sections:
        total += {"ops": lambda: 1 + ops.count(ctx, args.families), "layers": lambda: layers.count(ctx),
                  "e2e": lambda: e2e.count(ctx, batches, prompts), "compile": lambda: compiled.count(ctx),
                  "fast": lambda: e2e.count_fast(ctx, "fast", batches, prompts),
                  "fast-compile": lambda: e2e.count_fast(ctx, "fast-compile", batches, prompts)}[s]()
    fast_sections = [s for s in ("fast", "fast-compile") if s in sections
                     and (s == "fast" or cuda or args.compile_on_cpu)]
    needs_models = (any(s in sections for s in ("layers", "e2e")) or ("compile" in sections and cuda)
                    or bool(fast_sections))
    total += int(needs_models)
    ctx.progress = _progress(total, args.no_progress)
    models = None
    grad_enabled = torch.is_grad_enabled()
    torch.set_grad_enabled(False)  # inference only; restored below (the suite also runs inside the test process)
    try:
        for section in sections:
            (out / f"{section}.json").unlink(missing_ok=True)
            writer = SectionWriter(out, section, header)
            if section == "ops":
                ctx.tick("ceilings")
                ceilings = measure_ceilings(device, timer, args.quick)
                writer.set("ceilings", ceilings)
                ops.run(ctx, ceilings, writer.record, args.families)
            elif section == "compile" and not cuda:
                compiled.skip_all(ctx, writer.record, compiled.SKIPPED_CPU)
            elif section == "fast-compile" and section not in fast_sections:
                e2e.skip_fast(ctx, writer.record, section, e2e.SKIPPED_CPU_COMPILE, batches, prompts)
            else:
                if models is None:
                    ctx.tick("building models")
                    from .models import build_pair
                    models = build_pair(size, device, args.text)
                    if fast_sections:  # before any section casts the models: the fp32 weights as built
                        ctx.fast_reference = e2e.fast_reference(ctx, models[1], models[2])
                hf, ours, config = models
                if section == "layers":
                    layers.run(ctx, writer.record, hf, ours, config)
                elif section == "e2e":
                    e2e.run(ctx, writer.record, hf, ours, config, batches, prompts)
                elif section in ("fast", "fast-compile"):
                    e2e.run_fast(ctx, writer.record, ours, config, batches, prompts, section)
                else:
                    compiled.run(ctx, writer.record, hf, config, compile_budget)
            writer.finish()
    finally:
        torch.set_grad_enabled(grad_enabled)
        if ctx.progress is not None:
            ctx.progress.close()
    result = report.write(out, args.plot)
    print(report.markdown(result, summary=True))
    print(f"sam3lt bench: wrote {out}/results.json, bench.md, summary.md, goals.md"
          f"{', speedups.png' if (out / 'speedups.png').exists() else ''} (plot: {result['run']['plot']})",
          file=sys.stderr)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return p


def main(argv=None) -> int:
    run(build_parser().parse_args(argv))
    return 0
