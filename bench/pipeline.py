"""Dataset throughput: ``sam3lt.segment_dataset`` vs the naive per-image loop, same model, same images, side by
side in one run.

    python bench/pipeline.py [--images 16] [--prompts 2] [--auto-images 2] [--workers 1] [--batch-size 4]
                             [--out bench/results] [--name pipeline_cpu]

The naive loop is what users write around the model: per image, PIL decode -> HF transformers' ``Sam3Processor``
(or sam3lt's, numerically the same, without transformers) -> model -> HF post-processing -> RLE encoding of the
masks (pycocotools) -> one JSON at the end. The pipeline writes the same COCO results (``format="coco"``).

Cases:

* ``dataset``: ``--images`` generated 640x480 JPEGs, ``--prompts`` prompts each;
* ``auto-label``: ``--auto-images`` images with COCO's 80 class names as prompts. The naive loop is HF's per-prompt
  loop (one processor + model call per prompt, the image encoded 80 times); the pipeline encodes each image once
  and runs the prompts in chunks of 64. The time for N images is extrapolated as ``T(N) = N / r`` with ``r`` the
  measured images/s (steady state, same image sizes, one machine): stated as a formula, not measured.

``model-only`` is the model's own throughput on already-preprocessed inputs (vision once per batch, the heads per
image and prompt chunk), the ceiling the pipeline is measured against (goal on a GPU: >= 90 % of it).

The model is the tiny random-weight ``Sam3LiteTextConfig.tiny()`` (280² input) on the CPU: the pipeline's overheads
(decode, resize, post-processing, writing) are what is measured, not a real model's speed. GPU numbers: not yet
measured (no GPU here). Every case runs once after a warm-up; the machine's load average is recorded, since on a
shared machine it moves every number.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

COCO_CLASSES = [  # COCO's 80 class names: the auto-labelling prompts
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis",
    "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven",
    "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier",
    "toothbrush",
]
NOT_MEASURED = "not yet measured"
GOAL_IMAGES = 5000  # the auto-labelling goal: 5,000 images x 80 prompts in <= 5 minutes on one H200


def _machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], text=True,
                                         cwd=Path(__file__).parent, stderr=subprocess.DEVNULL).strip()
    except Exception:
        commit = "unknown"
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "python": platform.python_version(), "commit": commit,
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def _write_images(folder: Path, count: int) -> list[Path]:
    """640x480 JPEGs: the sample photo, shifted and flipped so that no two are the same."""
    from sam3lt.processor import SAMPLE_IMAGE

    folder.mkdir(parents=True, exist_ok=True)
    base = np.asarray(Image.open(SAMPLE_IMAGE).convert("RGB").resize((640, 480)))
    paths = []
    for k in range(count):
        image = np.roll(base, 7 * k, axis=1)
        paths.append(folder / f"img{k:04d}.jpg")
        Image.fromarray(image[:, ::-1] if k % 2 else image).save(paths[-1], quality=90)
    return paths


def _processor(sam3lt_processor, scratch: Path):
    """HF transformers' Sam3Processor loaded from the same settings, or sam3lt's when transformers is absent."""
    try:
        from transformers import Sam3Processor
    except ImportError:
        return sam3lt_processor, "sam3lt Sam3LiteTextProcessor (transformers not installed)"
    sam3lt_processor.save_pretrained(scratch / "processor")
    return Sam3Processor.from_pretrained(scratch / "processor"), "HF transformers Sam3Processor"


def naive_loop(model, processor, paths, prompts, per_prompt: bool, threshold: float) -> float:
    """Seconds for the per-image loop (``per_prompt``: one call per prompt, HF's auto-labelling loop)."""
    from pycocotools import mask as mask_utils

    start = time.perf_counter()
    predictions = []
    for image_id, path in enumerate(paths, start=1):
        image = Image.open(path).convert("RGB")
        size = (image.height, image.width)
        for chunk in ([[p] for p in prompts] if per_prompt else [prompts]):
            inputs = processor(images=image, text=chunk, return_tensors="pt")
            with torch.inference_mode():
                outputs = model(pixel_values=inputs["pixel_values"], input_ids=inputs["input_ids"],
                                attention_mask=inputs["attention_mask"])
            results = processor.post_process_instance_segmentation(outputs, threshold=threshold, mask_threshold=0.5,
                                                                   target_sizes=[size] * len(chunk))
            for k, result in enumerate(results):
                for score, box, mask in zip(result["scores"].tolist(), result["boxes"].tolist(), result["masks"]):
                    rle = mask_utils.encode(np.asfortranarray(mask.numpy().astype(np.uint8)))
                    predictions.append({"image_id": image_id, "category_id": prompts.index(chunk[k]) + 1,
                                        "score": score, "bbox": box, "segmentation": rle["counts"].decode()})
    json.dumps(predictions)
    return time.perf_counter() - start


def model_only(model, processor, paths, prompts, batch_size: int, prompt_batch: int = 64) -> float:
    """Seconds for the model alone on preprocessed inputs, batched as the pipeline batches it."""
    from sam3lt import VisionOutput

    images = [processor.preprocess_images(Image.open(p).convert("RGB"))[0] for p in paths]
    ids, mask = processor.tokenizer(prompts)
    start = time.perf_counter()
    with torch.inference_mode():
        text = model.get_text_features(ids, mask).pooler_output  # once: the pipeline caches it too
        for at in range(0, len(images), batch_size):
            vision = model.get_vision_features(torch.cat(images[at:at + batch_size]))
            for i in range(vision.fpn_hidden_states[0].shape[0]):
                one = VisionOutput(vision.last_hidden_state[i:i + 1],
                                   tuple(f[i:i + 1] for f in vision.fpn_hidden_states),
                                   tuple(p[i:i + 1] for p in vision.fpn_position_encoding))
                for c in range(0, len(prompts), prompt_batch):
                    model(vision_embeds=one, text_embeds=text[c:c + prompt_batch],
                          attention_mask=mask[c:c + prompt_batch])
    return time.perf_counter() - start


def pipeline(model, paths, prompts, out: Path, args, threshold: float):
    import sam3lt

    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = sam3lt.segment_dataset([str(p) for p in paths], text=prompts, out=out, model=model, format="coco",
                                     batch_size=args.batch_size, workers=args.workers, device="cpu",
                                     threshold=threshold, progress=False)
    return time.perf_counter() - start, summary


def _log(message: str) -> None:
    print(f"bench/pipeline: {message}", file=sys.stderr, flush=True)


def run_case(name, model, processor, hf_processor, paths, prompts, per_prompt, args, scratch) -> dict:
    threshold = 0.3
    warm = paths[:1]
    # warm-up on one image: the shapes of the timed runs (a per-prompt call has one prompt whatever the list)
    naive_loop(model, hf_processor, warm, prompts[:2] if per_prompt else prompts, per_prompt, threshold)
    pipeline(model, warm, prompts, scratch / "warm", args, threshold)
    model_only(model, processor, warm, prompts, args.batch_size)
    naive_s = naive_loop(model, hf_processor, paths, prompts, per_prompt, threshold)
    _log(f"{name}: naive loop {naive_s:.1f} s")
    pipe_s, summary = pipeline(model, paths, prompts, scratch / name, args, threshold)
    _log(f"{name}: segment_dataset {pipe_s:.1f} s")
    model_s = model_only(model, processor, paths, prompts, args.batch_size)
    _log(f"{name}: model only {model_s:.1f} s")
    n = len(paths)
    row = {"case": name, "images": n, "prompts_per_image": len(prompts),
           "naive": "per-prompt loop" if per_prompt else "per-image loop",
           "naive_images_per_s": n / naive_s, "pipeline_images_per_s": n / pipe_s, "speedup": naive_s / pipe_s,
           "model_only_images_per_s": n / model_s, "pipeline_vs_model_only": model_s / pipe_s,
           "stage_seconds": summary.times, "instances": summary.instances}
    if per_prompt:
        rate = n / pipe_s
        row["extrapolation"] = {"formula": "T(N) = N / r, r = measured pipeline images/s on this machine",
                                "images": GOAL_IMAGES, "seconds": GOAL_IMAGES / rate,
                                "naive_seconds": GOAL_IMAGES * naive_s / n}
    return row


def _markdown(result: dict) -> str:
    m = result["machine"]
    # first line: the setting; the bold row: the headline (bench/update_readme.py lists both in the README)
    lines = [f"CPU, fp32, {result['model']}: segment_dataset vs the naive loop, same model and images; {m['cpu']} "
             f"({m['cores']} cores, {m['threads']} threads), torch {m['torch']}, commit {m['commit']}, load average "
             f"{m['load_average']} at the start (a shared machine).", "",
             f"Naive loop: {result['naive_processor']}. Pipeline: workers={result['settings']['workers']}, "
             f"batch_size={result['settings']['batch_size']}.", "",
             "| case | device | images | prompts/image | naive images/s | pipeline images/s | speed-up | "
             "model-only images/s | pipeline / model-only |", "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        bold = "**" if "extrapolation" in r else ""  # the auto-labelling row is the headline
        lines.append(f"| {bold}{r['case']} ({r['naive']}){bold} | CPU | {r['images']} | {r['prompts_per_image']} | "
                     f"{r['naive_images_per_s']:.3g} | {r['pipeline_images_per_s']:.3g} | "
                     f"{bold}{r['speedup']:.2f}x{bold} | {r['model_only_images_per_s']:.3g} | "
                     f"{100 * r['pipeline_vs_model_only']:.0f} % |")
    lines.append(f"| S0 at 1008², batch 8 / 80 prompts | GPU | {NOT_MEASURED} | | | | | | |")
    lines += ["", "Where the pipeline's time goes (seconds; decode and preprocess summed over worker processes):", ""]
    for r in result["rows"]:
        lines.append(f"- {r['case']}: " + ", ".join(f"{k} {v:.2f}" for k, v in r["stage_seconds"].items()))
    for r in result["rows"]:
        if "extrapolation" in r:
            e = r["extrapolation"]
            lines += ["", f"Auto-labelling extrapolated with {e['formula']}: {e['images']} images x "
                          f"{r['prompts_per_image']} prompts would take {e['seconds'] / 60:.1f} min with the "
                          f"pipeline and {e['naive_seconds'] / 3600:.2f} h with the per-prompt loop, on this CPU "
                          f"with the tiny model (not the S0 model; the GPU goal is {NOT_MEASURED})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="images of the dataset case")
    parser.add_argument("--prompts", type=int, default=2, help="prompts per image in the dataset case")
    parser.add_argument("--auto-images", type=int, default=2, help="images of the 80-prompt auto-labelling case")
    parser.add_argument("--workers", type=int, default=1, help="segment_dataset's DataLoader workers")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--name", default="pipeline_cpu", help="results file stem under --out")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout's sam3lt when run as a script
    from sam3lt.pipeline.runner import load_model

    model, processor, _ = load_model(None, "cpu", torch.float32, seed=0)
    result = {"model": "tiny random-weight model (Sam3LiteTextConfig.tiny(), 280² input)", "machine": _machine(),
              "settings": {"workers": args.workers, "batch_size": args.batch_size}, "rows": []}
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        hf_processor, result["naive_processor"] = _processor(processor, scratch)
        paths = _write_images(scratch / "images", max(args.images, args.auto_images))
        result["rows"].append(run_case("dataset", model, processor, hf_processor, paths[:args.images],
                                       COCO_CLASSES[:args.prompts], False, args, scratch))
        result["rows"].append(run_case("auto-label", model, processor, hf_processor, paths[:args.auto_images],
                                       COCO_CLASSES, True, args, scratch))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{args.name}.md").write_text(_markdown(result))
    print(_markdown(result))
    return result


if __name__ == "__main__":
    main()
