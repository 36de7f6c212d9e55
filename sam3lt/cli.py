"""The ``sam3lt`` command line.

``sam3lt segment IMAGE... --text "a cat" --checkpoint PATH_OR_HUB_ID --out DIR`` segments every instance of the
prompt(s) in each image and writes, per image, one mask PNG per kept instance, an overlay PNG (translucent
coloured masks, boxes and scores under a title bar) and, for the whole run, ``results.json`` with the boxes,
scores and run settings.

It runs offline: with no IMAGE it segments the bundled sample photo (``sam3lt/assets/chelsea.jpg``, prompt
"cat" unless ``--text`` is given); with no ``--checkpoint`` it builds a small random-weight model
(``Sam3LiteTextConfig.tiny()``), says so on stderr, in the JSON (``"random_weights": true``) and in the overlay's
title bar: its masks are meaningless, it only exercises the pipeline.

Subcommands: each ``_add_<name>(subparsers)`` function below defines one and sets ``func``; list it in
``SUBCOMMANDS``.

``sam3lt bench [--quick] [--out DIR]`` runs the benchmark suite of the source checkout (``bench/``): see
``bench/suite.py``.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch

from .pipeline.api import DTYPES
from .pipeline.decode import MAX_PIXELS, PREPROCESS_MODES, decode_error_reason  # noqa: F401 -- public name
from .pipeline.output import FORMATS
from .pipeline.overlay import RANDOM_WEIGHTS_NOTE, render_overlay  # noqa: F401 -- render_overlay: public name
from .processor import SAMPLE_IMAGE


# ---------------------------------------------------------------------------------------------- shared helpers
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# ----------------------------------------------------------------------------------------------------- segment
def _add_segment(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment the instances of text prompts in images, folders or a whole dataset",
        description="Segment every instance of the text prompt(s) in each input image. More than one image: COCO "
                    "files (dataset.json, predictions.json) in --out; one image: mask PNGs, an overlay PNG and "
                    "results.json (--format changes that). Failed inputs go to errors.jsonl; a run stopped "
                    "part-way continues when the same command is run again. Exit status: 0 all segmented, 1 some "
                    "inputs failed, 2 bad arguments.")
    p.add_argument("images", nargs="*", metavar="INPUT",
                   help="image files, folders (recursive), glob patterns, or .jsonl/.csv manifests with a 'path' "
                        "column and optional per-image prompts in a 'text' column (CSV: separated by '|') "
                        "(default: the bundled sample photo of a cat)")
    p.add_argument("--text", action="append", metavar="PROMPT",
                   help="text prompt for every image; repeat for several prompts (default with the sample image: "
                        "'cat'); a manifest's prompts replace them for its images")
    p.add_argument("--checkpoint", metavar="PATH_OR_ID",
                   help="HF SAM3-LiteText checkpoint folder or hub id, e.g. yonigozlan/sam3-litetext-s0 "
                        "(default: a tiny random-weight model, for a dry run)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="coco: dataset.json + predictions.json (RLE masks); png: mask and overlay PNGs + "
                        "results.json (default: coco for more than one image, png for one)")
    p.add_argument("--overlays", action="store_true", help="also write an overlay PNG per image (OUT/overlays/)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model dtype (default: float32)")
    p.add_argument("--fast", action="store_true", help="run on the fast path (sam3lt.optimize: bf16 + CUDA graphs on a GPU; on the CPU packed "
                        "GEMMs, in bf16 only where the CPU has bf16 dot products; masks agree with the plain "
                        "model to IoU >= 0.99)")
    p.add_argument("--threshold", type=_unit_interval, default=0.3,
                   help="score threshold for instances, in [0, 1] (default: 0.3)")
    p.add_argument("--mask-threshold", type=_unit_interval, default=0.5,
                   help="probability threshold for mask pixels, in [0, 1] (default: 0.5)")
    p.add_argument("--batch-size", type=_positive, default=4, help="images per vision forward (default: 4)")
    p.add_argument("--workers", type=_non_negative, default=None,
                   help="decoding processes (default: min(4, CPUs - 1); 0 decodes in the main process)")
    p.add_argument("--preprocess", choices=PREPROCESS_MODES, default="workers",
                   help="workers: resize in the decoding processes (exactly the processor's); device: resize on "
                        "the device from uint8 (within one uint8 level of the processor)")
    p.add_argument("--max-pixels", type=_positive, default=MAX_PIXELS,
                   help=f"larger images are recorded as failed (default: {MAX_PIXELS}, PIL's limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights without --checkpoint")
    p.add_argument("--ray", action="store_true",
                   help="run on Ray Data (pip install 'sam3lt[ray]'): one model actor per GPU, or CPU actors")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local one)")
    p.add_argument("--ray-actors", type=_positive, default=None,
                   help="model actors (default: one per GPU of the cluster, 1 without GPUs)")
    p.add_argument("--ray-actor-cpus", type=float, default=None,
                   help="CPUs reserved per CPU model actor (default: 1; fractions leave CPUs to decoding tasks)")
    p.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    from .pipeline import UsageError, segment_dataset

    inputs = args.images or [SAMPLE_IMAGE]
    prompts = args.text or (["cat"] if not args.images else None)
    problem = checkpoint_problem(args.checkpoint)
    if problem:
        return _fail(f"--checkpoint: {problem}")
    if args.ray_address and not args.ray:
        return _fail("--ray-address: given without --ray")
    if args.checkpoint is None:
        print(f"sam3lt: warning: {RANDOM_WEIGHTS_NOTE}", file=sys.stderr)
    try:
        summary = segment_dataset(
            inputs, text=prompts, out=args.out, model=args.checkpoint, format=args.format, overlays=args.overlays,
            batch_size=args.batch_size, workers=args.workers, device=args.device, dtype=args.dtype, fast=args.fast,
            preprocess=args.preprocess, threshold=args.threshold, mask_threshold=args.mask_threshold,
            max_pixels=args.max_pixels, seed=args.seed, engine="ray" if args.ray else "local",
            ray_address=args.ray_address, ray_actors=args.ray_actors, ray_actor_cpus=args.ray_actor_cpus)
    except UsageError as err:
        return _fail(_cli_names(str(err)))
    for line in summary.lines():
        print(f"sam3lt: {line}", file=sys.stderr)
    return 130 if summary.interrupted else summary.exit_code


# segment_dataset's argument names -> the options that set them, for its error messages
_OPTION = {"inputs": "IMAGE", "model": "--checkpoint", "engine": "--ray"}


def _cli_names(message: str) -> str:
    name, sep, rest = message.partition(": ")
    if not sep or " " in name:
        return message
    return f"{_OPTION.get(name, '--' + name.replace('_', '-'))}: {rest}"


def _fail(message: str) -> int:
    print(f"sam3lt: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the cause said
    return 2


def _positive(text: str) -> int:
    """argparse type of counts: an integer >= 1."""
    return _integer(text, 1)


def _non_negative(text: str) -> int:
    return _integer(text, 0)


def _integer(text: str, least: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {least}, got {text!r}") from None
    if value < least:
        raise argparse.ArgumentTypeError(f"must be >= {least}, got {value}")
    return value


def _unit_interval(text: str) -> float:
    """argparse type of the thresholds: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


# An HF hub id: "name" or "owner/name" (letters, digits, '-', '_', '.'; not starting with '.' or '-').
_HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")


def checkpoint_problem(checkpoint: str | None) -> str | None:
    """Why ``--checkpoint`` cannot be a checkpoint, found without loading anything; None when it may be one (a
    folder with ``config.json``, or something shaped like a hub id, which only the download can tell)."""
    if checkpoint is None:
        return None
    path = Path(checkpoint).expanduser()
    if path.is_dir():
        return None if (path / "config.json").is_file() else \
            f"{checkpoint} has no config.json (not a Hugging Face model folder)"
    if path.exists():
        return f"{checkpoint} is a file; expected a checkpoint folder or a hub id"
    if _HUB_ID.match(checkpoint) and ".." not in checkpoint:
        return None
    return f"{checkpoint} does not exist (no such folder, and not a hub id of the form owner/name)"


# ------------------------------------------------------------------------------------------------------- bench
BENCH_MISSING = ("bench: the benchmark suite is not installed with sam3lt; run it from a source checkout "
                 "(python -m bench in the repository root, or sam3lt bench from there)")


def bench_suite():
    """The benchmark suite: the ``bench.suite`` module of a source checkout (it is not installed with the package),
    imported by its name, or None where there is none. ``bench`` is looked up on ``sys.path`` as it is (``python -m
    sam3lt bench`` or ``python -m bench`` in the checkout), then, for the ``sam3lt`` script, in the working
    directory when it is a checkout (put on ``sys.path`` as ``python -m`` does). ``SAM3LT_BENCH_DIR``: a folder
    named ``bench`` to use instead; its parent is put first on ``sys.path``."""
    import importlib
    import os

    override = os.environ.get("SAM3LT_BENCH_DIR")
    if override:
        folder = Path(override).absolute()
        if folder.name != "bench" or not (folder / "suite.py").is_file():
            return None
        roots = [folder.parent]
    else:
        roots = [None, Path.cwd()]  # None: sys.path as it is
    for root in roots:
        if root is not None:
            if not (root / "bench" / "suite.py").is_file():
                continue
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
        try:
            suite = importlib.import_module("bench.suite")
        except ModuleNotFoundError as err:
            if err.name in ("bench", "bench.suite"):  # no bench package there, or another project's
                continue
            raise
        if override and Path(suite.__file__).parent != folder:
            raise ImportError(f"SAM3LT_BENCH_DIR={override}: bench is already imported from "
                              f"{Path(suite.__file__).parent}")
        return suite
    return None


def _add_bench(subparsers) -> None:
    description = ("Benchmark sam3lt against HF transformers: per-op microbenchmarks (every backend, bare SDPA), "
                   "per-layer breakdown, end to end (latency, throughput, prompts per image, peak memory), HF "
                   "torch.compile (GPU). Writes results.json, bench.md, summary.md and speedups.png to --out. On "
                   "the CPU it runs reduced sizes and says so.")
    p = subparsers.add_parser("bench", help="benchmark sam3lt against HF transformers (source checkout only)",
                              description=description)
    try:  # never let the suite break the other subcommands
        suite = bench_suite()
        error = None if suite else BENCH_MISSING
    except Exception as err:
        suite, error = None, f"bench: the benchmark suite failed to import ({type(err).__name__}: {err})"
    if suite is None:
        def parse_any(args=None, namespace=None):  # take any arguments: the error below is the useful one
            return argparse.ArgumentParser.parse_known_args(p, [], namespace)[0], []

        p.parse_known_args = parse_any
        p.set_defaults(func=lambda args: _fail(error))
        return
    suite.add_arguments(p)
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    try:
        bench_suite().run(args)
    except SystemExit as err:  # argument errors from the suite: same form as the other subcommands
        if isinstance(err.code, str):
            return _fail(err.code)
        raise
    return 0


# -------------------------------------------------------------------------------------------------------- main
SUBCOMMANDS = [_add_segment, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sam3lt", description="Fast SAM3-LiteText inference.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
