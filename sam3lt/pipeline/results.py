"""The final files of a run, rebuilt from its record (``progress.jsonl``) in input order; see :mod:`.output`.

COCO: ``dataset.json`` has ``images`` (id, file_name, height, width) and ``categories`` (one per prompt, in
order of first use) so that ``pycocotools.coco.COCO("dataset.json").loadRes("predictions.json")`` works;
``predictions.json`` is a COCO results list (``image_id``, ``category_id``, ``score``, ``bbox`` [x, y, w, h] in
pixels, ``segmentation`` compressed RLE of the full-size mask). Image ids are the 1-based input positions, so
they do not change when a run is resumed.
"""
from __future__ import annotations

import json
from pathlib import Path

from .output import DATASET, ERRORS, PREDICTIONS, RESULTS, atomic_write, write_json


def categories(items, text) -> list[str]:
    """Every prompt of the run, the run's ``text`` first, then the manifests' in input order."""
    names = dict.fromkeys(text or ())
    for item in items:
        names.update(dict.fromkeys(item.prompts or ()))
    return list(names)


def write_final(out: Path, items, records: dict, *, fmt: str, text, info: dict) -> None:
    """Write the format's files and ``errors.jsonl`` for the inputs in ``items`` that have a record."""
    done = [(n, item, records[item.key]) for n, item in enumerate(items, start=1) if item.key in records]
    if fmt == "coco":
        _write_coco(out, done, categories(items, text), info)
    else:
        _write_png_results(out, done, info)
    lines = [{"file": item.key, "error": record["error"]} for _, item, record in done if "error" in record]
    atomic_write(out / ERRORS, lambda tmp: tmp.write_text(
        "".join(_json_line(line) for line in lines), encoding="utf-8"))


def _json_line(data) -> str:
    return json.dumps(data, ensure_ascii=False) + "\n"


def _write_coco(out: Path, done, names: list[str], info: dict) -> None:
    category = {name: k for k, name in enumerate(names, start=1)}
    images, predictions = [], []
    for image_id, item, record in done:
        if "error" in record:
            continue
        images.append({"id": image_id, "file_name": item.key, "height": record["height"], "width": record["width"]})
        for inst in record["instances"]:
            x0, y0, x1, y1 = inst["box"]
            predictions.append({"image_id": image_id, "category_id": category[inst["prompt"]],
                                "score": inst["score"], "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "segmentation": inst["rle"], "area": inst["area"]})
    write_json(out / DATASET, {"info": info, "images": images, "annotations": [],
                               "categories": [{"id": k, "name": name} for name, k in category.items()]})
    write_json(out / PREDICTIONS, predictions, indent=None)


def _write_png_results(out: Path, done, info: dict) -> None:
    """Today's ``sam3lt segment`` results.json: the run settings and, per image, its instances' files."""
    images = []
    for _, item, record in done:
        if "error" in record:
            continue
        instances = [{"prompt": inst["prompt"], "score": round(inst["score"], 6),
                      "box": [round(v, 2) for v in inst["box"]], "mask": inst["mask"], "area": inst["area"]}
                     for inst in record["instances"]]
        images.append({"image": item.key, "height": record["height"], "width": record["width"],
                       "overlay": record["overlay"], "instances": instances})
    write_json(out / RESULTS, {**info, "images": images})
