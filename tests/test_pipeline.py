"""sam3lt.segment_dataset (sam3lt/pipeline) on the CPU with the tiny random-weight model: inputs and manifests,
decoding of odd and broken files, agreement with the per-image processor + model + post-processing loop, COCO
output through pycocotools, PNG output, errors.jsonl, exit codes, resuming (also after a kill), on-device
preprocessing within its stated tolerance, and the CLI shell."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sam3lt
from sam3lt.cli import main
from sam3lt.pipeline import UsageError, segment_dataset
from sam3lt.pipeline.decode import Preprocess, decode
from sam3lt.pipeline.runner import load_model
from sam3lt.processor import SAMPLE_IMAGE, load_image

mask_utils = pytest.importorskip("pycocotools.mask", reason="COCO output needs pycocotools (a dependency)")
from pycocotools.coco import COCO  # noqa: E402

PROMPTS = ["cat", "ear"]


# ---- generated images -------------------------------------------------------------------------------------------
def _photo(width: int, height: int) -> Image.Image:
    return Image.open(SAMPLE_IMAGE).convert("RGB").resize((width, height))


def write_good_images(folder: Path) -> dict[str, Path]:
    """Images every decoder must read: odd modes and shapes included."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("plain.jpg", "gray.png", "cmyk.jpg", "deep16.png", "palette.png",
                                               "exif_rotated.jpg", "wide.png", "tiny.png")}
    _photo(160, 120).save(paths["plain.jpg"], quality=95)
    _photo(90, 70).convert("L").save(paths["gray.png"])
    _photo(100, 80).convert("CMYK").save(paths["cmyk.jpg"], quality=95)
    gray = np.asarray(_photo(64, 48).convert("L"), dtype=np.uint16) * 257  # 16-bit: value v -> v * 257
    Image.fromarray(gray).save(paths["deep16.png"])
    palette = _photo(80, 60).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(paths["palette.png"], transparency=0)
    rotated = _photo(120, 60)
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated.save(paths["exif_rotated.jpg"], exif=exif, quality=95)
    _photo(1200, 16).save(paths["wide.png"])
    _photo(3, 2).save(paths["tiny.png"])
    return paths


def write_bad_images(folder: Path) -> dict[str, str]:
    """Files that must fail, with a word their error must contain."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.png").write_bytes(b"this is not an image\n" * 10)
    (folder / "truncated.jpg").write_bytes(SAMPLE_IMAGE.read_bytes()[:300])
    _photo(700, 700).save(folder / "huge.png")  # above the tests' max_pixels
    return {"zero.jpg": "empty file", "text.png": "not an image", "truncated.jpg": "", "huge.png": "too large"}


MAX_PIXELS = 400 * 400  # huge.png (700²) is "too large" under it; the others are below


@pytest.fixture(scope="module")
def tiny():
    model, processor, _ = load_model(None, "cpu", torch.float32, seed=0)
    return model, processor


def _reference(model, processor, path, prompts, threshold=0.0, mask_threshold=0.5):
    """The naive per-image loop (processor, model, post-processing), as the CLI did before the pipeline."""
    image = load_image(path)
    if image.dtype == torch.uint16:
        image = (image.to(torch.int32) // 257).to(torch.uint8)
    inputs = processor(images=image, text=prompts)
    with torch.inference_mode():
        outputs = model(pixel_values=inputs.pixel_values, input_ids=inputs.input_ids,
                        attention_mask=inputs.attention_mask)
    size = tuple(image.shape[-2:])
    results = processor.post_process_instance_segmentation(outputs, threshold, mask_threshold,
                                                           target_sizes=[size] * len(prompts))
    return size, [(prompt, float(score), box.tolist(), mask.numpy())
                  for prompt, result in zip(prompts, results)
                  for score, box, mask in zip(result["scores"], result["boxes"], result["masks"])]


def read_coco(out: Path):
    """(COCO ground-truth object of dataset.json, its loadRes of predictions.json, raw predictions)."""
    gt = COCO(str(out / "dataset.json"))
    predictions = json.loads((out / "predictions.json").read_text())
    return gt, gt.loadRes(str(out / "predictions.json")), predictions


def read_errors(out: Path) -> dict[str, str]:
    return {Path(e["file"]).name: e["error"] for e in map(json.loads, (out / "errors.jsonl").read_text().splitlines())}


# ---- decoding -----------------------------------------------------------------------------------------------------
def test_odd_images_decode_correctly(tmp_path):
    paths = write_good_images(tmp_path)
    expected = {
        "gray.png": np.asarray(Image.open(paths["gray.png"]).convert("RGB")),
        "palette.png": np.asarray(Image.open(paths["palette.png"]).convert("RGBA")),
        "deep16.png": np.repeat(np.asarray(_photo(64, 48).convert("L"))[..., None], 3, axis=2),
        "exif_rotated.jpg": np.asarray(Image.open(paths["exif_rotated.jpg"]).convert("RGB").transpose(
            Image.Transpose.ROTATE_270)),
        "cmyk.jpg": np.asarray(Image.open(paths["cmyk.jpg"]).convert("RGB")),
    }
    for name, path in paths.items():
        image = decode(str(path))
        assert image.dtype == torch.uint8 and image.shape[0] == 3, name
        hwc = image.permute(1, 2, 0).numpy().astype(int)
        if name == "palette.png":  # transparent palette entry: torchvision's RGB mode keeps the colour
            assert hwc.shape[:2] == expected[name].shape[:2]
        elif name in expected:
            assert hwc.shape == expected[name].shape, name
            tolerance = 3 if name.endswith(".jpg") else 0  # two JPEG decoders (PIL's, torchvision's)
            assert np.abs(hwc - expected[name].astype(int)).max() <= tolerance, name
    deep = np.asarray(_photo(64, 48).convert("L"), dtype=np.uint16) * 257
    Image.fromarray(deep).save(tmp_path / "deep16.tif")  # PIL's decoder (torchvision reads no TIFF)
    assert np.array_equal(decode(str(tmp_path / "deep16.tif")).numpy(), np.stack([deep // 257] * 3))
    assert tuple(decode(str(paths["wide.png"])).shape) == (3, 16, 1200)
    assert tuple(decode(str(paths["tiny.png"])).shape) == (3, 2, 3)


def test_device_preprocessing_within_one_level(tiny):
    """preprocess="device" (float resize from uint8, rounded) vs the processor: at most one uint8 level, i.e.
    2/255 after normalisation with mean = std = 0.5; "workers" is the processor exactly."""
    _, processor = tiny
    images = [load_image(SAMPLE_IMAGE), torch.from_numpy(np.array(_photo(1200, 16))).permute(2, 0, 1),
              torch.from_numpy(np.array(_photo(3, 2))).permute(2, 0, 1)]
    for image in images:
        expected = processor(images=image).pixel_values
        workers = Preprocess(processor, "workers")
        assert torch.equal(workers.device(workers.worker(image)[None]), expected)
        device = Preprocess(processor, "device")
        diff = (device.device([device.worker(image)]) - expected).abs()
        assert diff.max().item() <= 2 / 255 + 1e-6
        assert diff.mean().item() < 1 / 255  # mostly exact: rounding differs on a minority of pixels


# ---- results -------------------------------------------------------------------------------------------------------
def test_coco_matches_the_per_image_loop(tmp_path, tiny):
    model, processor = tiny
    paths = write_good_images(tmp_path / "images")
    out = tmp_path / "out"
    summary = segment_dataset(tmp_path / "images", text=PROMPTS, out=out, model=model, threshold=0.0,
                              batch_size=3, workers=1, device="cpu", progress=False)
    assert (summary.total, summary.segmented, summary.failed, summary.exit_code) == (len(paths), len(paths), 0, 0)
    gt, results, predictions = read_coco(out)
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == PROMPTS
    assert len(results.getAnnIds()) == len(predictions) == summary.instances
    names = {img["id"]: Path(img["file_name"]).name for img in gt.loadImgs(gt.getImgIds())}
    assert sorted(names.values()) == sorted(paths)
    for image_id, name in names.items():
        size, expected = _reference(model, processor, paths[name], PROMPTS)
        info = gt.loadImgs(image_id)[0]
        assert (info["height"], info["width"]) == size, name
        got = sorted([p for p in predictions if p["image_id"] == image_id], key=lambda p: -p["score"])
        expected = sorted(expected, key=lambda e: -e[1])
        assert len(got) == len(expected) > 0, name
        for pred, (prompt, score, box, mask) in zip(got, expected):
            assert gt.loadCats(pred["category_id"])[0]["name"] == prompt
            assert abs(pred["score"] - score) <= 1e-5, name
            x0, y0, x1, y1 = box
            assert np.allclose(pred["bbox"], [x0, y0, x1 - x0, y1 - y0], atol=1e-3), name
            decoded = mask_utils.decode(pred["segmentation"]).astype(bool)
            assert decoded.shape == size
            assert (decoded != mask).mean() <= 1e-3, name  # batched vision: a boundary pixel may flip
    ann = results.loadAnns(results.getAnnIds())[0]
    assert results.annToMask(ann).shape == (gt.imgs[ann["image_id"]]["height"], gt.imgs[ann["image_id"]]["width"])


def test_failed_inputs_are_recorded_and_the_run_goes_on(tmp_path, tiny, capsys):
    model, _ = tiny
    write_good_images(tmp_path / "in")
    bad = write_bad_images(tmp_path / "in" / "bad")
    out = tmp_path / "out"
    summary = segment_dataset([tmp_path / "in"], text="cat", out=out, model=model, max_pixels=MAX_PIXELS,
                              workers=0, device="cpu")
    assert summary.failed == len(bad) and summary.exit_code == 1 and summary.segmented == summary.total - len(bad)
    errors = read_errors(out)
    assert sorted(errors) == sorted(bad)
    for name, word in bad.items():
        assert errors[name] and word in errors[name], (name, errors[name])
        assert ".cpp" not in errors[name]
    gt, _, _ = read_coco(out)
    assert not {Path(img["file_name"]).name for img in gt.loadImgs(gt.getImgIds())} & set(bad)
    err = capsys.readouterr().err
    assert all(f"cannot read {tmp_path / 'in' / 'bad' / name}" in err for name in bad) and "failed=4" in err
    again = segment_dataset([tmp_path / "in"], text="cat", out=out, model=model, max_pixels=MAX_PIXELS,
                            workers=0, device="cpu", progress=False)  # failures are final: not retried
    assert (again.segmented, again.failed, again.exit_code) == (0, len(bad), 1)
    assert again.lines()[0].startswith("nothing to do")


def test_png_format_and_overlays(tmp_path, tiny):
    model, _ = tiny
    paths = write_good_images(tmp_path / "in")
    out = tmp_path / "png"
    segment_dataset([paths["plain.jpg"], paths["wide.png"]], text=PROMPTS, out=out, model=model, format="png",
                    threshold=0.0, workers=0, device="cpu", progress=False)
    results = json.loads((out / "results.json").read_text())
    assert [Path(e["image"]).name for e in results["images"]] == ["plain.jpg", "wide.png"]
    for entry in results["images"]:
        assert Image.open(out / entry["overlay"]).width == entry["width"]
        for inst in entry["instances"]:
            mask = np.asarray(Image.open(out / inst["mask"]))
            assert mask.shape == (entry["height"], entry["width"]) and int((mask > 0).sum()) == inst["area"]
    coco = tmp_path / "coco"
    segment_dataset([paths["plain.jpg"], paths["tiny.png"]], text="cat", out=coco, model=model, overlays=True,
                    workers=0, device="cpu", progress=False)
    assert sorted(p.name for p in (coco / "overlays").iterdir()) == ["plain.png", "tiny.png"]


# ---- inputs ----------------------------------------------------------------------------------------------------------
def test_manifests_globs_and_per_image_prompts(tmp_path, tiny):
    model, _ = tiny
    paths = write_good_images(tmp_path / "img")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "img/plain.jpg", "text": ["dog", "ball"]}) + "\n\n" +
                                      json.dumps({"path": str(paths["gray.png"])}) + "\n")
    (tmp_path / "m.csv").write_text("path,text\nimg/cmyk.jpg,tree|sky\nimg/tiny.png,\n")
    out = tmp_path / "out"
    summary = segment_dataset([tmp_path / "m.jsonl", tmp_path / "m.csv", str(tmp_path / "img" / "wide.*")],
                              text=["cat"], out=out, model=model, threshold=0.0, workers=0, device="cpu",
                              progress=False)
    assert summary.total == 5 and summary.exit_code == 0
    gt, _, predictions = read_coco(out)
    assert [c["name"] for c in gt.loadCats(gt.getCatIds())] == ["cat", "dog", "ball", "tree", "sky"]
    prompts_of = {}
    for pred in predictions:
        name = Path(gt.imgs[pred["image_id"]]["file_name"]).name
        prompts_of.setdefault(name, set()).add(gt.cats[pred["category_id"]]["name"])
    assert prompts_of == {"plain.jpg": {"dog", "ball"}, "gray.png": {"cat"}, "cmyk.jpg": {"tree", "sky"},
                          "tiny.png": {"cat"}, "wide.png": {"cat"}}


@pytest.mark.parametrize("inputs, text, message", [
    (["missing.jpg"], ["cat"], "inputs: "),
    (["empty_dir"], ["cat"], "holds no images"),
    (["no_path.jsonl"], ["cat"], "'path' column"),
    (["bad.jsonl"], ["cat"], "not valid JSON"),
    (["no_path.csv"], ["cat"], "'path' column"),
    (["img.png"], None, "text: "),
    (["img.png"], ["cat", " "], "text: "),
])
def test_usage_errors_name_the_argument(tmp_path, inputs, text, message):
    (tmp_path / "empty_dir").mkdir()
    (tmp_path / "no_path.jsonl").write_text('{"file": "x.png"}\n')
    (tmp_path / "bad.jsonl").write_text('{"path": \n')
    (tmp_path / "no_path.csv").write_text("file\nx.png\n")
    _photo(8, 8).save(tmp_path / "img.png")
    with pytest.raises(UsageError, match=message):
        segment_dataset([str(tmp_path / i) for i in inputs], text=text, out=tmp_path / "out", progress=False)


@pytest.mark.parametrize("kwargs, name", [({"batch_size": 0}, "batch_size"), ({"threshold": 2}, "threshold"),
                                          ({"format": "tiff"}, "format"), ({"engine": "spark"}, "engine"),
                                          ({"preprocess": "gpu"}, "preprocess"), ({"workers": -1}, "workers"),
                                          ({"model": 3}, "model"), ({"ray_actor_cpus": 0}, "ray_actor_cpus"),
                                          ({"ray_actors": 0}, "ray_actors"), ({"dtype": "float64"}, "dtype")])
def test_bad_arguments(tmp_path, kwargs, name):
    with pytest.raises(UsageError, match=f"^{name}: "):
        segment_dataset(SAMPLE_IMAGE, text="cat", out=tmp_path, progress=False, **kwargs)


# ---- resuming -------------------------------------------------------------------------------------------------------
def test_rerun_does_nothing_and_other_settings_are_refused(tmp_path, tiny):
    model, _ = tiny
    write_good_images(tmp_path / "in")
    out = tmp_path / "out"
    args = dict(text="cat", out=out, model=model, workers=0, device="cpu", progress=False)
    first = segment_dataset(tmp_path / "in", **args)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    again = segment_dataset(tmp_path / "in", **args)
    assert (again.segmented, again.skipped, again.exit_code) == (0, first.total, 0)
    assert again.lines()[0].startswith(f"nothing to do: all {first.total} input(s) already finished")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    with pytest.raises(UsageError, match=r"^out: .*threshold"):
        segment_dataset(tmp_path / "in", **{**args, "threshold": 0.9})


def test_a_second_run_on_the_same_out_is_refused(tmp_path):
    from sam3lt.pipeline.output import Journal

    first = Journal(tmp_path / "progress.jsonl")
    with pytest.raises(UsageError, match="^out: another run is writing to"):
        Journal(tmp_path / "progress.jsonl")
    first.close()
    Journal(tmp_path / "progress.jsonl").close()  # free again once the first run is done


def test_a_half_written_record_line_is_dropped(tmp_path, tiny):
    model, _ = tiny
    paths = write_good_images(tmp_path / "in")
    out = tmp_path / "out"
    args = dict(text="cat", out=out, model=model, workers=0, device="cpu", progress=False)
    segment_dataset([paths["plain.jpg"]], **{**args, "format": "coco"})
    with open(out / "progress.jsonl", "a") as f:
        f.write('{"key": "' + str(paths["gray.png"]) + '", "height": 7')  # killed mid-line
    summary = segment_dataset([paths["plain.jpg"], paths["gray.png"]], **{**args, "format": "coco"})
    assert (summary.skipped, summary.segmented) == (1, 1)
    keys = [json.loads(line)["key"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert keys == [str(paths["plain.jpg"]), str(paths["gray.png"])]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_killed_run_resumes_and_writes_each_image_once(tmp_path, sig):
    """A subprocess killed (SIGKILL) or interrupted (SIGINT, Ctrl-C) part-way, then the same command again: every
    image once, results equal to an uninterrupted run's."""
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(40):
        _photo(60 + k, 50).save(folder / f"img{k:02d}.png")
    argv = [sys.executable, "-m", "sam3lt.cli", "segment", str(folder), "--text", "cat", "--text", "ear",
            "--threshold", "0", "--device", "cpu", "--workers", "0", "--batch-size", "1", "--out"]
    out, clean = tmp_path / "out", tmp_path / "clean"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv + [str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    journal = out / "progress.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.01)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130), \
        f"the run finished before it could be stopped: {err.decode()[-2000:]}"
    if sig == signal.SIGINT:  # Ctrl-C: what was computed is written, and the message says how to go on
        assert b"interrupted: what finished is kept" in err and b"Traceback" not in err
    done_before = journal.read_bytes().count(b"\n")
    assert 3 <= done_before < 40
    resumed = subprocess.run(argv + [str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_before} already done" in resumed.stderr or f"{done_before + 1} already done" in resumed.stderr
    keys = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == 40
    assert subprocess.run(argv + [str(clean)], capture_output=True, env=env, timeout=300).returncode == 0
    _, _, resumed_preds = read_coco(out)
    _, _, clean_preds = read_coco(clean)
    assert len(resumed_preds) == len(clean_preds)
    for a, b in zip(resumed_preds, clean_preds):
        assert (a["image_id"], a["category_id"], a["segmentation"]) == (b["image_id"], b["category_id"],
                                                                         b["segmentation"])
        assert abs(a["score"] - b["score"]) <= 1e-6


# ---- model variants and the CLI -------------------------------------------------------------------------------------
def test_fast_path_and_device_preprocessing_agree(tmp_path, tiny):
    model, _ = tiny
    paths = write_good_images(tmp_path / "in")
    files = [paths["plain.jpg"], paths["wide.png"], paths["gray.png"]]
    runs = {}
    for name, kwargs in {"plain": {}, "device": {"preprocess": "device"},
                         "fast": {"model": sam3lt.optimize(load_model(None, "cpu", torch.float32)[0],
                                                           dtype=torch.float32)}}.items():
        kwargs = {"model": model, **kwargs}
        segment_dataset(files, text=PROMPTS, out=tmp_path / name, threshold=0.0, workers=0, device="cpu",
                        batch_size=2, progress=False, **kwargs)
        runs[name] = sorted((p["image_id"], p["category_id"], p["score"]) for p in read_coco(tmp_path / name)[2])
    for name in ("fast", "device"):
        assert len(runs[name]) == len(runs["plain"])
        tolerance = 1e-4 if name == "fast" else 0.05  # device: inputs within one uint8 level
        assert max(abs(a[2] - b[2]) for a, b in zip(runs[name], runs["plain"])) <= tolerance, name


def test_fast_on_the_cpu_takes_the_cpu_plan(tmp_path, tiny):
    """fast=True on the CPU builds optimize's CPU plan (bf16 GEMMs only where the CPU has them), with the fast
    path's accuracy rule against the plain run: scores within 1e-2."""
    from sam3lt.pipeline.runner import Runner

    processor = tiny[1]
    runner = Runner.build(load_model(None, "cpu", torch.float32)[0], processor, device="cpu", dtype=torch.float32,
                          fast=True, prep_mode="workers", threshold=0.0, mask_threshold=0.5, prompt_batch=4,
                          image_batch=2)
    assert runner.model.cpu_plan is not None and "cpu_plan" in repr(runner.model)
    paths = write_good_images(tmp_path / "in")
    files = [paths["plain.jpg"], paths["wide.png"]]
    runs = {}
    for name, fast in (("plain", False), ("fast", True)):
        segment_dataset(files, text=PROMPTS, out=tmp_path / name, threshold=0.0, workers=0, device="cpu",
                        batch_size=2, progress=False, model=load_model(None, "cpu", torch.float32)[0], fast=fast)
        runs[name] = sorted((p["image_id"], p["category_id"], p["score"]) for p in read_coco(tmp_path / name)[2])
    assert len(runs["fast"]) == len(runs["plain"])
    assert max(abs(a[2] - b[2]) for a, b in zip(runs["fast"], runs["plain"])) <= 1e-2


def test_cli_dataset_run_and_exit_codes(tmp_path, capsys):
    write_good_images(tmp_path / "in")
    assert main(["segment", str(tmp_path / "in"), "--text", "cat", "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--workers", "0"]) == 0
    assert (tmp_path / "out" / "dataset.json").is_file() and (tmp_path / "out" / "predictions.json").is_file()
    assert "time per stage: decode" in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "in"), "--text", "cat", "--out", str(tmp_path / "out"),
                 "--device", "cpu", "--workers", "0"]) == 0
    assert "nothing to do" in capsys.readouterr().err
    write_bad_images(tmp_path / "in2")
    assert main(["segment", str(tmp_path / "in2"), str(tmp_path / "in"), "--text", "cat", "--out",
                 str(tmp_path / "out2"), "--device", "cpu", "--workers", "0", "--max-pixels", str(MAX_PIXELS)]) == 1
    assert len(read_errors(tmp_path / "out2")) == 4
    assert main(["segment", str(tmp_path / "nothing*.png"), "--text", "cat", "--out", str(tmp_path / "o3")]) == 2
    assert "sam3lt: error: IMAGE: " in capsys.readouterr().err
    assert main(["segment", str(tmp_path / "in"), "--text", "cat", "--out", str(tmp_path / "out"),
                 "--threshold", "0.9"]) == 2
    assert "sam3lt: error: --out: " in capsys.readouterr().err
