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
import json
import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from .processor import SAMPLE_IMAGE, Sam3LiteTextProcessor, load_image

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Distinct colours for instances (Sasha Trubetskoy's list), cycled.
PALETTE = [(230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (220, 190, 255)]
MASK_ALPHA = 110  # of 255: masks stay translucent
RANDOM_WEIGHTS_NOTE = "RANDOM WEIGHTS (no --checkpoint): masks and scores are meaningless"


# ---------------------------------------------------------------------------------------------- shared helpers
def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_processor(checkpoint: str | None, device: str = "cpu", dtype: torch.dtype = torch.float32,
                             seed: int = 0):
    """(model, processor, random_weights). Without a checkpoint: a tiny random-weight model, seeded."""
    from . import Sam3LiteTextConfig, Sam3LiteTextModel

    if checkpoint is None:
        torch.manual_seed(seed)
        model = Sam3LiteTextModel(Sam3LiteTextConfig.tiny()).to(device=device, dtype=dtype).eval()
        processor = Sam3LiteTextProcessor(size=model.config.image_size)  # bundled CLIP vocabulary
        return model, processor, True
    model = Sam3LiteTextModel.from_pretrained(checkpoint, dtype=dtype, device=device).eval()
    processor = Sam3LiteTextProcessor.from_pretrained(checkpoint, size=model.config.image_size)
    return model, processor, False


# ----------------------------------------------------------------------------------------------------- segment
def _add_segment(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment the instances of a text prompt in images",
        description="Segment every instance of the text prompt(s) in each IMAGE; write mask PNGs, an overlay PNG "
                    "per image and results.json to --out.")
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help="image files (default: the bundled sample photo of a cat)")
    p.add_argument("--text", action="append", metavar="PROMPT",
                   help="text prompt; repeat for several prompts (default with the sample image: 'cat')")
    p.add_argument("--checkpoint", metavar="PATH_OR_ID",
                   help="HF SAM3-LiteText checkpoint folder or hub id, e.g. yonigozlan/sam3-litetext-s0 "
                        "(default: a tiny random-weight model, for a dry run)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model dtype (default: float32)")
    p.add_argument("--threshold", type=_unit_interval, default=0.3,
                   help="score threshold for instances, in [0, 1] (default: 0.3)")
    p.add_argument("--mask-threshold", type=_unit_interval, default=0.5,
                   help="probability threshold for mask pixels, in [0, 1] (default: 0.5)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights without --checkpoint")
    p.set_defaults(func=run_segment)


def run_segment(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.images] or [SAMPLE_IMAGE]
    prompts = args.text or (["cat"] if not args.images else None)
    if not prompts:
        return _fail("--text: give a prompt (e.g. --text 'a cat')")
    if any(not p.strip() for p in prompts):
        return _fail("--text: prompts must not be empty")
    for path in paths:
        if not path.is_file():
            return _fail(f"IMAGE: {path} is not a file")
    device = args.device or default_device()
    if device.startswith("cuda") and not torch.cuda.is_available():
        return _fail("--device: cuda was asked for but torch sees no CUDA device")
    problem = checkpoint_problem(args.checkpoint)
    if problem:
        return _fail(f"--checkpoint: {problem}")

    from tqdm import tqdm

    try:
        model, processor, random_weights = load_model_and_processor(args.checkpoint, device, DTYPES[args.dtype],
                                                                    args.seed)
    except (OSError, ValueError) as err:  # unreachable hub id, corrupt or mismatched checkpoint (CheckpointError)
        if args.checkpoint is None:
            raise
        return _fail(f"--checkpoint: {str(err).removeprefix('path_or_hub_id: ')}")
    if random_weights:
        print(f"sam3lt: warning: {RANDOM_WEIGHTS_NOTE}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    run = {"text": prompts, "checkpoint": args.checkpoint, "random_weights": random_weights, "device": device,
           "dtype": args.dtype, "threshold": args.threshold, "mask_threshold": args.mask_threshold,
           "image_size": model.config.image_size, "images": []}
    stems: set[str] = set()
    progress = tqdm(paths, desc="segment", unit="image", file=sys.stderr)
    for path in progress:
        try:
            image = load_image(path)
        except (RuntimeError, ValueError, OSError) as err:
            progress.leave = False
            progress.close()  # the error gets a line of its own
            return _fail(f"IMAGE: cannot read {path}: {decode_error_reason(err)}")
        stem = _unique_stem(path.stem, stems)
        instances = _segment_one(model, processor, image, prompts, args.threshold, args.mask_threshold, device)
        run["images"].append(_write_image_outputs(args.out, stem, path, image, instances, prompts, args.checkpoint,
                                                  random_weights))
    with open(args.out / "results.json", "w", encoding="utf-8") as f:
        json.dump(run, f, indent=2)
        f.write("\n")
    kept = sum(len(entry["instances"]) for entry in run["images"])
    print(f"sam3lt: {kept} instance(s) in {len(paths)} image(s); wrote {args.out}", file=sys.stderr)
    return 0


@torch.inference_mode()
def _segment_one(model, processor, image: torch.Tensor, prompts, threshold, mask_threshold, device) -> list[dict]:
    """All prompts on one image (the model encodes the image once): kept instances, best score first."""
    inputs = processor(images=image, text=prompts, device=device)
    outputs = model(pixel_values=inputs.pixel_values.to(model.dtype), input_ids=inputs.input_ids,
                    attention_mask=inputs.attention_mask)
    height, width = image.shape[-2:]
    results = processor.post_process_instance_segmentation(outputs, threshold, mask_threshold,
                                                           target_sizes=[(height, width)] * len(prompts))
    instances = []
    for prompt, result in zip(prompts, results):
        for score, box, mask in zip(result["scores"].float().cpu().tolist(), result["boxes"].float().cpu().tolist(),
                                    result["masks"].cpu().numpy()):
            instances.append({"prompt": prompt, "score": score, "box": box, "mask": mask})
    return sorted(instances, key=lambda inst: -inst["score"])


def _write_image_outputs(out: Path, stem: str, path: Path, image: torch.Tensor, instances, prompts, checkpoint,
                         random_weights) -> dict:
    entries = []
    for k, inst in enumerate(instances):
        mask_name = f"{stem}_mask_{k:03d}.png"
        Image.fromarray(inst["mask"].astype(np.uint8) * 255).save(out / mask_name)
        entries.append({"prompt": inst["prompt"], "score": round(inst["score"], 6),
                        "box": [round(v, 2) for v in inst["box"]], "mask": mask_name,
                        "area": int(inst["mask"].sum())})
    title = f"sam3lt | {', '.join(repr(p) for p in prompts)} | {len(instances)} instance(s) | " \
            f"{checkpoint or 'no checkpoint'}"
    picture = Image.fromarray(image.permute(1, 2, 0).cpu().numpy())
    overlay = render_overlay(picture, instances, title, RANDOM_WEIGHTS_NOTE if random_weights else None)
    overlay_name = f"{stem}_overlay.png"
    overlay.save(out / overlay_name)
    return {"image": str(path), "height": image.shape[-2], "width": image.shape[-1], "overlay": overlay_name,
            "instances": entries}


def render_overlay(image: Image.Image, instances, title: str, warning: str | None = None) -> Image.Image:
    """The image with translucent coloured masks, boxes and "prompt score" labels, under a title bar (and a
    red warning line, e.g. for random weights)."""
    base = image.convert("RGBA")
    for k, inst in enumerate(instances):
        colour = PALETTE[k % len(PALETTE)]
        fill = Image.new("RGBA", base.size, colour + (0,))
        fill.putalpha(Image.fromarray(inst["mask"].astype(np.uint8) * MASK_ALPHA))
        base = Image.alpha_composite(base, fill)
    draw = ImageDraw.Draw(base)
    font = _font(max(11, min(16, base.width // 40)))
    for k, inst in enumerate(instances):
        colour = PALETTE[k % len(PALETTE)] + (255,)
        x0, y0, x1, y1 = inst["box"]
        draw.rectangle([x0, y0, max(x0, x1), max(y0, y1)], outline=colour, width=2)
        label = f"{inst['prompt']} {inst['score']:.2f}"
        left, top, right, bottom = draw.textbbox((x0 + 2, y0 + 1), label, font=font)
        draw.rectangle([left - 2, top - 1, right + 2, bottom + 1], fill=(0, 0, 0, 160))
        draw.text((x0 + 2, y0 + 1), label, fill=colour, font=font)

    width = base.width
    lines = [(line, (255, 255, 255)) for line in _wrap(title, font, width - 12)]
    if warning:
        lines += [(line, (255, 80, 80)) for line in _wrap(warning, font, width - 12)]
    line_height = int(font.getbbox("Ag")[3]) + 4
    bar = 8 + line_height * len(lines)
    canvas = Image.new("RGB", (width, base.height + bar), (30, 30, 30))
    canvas.paste(base.convert("RGB"), (0, bar))
    draw = ImageDraw.Draw(canvas)
    for i, (line, colour) in enumerate(lines):
        draw.text((6, 4 + i * line_height), line, fill=colour, font=font)
    return canvas


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # a scalable font (Pillow ≥ 10.1 with FreeType)
    except (TypeError, ValueError, OSError, ImportError):
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """Wrap ``text`` to lines that fit ``width`` pixels in ``font``."""
    per_char = max(1.0, font.getlength("n"))
    return textwrap.wrap(text, max(8, int(width / per_char))) or [""]


def _unique_stem(stem: str, used: set[str]) -> str:
    # Two inputs with the same file name (from different folders) must not overwrite each other's outputs.
    candidate, n = stem, 1
    while candidate in used:
        candidate, n = f"{stem}_{n}", n + 1
    used.add(candidate)
    return candidate


def _fail(message: str) -> int:
    print(f"sam3lt: error: {' '.join(message.split())}", file=sys.stderr)  # one line, whatever the cause said
    return 2


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


# torchvision's decoders prefix their errors with where in its C++ sources they were raised:
# "decode_jpeg, /__w/vision/.../decode_jpeg.cpp:171, Image is incomplete or truncated".
_CPP_SOURCE = r"\S+\.(?:cpp|cc|cu|cuh|h|hpp)\b"
_CPP_PREFIX = re.compile(rf"^\s*\w+, {_CPP_SOURCE}(?::\d+)?, ")


def decode_error_reason(err: Exception) -> str:
    """An image decoder's error as a reason for the user: no path into torchvision's build, no hint about its
    other functions."""
    text = _CPP_PREFIX.sub("", " ".join(str(err).split()))
    text = " ".join(s for s in re.split(r"(?<=\.) ", text) if "`decode_" not in s)  # "For avif ... `decode_avif`"
    if not text or re.search(_CPP_SOURCE, text):  # another form naming a C++ source: say it plainly
        return "not a readable image (the decoder failed; jpeg, png, webp and gif are supported)"
    return text


# ------------------------------------------------------------------------------------------------------- bench
def bench_suite():
    """The benchmark suite (``bench/suite.py`` of the source checkout; it is not installed with the package),
    imported as ``sam3lt_bench``, or None when this sam3lt is not a source checkout. ``SAM3LT_BENCH_DIR`` may
    point at another ``bench`` folder."""
    import importlib
    import importlib.util
    import os

    if "sam3lt_bench.suite" in sys.modules:
        return sys.modules["sam3lt_bench.suite"]
    folder = Path(os.environ.get("SAM3LT_BENCH_DIR") or Path(__file__).resolve().parent.parent / "bench")
    if not (folder / "suite.py").is_file():
        return None
    spec = importlib.util.spec_from_file_location("sam3lt_bench", folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["sam3lt_bench"] = package
    try:
        spec.loader.exec_module(package)
        return importlib.import_module("sam3lt_bench.suite")
    except Exception:
        sys.modules.pop("sam3lt_bench", None)
        raise


def _add_bench(subparsers) -> None:
    description = ("Benchmark sam3lt against HF transformers: per-op microbenchmarks (every backend, bare SDPA), "
                   "per-layer breakdown, end to end (latency, throughput, prompts per image, peak memory), HF "
                   "torch.compile (GPU). Writes results.json, bench.md, summary.md and speedups.png to --out. On "
                   "the CPU it runs reduced sizes and says so.")
    p = subparsers.add_parser("bench", help="benchmark sam3lt against HF transformers (source checkout only)",
                              description=description)
    try:  # never let the suite break the other subcommands
        suite = bench_suite()
        error = None if suite else ("bench: the benchmark suite lives in the bench/ folder of a source checkout "
                                    "(pip install -e .), which this install does not have")
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
