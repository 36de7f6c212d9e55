"""Everything the pipeline writes under ``OUT/``, and how a run resumes.

* ``progress.jsonl``: the append-only record of finished inputs, one JSON line each (its instances with
  compressed-RLE masks, or its error), flushed line by line. It is the only state a run keeps: a rerun skips
  the keys it holds. A line cut short by a kill is dropped (and cut off the file) when the record is reopened.
* ``job.json``: the settings that change results; a rerun with other settings is refused rather than mixed.
* Final files, rebuilt from the record at the end of every run: ``dataset.json`` + ``predictions.json`` (COCO)
  or ``results.json`` (PNG format, today's ``sam3lt segment`` layout), and ``errors.jsonl`` (``file``, ``error``).
* Per-image PNGs (mask PNGs in PNG format, overlays) are written before the image's record line.

Every file is written to a temporary name in its folder, then renamed: a reader never sees half a file.
"""
from __future__ import annotations

import fcntl
import json
import os
import queue
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

JOURNAL, JOB = "progress.jsonl", "job.json"
DATASET, PREDICTIONS, RESULTS, ERRORS = "dataset.json", "predictions.json", "results.json", "errors.jsonl"
FORMATS = ("coco", "png")


def atomic_write(path: Path, write) -> None:
    """``write(tmp_path)`` then rename onto ``path`` (atomic on one filesystem)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data, indent: int | None = 2) -> None:
    def write(tmp):
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=indent)
            f.write("\n")
    atomic_write(path, write)


def save_png(path: Path, image: Image.Image) -> None:
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def check_job(out: Path, settings: dict) -> None:
    """Refuse to continue a job in ``out`` made with other settings; record the settings of a new one."""
    from .inputs import UsageError

    path = out / JOB
    if path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))["settings"]
        except (ValueError, KeyError, TypeError):
            raise UsageError(f"out: {path} is not a sam3lt job file; use an empty folder") from None
        changed = sorted(k for k in set(before) | set(settings) if before.get(k) != settings.get(k))
        if changed:
            diff = "; ".join(f"{k}: {before.get(k)!r} then, {settings.get(k)!r} now" for k in changed)
            raise UsageError(f"out: {out} holds a job made with other settings ({diff}); resume with the same "
                             f"settings or use another --out")
        return
    write_json(path, {"settings": settings})


class Journal:
    """``progress.jsonl``: the finished inputs, by key, in the order they finished (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self.records: dict[str, dict] = {}
        if path.is_file():
            data = path.read_bytes()
            complete = data[:data.rfind(b"\n") + 1]
            if len(complete) != len(data):  # the tail of a line being written when the run was killed
                with open(path, "r+b") as f:
                    f.truncate(len(complete))
            for n, line in enumerate(complete.decode("utf-8").splitlines(), start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise ValueError(f"out: {path} line {n} is not valid JSON; it is the run's record and was "
                                     f"changed by hand") from None
                self.records.setdefault(record["key"], record)
        self._file = open(path, "a", encoding="utf-8")
        try:  # one run per OUT at a time: two writers would record images twice
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            from .inputs import UsageError

            raise UsageError(f"out: another run is writing to {path.parent} (its {path.name} is locked); wait for "
                             f"it to finish or use another --out") from None

    def append(self, record: dict) -> None:
        if record["key"] in self.records:  # a retried batch (e.g. a replaced Ray actor): written once only
            return
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()
        self.records[record["key"]] = record

    def close(self) -> None:
        if not self._file.closed:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()


def encode_instance(inst: dict) -> dict:
    """An instance with a (H, W) bool ``mask`` -> the same with a compressed RLE (pycocotools) instead."""
    from pycocotools import mask as mask_utils

    if "rle" in inst:
        return inst
    rle = mask_utils.encode(np.asfortranarray(inst["mask"], dtype=np.uint8))
    return {"prompt": inst["prompt"], "score": inst["score"], "box": inst["box"],
            "rle": {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")},
            "area": int(mask_utils.area(rle))}


def decode_rle(rle: dict) -> np.ndarray:
    from pycocotools import mask as mask_utils

    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode("ascii")}).astype(bool)


class Writer:
    """A background thread that turns each finished image into its files and record line, in arrival order.
    An error in the thread is raised by the next :meth:`put` or by :meth:`close`, never dropped."""

    def __init__(self, out: Path, journal: Journal, *, fmt: str, overlays: bool, render=None, on_done=None,
                 depth: int = 16):
        self.out, self.journal, self.fmt, self.overlays = out, journal, fmt, overlays
        self.render, self.on_done = render, on_done  # render(item, instances) -> image; on_done(self, record)
        self.seconds = 0.0
        self.failed = self.finished = self.instances = 0
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="sam3lt-writer", daemon=True)
        self._thread.start()
        if overlays and fmt == "coco":
            (out / "overlays").mkdir(exist_ok=True)

    def put(self, item, size=None, instances=None, error: str | None = None) -> None:
        self._raise()
        self._queue.put((item, size, instances, error))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self.journal.close()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"writing the outputs failed: {self._error}") from self._error

    def _loop(self) -> None:
        while (task := self._queue.get()) is not None:
            if self._error is not None:
                continue  # drain: the main thread raises at its next put / close
            try:
                start = time.perf_counter()
                record = self._record(*task)
                self.journal.append(record)
                self.seconds += time.perf_counter() - start
                self.finished += 1
                self.failed += "error" in record
                self.instances += len(record.get("instances", ()))
                if self.on_done:
                    self.on_done(self, record)
            except BaseException as err:  # noqa: BLE001 -- handed to the main thread
                self._error = err

    def _record(self, item, size, instances, error) -> dict:
        if error is not None:
            return {"key": item.key, "error": error}
        record = {"key": item.key, "height": int(size[0]), "width": int(size[1]),
                  "instances": [encode_instance(inst) for inst in instances]}
        if self.fmt == "png":
            for k, (inst, entry) in enumerate(zip(instances, record["instances"])):
                entry["mask"] = f"{item.stem}_mask_{k:03d}.png"
                mask = inst["mask"] if "mask" in inst else decode_rle(inst["rle"])
                save_png(self.out / entry["mask"], Image.fromarray(mask.astype(np.uint8) * 255))
        if self.overlays or self.fmt == "png":
            masks = [inst["mask"] if "mask" in inst else decode_rle(inst["rle"]) for inst in instances]
            shown = [dict(inst, mask=mask) for inst, mask in zip(record["instances"], masks)]
            record["overlay"] = (f"{item.stem}_overlay.png" if self.fmt == "png"
                                 else f"overlays/{item.stem}.png")
            save_png(self.out / record["overlay"], self.render(item, shown))
        return record
