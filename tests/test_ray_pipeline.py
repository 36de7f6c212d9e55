"""segment_dataset(engine="ray") on a local Ray cluster started here (2 CPUs; the model actor takes half a CPU
so that decoding tasks can run): the same files and results as the local engine, an actor killed mid-run,
resuming, and the message without Ray."""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

import pytest
import torch
from PIL import Image

from sam3lt.cli import main
from sam3lt.pipeline import UsageError, segment_dataset
from sam3lt.pipeline.runner import load_model
from test_pipeline import MAX_PIXELS, PROMPTS, _photo, read_coco, read_errors, write_bad_images, write_good_images

IMAGES = 40  # for the killed actor: one-image batches in blocks of 4, so the kill lands mid-run
ACTOR_CPUS = 0.5  # on 2 CPUs, a whole-CPU actor leaves one task slot; half leaves the read tasks room


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="the Ray engine needs ray[data] (pip install 'sam3lt[ray]')")
    pytest.importorskip("ray.data", reason="the Ray engine needs ray[data] (pip install 'sam3lt[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model():
    return load_model(None, "cpu", torch.float32, seed=0)[0]


def _predictions(out):
    return sorted(read_coco(out)[2], key=lambda p: (p["image_id"], p["category_id"], -p["score"]))


def _assert_same_results(a, b):
    pa, pb = _predictions(a), _predictions(b)
    assert len(pa) == len(pb) > 0
    for x, y in zip(pa, pb):
        assert (x["image_id"], x["category_id"], x["segmentation"]) == (y["image_id"], y["category_id"],
                                                                         y["segmentation"])
        assert abs(x["score"] - y["score"]) <= 1e-5 and max(abs(u - v) for u, v in zip(x["bbox"], y["bbox"])) <= 1e-3


def test_ray_matches_local(tmp_path, ray_cluster, model):
    write_good_images(tmp_path / "in")
    bad = write_bad_images(tmp_path / "in" / "bad")
    args = dict(text=PROMPTS, model=model, threshold=0.0, batch_size=2, max_pixels=MAX_PIXELS, progress=False)
    ray_run = segment_dataset(tmp_path / "in", out=tmp_path / "ray", engine="ray", ray_actor_cpus=ACTOR_CPUS, **args)
    local = segment_dataset(tmp_path / "in", out=tmp_path / "local", workers=0, device="cpu", **args)
    assert (ray_run.segmented, ray_run.failed, ray_run.exit_code) == (local.segmented, len(bad), 1)
    _assert_same_results(tmp_path / "ray", tmp_path / "local")
    assert read_errors(tmp_path / "ray") == read_errors(tmp_path / "local")
    assert json.loads((tmp_path / "ray" / "dataset.json").read_text())["images"] == \
        json.loads((tmp_path / "local" / "dataset.json").read_text())["images"]



def _actor_pids() -> list[int]:
    """Processes of the pipeline's model actors (Ray titles them after the actor class)."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and b"SegmentActor" in open(f"/proc/{entry}/cmdline", "rb").read():
                pids.append(int(entry))
        except OSError:
            pass
    return pids


def test_killed_actor_is_replaced_and_each_image_written_once(tmp_path, ray_cluster, model):
    # after the first block of 4 is written, 9 more keep the actor busy long enough for the kill to land mid-run also
    # on an idle machine (16 images in 2 blocks of 8 all finished before the first poll there)
    folder = tmp_path / "in"
    folder.mkdir()
    for k in range(IMAGES):
        _photo(60 + k, 50).save(folder / f"img{k:02d}.png")
    out = tmp_path / "ray"
    journal = out / "progress.jsonl"
    killed = {}

    def kill_an_actor_mid_run():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            done = journal.read_bytes().count(b"\n") if journal.is_file() else 0
            pids = _actor_pids()
            if done >= 1 and pids:  # the first block is written; the others are still to come
                os.kill(pids[0], signal.SIGKILL)
                killed.update(pid=pids[0], done=done)
            time.sleep(0.01)

    watcher = threading.Thread(target=kill_an_actor_mid_run)
    watcher.start()
    summary = segment_dataset(folder, text=PROMPTS, out=out, model=model, threshold=0.0, batch_size=1,
                              engine="ray", ray_actor_cpus=ACTOR_CPUS, progress=False)
    watcher.join()
    assert killed and killed["done"] < IMAGES, f"no actor was killed before the run ended: {killed}"
    assert (summary.segmented, summary.failed) == (IMAGES, 0)
    keys = [json.loads(line)["key"] for line in journal.read_text().splitlines()]
    assert len(keys) == len(set(keys)) == IMAGES
    local = segment_dataset(folder, text=PROMPTS, out=tmp_path / "local", model=model, threshold=0.0, batch_size=2,
                            workers=0, device="cpu", progress=False)
    assert local.segmented == IMAGES
    _assert_same_results(out, tmp_path / "local")


def test_cli_ray_resumes_a_local_run(tmp_path, ray_cluster, capsys):
    """A local run stopped after 3 images, continued by ``sam3lt segment --ray`` (the tiny model of both: no
    checkpoint, seed 0)."""
    paths = write_good_images(tmp_path / "in")
    out = tmp_path / "out"
    segment_dataset(list(paths.values())[:3], text="cat", out=out, workers=0, device="cpu", batch_size=2,
                    progress=False)
    argv = ["segment", *map(str, paths.values()), "--text", "cat", "--out", str(out), "--batch-size", "2", "--ray",
            "--ray-actor-cpus", str(ACTOR_CPUS)]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"{len(paths) - 3} image(s) segmented" in err and "3 already done" in err and "(ray)" in err, err
    keys = [json.loads(line)["key"] for line in (out / "progress.jsonl").read_text().splitlines()]
    assert sorted(keys) == sorted(map(str, paths.values()))
    assert len(read_coco(out)[0].getImgIds()) == len(paths)


def test_without_ray_the_message_says_how_to_install(tmp_path, monkeypatch, capsys):
    """Runs with or without Ray installed: an import of ray that fails is simulated."""
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.data", None)
    _photo(20, 20).save(tmp_path / "a.png")
    with pytest.raises(UsageError, match=r"^engine: .*pip install 'sam3lt\[ray\]'"):
        segment_dataset(tmp_path / "a.png", text="cat", out=tmp_path / "out", engine="ray", progress=False)
    assert main(["segment", str(tmp_path / "a.png"), "--text", "cat", "--out", str(tmp_path / "out"), "--ray"]) == 2
    err = capsys.readouterr().err
    assert "sam3lt: error: --ray: " in err and "pip install 'sam3lt[ray]'" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "progress.jsonl").exists()  # refused before any work
    assert Image.open(tmp_path / "a.png").size == (20, 20)
