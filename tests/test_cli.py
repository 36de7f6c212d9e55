"""The ``sam3lt`` command line: offline dry run (bundled image, tiny random-weight model), explicit images and
prompts, an HF-saved checkpoint folder, help and errors."""
from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from sam3lt.cli import main
from sam3lt.processor import SAMPLE_IMAGE


def _read_results(out_dir):
    results = json.loads((out_dir / "results.json").read_text())
    for key in ("text", "checkpoint", "random_weights", "device", "dtype", "threshold", "mask_threshold",
                "image_size", "images"):
        assert key in results, key
    return results


def _check_image_entry(out_dir, entry):
    """Masks are 0/255 PNGs at the image size, one per instance; the overlay has a title bar above the image."""
    height, width = entry["height"], entry["width"]
    overlay = Image.open(out_dir / entry["overlay"])
    assert overlay.width == width and overlay.height > height
    for inst in entry["instances"]:
        assert isinstance(inst["prompt"], str) and 0.0 <= inst["score"] <= 1.0 and len(inst["box"]) == 4
        mask = np.array(Image.open(out_dir / inst["mask"]))
        assert mask.shape == (height, width) and set(np.unique(mask)) <= {0, 255}
        assert int((mask > 0).sum()) == inst["area"]


def test_dry_run_on_bundled_image(tmp_path, capsys):
    # threshold 0 keeps every query, so mask files are written even with random weights
    assert main(["segment", "--out", str(tmp_path), "--threshold", "0", "--device", "cpu"]) == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().err
    results = _read_results(tmp_path)
    assert results["random_weights"] is True and results["checkpoint"] is None
    assert results["text"] == ["cat"] and results["device"] == "cpu" and results["dtype"] == "float32"
    (entry,) = results["images"]
    assert entry["image"] == str(SAMPLE_IMAGE) and (entry["height"], entry["width"]) == (300, 451)
    assert len(entry["instances"]) > 0
    scores = [inst["score"] for inst in entry["instances"]]
    assert scores == sorted(scores, reverse=True)
    _check_image_entry(tmp_path, entry)
    assert SAMPLE_IMAGE.stat().st_size <= 200_000


def test_several_images_and_prompts(tmp_path):
    first, second = tmp_path / "a" / "photo.png", tmp_path / "b" / "photo.jpg"
    for path in (first, second):
        path.parent.mkdir()
    Image.open(SAMPLE_IMAGE).save(first)
    Image.open(SAMPLE_IMAGE).convert("L").resize((120, 90)).save(second)  # grayscale, another size
    out = tmp_path / "out"
    argv = ["segment", str(first), str(second), "--text", "cat", "--text", "ear", "--out", str(out),
            "--threshold", "0", "--dtype", "bfloat16", "--device", "cpu", "--format", "png"]
    assert main(argv) == 0
    results = _read_results(out)
    assert results["text"] == ["cat", "ear"] and results["dtype"] == "bfloat16"
    assert [e["image"] for e in results["images"]] == [str(first), str(second)]
    overlays = [e["overlay"] for e in results["images"]]
    assert len(set(overlays)) == 2  # same file stem, distinct outputs
    assert results["images"][1]["height"] == 90 and results["images"][1]["width"] == 120
    for entry in results["images"]:
        assert {inst["prompt"] for inst in entry["instances"]} == {"cat", "ear"}
        _check_image_entry(out, entry)


def test_hf_checkpoint_folder(tmp_path):
    """A checkpoint saved by transformers (tiny config, random weights) loads through --checkpoint."""
    pytest.importorskip("transformers", reason="building an HF checkpoint needs transformers (test extra)")
    import torch
    from transformers import Sam3LiteTextConfig as HFConfig, Sam3LiteTextModel as HFModel

    import sam3lt
    from sam3lt.processor import Sam3LiteTextProcessor

    config = sam3lt.Sam3LiteTextConfig.tiny()
    torch.manual_seed(0)
    HFModel(HFConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})).save_pretrained(
        tmp_path / "ckpt")
    Sam3LiteTextProcessor(size=config.image_size).save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "out"
    assert main(["segment", "--checkpoint", str(tmp_path / "ckpt"), "--out", str(out), "--device", "cpu",
                 "--threshold", "0.1"]) == 0
    results = _read_results(out)
    assert results["random_weights"] is False and results["checkpoint"] == str(tmp_path / "ckpt")
    assert results["image_size"] == config.image_size
    _check_image_entry(out, results["images"][0])


def test_module_help(capsys):
    proc = subprocess.run([sys.executable, "-m", "sam3lt.cli", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "segment" in proc.stdout
    with pytest.raises(SystemExit) as exit_info:  # in-process: a second interpreter would re-import torch
        main(["segment", "--help"])
    assert exit_info.value.code == 0 and "--checkpoint" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["segment", "IMAGE_PLACEHOLDER", "--out", "OUT"], "--text"),
    (["segment", "does/not/exist.jpg", "--text", "cat", "--out", "OUT"], "IMAGE"),
    (["segment", "--text", " ", "--out", "OUT"], "--text"),
])
def test_errors(tmp_path, capsys, argv, message):
    argv = [str(SAMPLE_IMAGE) if a == "IMAGE_PLACEHOLDER" else str(tmp_path) if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_parser_errors_exit_with_usage():
    with pytest.raises(SystemExit):
        main([])  # a subcommand is required
    with pytest.raises(SystemExit):
        main(["segment", "--out", "x", "--dtype", "float64"])


# ---- every error one line, exit status 2, no traceback -------------------------------------------------------
def _one_error_line(capsys, prefix: str) -> str:
    """The error output (progress bars aside) is one line starting with ``prefix``; returns it."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines()
             if line.strip() and not line.startswith(("segment:", "sam3lt: warning:"))]
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


@pytest.mark.parametrize("checkpoint, message", [("missing/ckpt", "does not exist"), ("", "has no config.json"),
                                                 ("model.safetensors", "is a file"), ("bad", "not valid JSON")])
def test_bad_checkpoint(tmp_path, capsys, checkpoint, message):
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    argv = ["segment", "--checkpoint", str(tmp_path / checkpoint), "--out", str(tmp_path / "out"), "--device", "cpu"]
    assert main(argv) == 2
    assert message in _one_error_line(capsys, "sam3lt: error: --checkpoint: ")


def test_unreachable_hub_id(tmp_path, capsys, monkeypatch):
    """A hub id that cannot be fetched (offline here, whatever the network): the same one-line error."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert main(["segment", "--checkpoint", "sam3lt-tests/no-such-model", "--out", str(tmp_path / "out"),
                 "--device", "cpu"]) == 2
    line = _one_error_line(capsys, "sam3lt: error: --checkpoint: ")
    assert "sam3lt-tests/no-such-model" in line and "Hugging Face hub" in line


@pytest.mark.parametrize("option", ["--threshold", "--mask-threshold"])
@pytest.mark.parametrize("value", ["1.5", "-0.1", "nan", "high"])
def test_thresholds_outside_the_unit_interval(tmp_path, capsys, option, value):
    from sam3lt.cli import build_parser

    with pytest.raises(SystemExit) as exit_info:  # parsing only: nothing runs even if the value were accepted
        build_parser().parse_args(["segment", "--out", str(tmp_path), option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err


def test_thresholds_at_the_bounds_are_accepted():
    from sam3lt.cli import build_parser

    args = build_parser().parse_args(["segment", "--out", "x", "--threshold", "1", "--mask-threshold", "0"])
    assert (args.threshold, args.mask_threshold) == (1.0, 0.0)


def _truncated_jpeg(path):
    path.write_bytes(SAMPLE_IMAGE.read_bytes()[:200])


@pytest.mark.parametrize("write", [lambda p: p.write_bytes(b"not an image"), _truncated_jpeg,
                                   lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)])
def test_unreadable_image(tmp_path, capsys, write):
    """An unreadable input is a failed input (exit status 1, a line in errors.jsonl), not a usage error."""
    image = tmp_path / "broken.jpg"
    write(image)
    assert main(["segment", str(image), "--text", "cat", "--out", str(tmp_path / "out"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    (line,) = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("sam3lt: error:")]
    assert line.startswith(f"sam3lt: error: IMAGE: cannot read {image}: "), err
    reason = line.split(f"cannot read {image}: ", 1)[1]
    assert reason and ".cpp" not in reason and "csrc" not in reason and "decode_" not in reason, line
    (entry,) = [json.loads(row) for row in (tmp_path / "out" / "errors.jsonl").read_text().splitlines()]
    assert entry == {"file": str(image), "error": reason}


def test_decode_error_reason():
    from sam3lt.cli import decode_error_reason

    located = RuntimeError("decode_jpeg, /__w/vision/vision/pytorch/vision/torchvision/csrc/io/image/cpu/"
                           "decode_jpeg.cpp:171, Image is incomplete or truncated")
    assert decode_error_reason(located) == "Image is incomplete or truncated"
    api = RuntimeError('torch_call_dispatcher( "aten::from_file", "", stack.data(), TORCH_ABI_VERSION) API call '
                       'failed at /__w/vision/vision/torchvision/csrc/io/image/cpu/read_write_file.cpp, line 36')
    assert ".cpp" not in decode_error_reason(api) and "not a readable image" in decode_error_reason(api)
    assert decode_error_reason(OSError("cannot identify image file 'x.jpg'")) == "cannot identify image file 'x.jpg'"


# ---- sam3lt bench --families: the op families of bench/ops, one list --------------------------------------------
def _bench_families():
    from sam3lt.cli import bench_suite

    if bench_suite() is None:
        pytest.skip("the benchmark suite is in the source checkout only")
    return list(importlib.import_module("bench.ops").FAMILIES)


def test_bench_families_listed_and_accepted(capsys):
    from sam3lt.cli import build_parser

    families = _bench_families()
    assert {"window_attention", "cross_attention", "repmixer", "upsample", "layer_norm", "linear", "box_bias",
            "box_refine"} <= set(families)
    assert build_parser().parse_args(["bench", "--families", "attention"]).families == ["window_attention"]
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert all(name in help_text for name in families), help_text
    for name in families:
        assert build_parser().parse_args(["bench", "--families", name]).families == [name]
    assert build_parser().parse_args(["bench", "--families", ",".join(families)]).families == families


@pytest.mark.parametrize("value", ["nope", "attention,nope", ""])
def test_bench_unknown_family_refused(capsys, value):
    from sam3lt.cli import build_parser

    _bench_families()
    with pytest.raises(SystemExit) as exit_info:  # parsing only: an accepted value must not start a benchmark
        build_parser().parse_args(["bench", "--families", value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --families: unknown op family" in err and "box_refine" in err, err
