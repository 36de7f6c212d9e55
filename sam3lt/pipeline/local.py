"""The local engine: DataLoader workers decode and resize, the main thread runs the model, a thread writes.

Overlap: the workers prefetch batches while the model runs; on CUDA the batches come in pinned memory and the
next batch's copy to the GPU is issued on a side stream before the current batch is computed; post-processing
runs on the device; RLE encoding and file writes happen in the writer thread (:class:`.output.Writer`).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset

from .decode import Preprocess, load
from .runner import Runner, add_times


class ImageFiles(Dataset):
    """``(position, load result)`` per pending item: decoding and worker-side preprocessing, or the error."""

    def __init__(self, items, prep: Preprocess, max_pixels: int):
        self.keys, self.prep, self.max_pixels = [item.key for item in items], prep, max_pixels

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, n: int):
        return n, load(self.keys[n], self.prep, self.max_pixels)


def collate(samples) -> dict:
    """A batch: the decoded images (stacked when they share a shape), their sizes and positions, the failures
    and the workers' stage times."""
    ok = [(n, r) for n, r in samples if "error" not in r]
    pixels = [r["pixels"] for _, r in ok]
    if pixels and len({tuple(p.shape) for p in pixels}) == 1:
        pixels = torch.stack(pixels)
    return {"positions": [n for n, _ in ok], "sizes": [r["size"] for _, r in ok], "pixels": pixels,
            "failed": [(n, r["error"]) for n, r in samples if "error" in r],
            "times": {"decode": sum(r["decode_s"] for _, r in samples),
                      "preprocess": sum(r["preprocess_s"] for _, r in samples)}}


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)  # workers share the cores with the model's threads


def _move(pixels, device: torch.device):
    if isinstance(pixels, torch.Tensor):
        return pixels.to(device, non_blocking=True)
    return [p.to(device, non_blocking=True) for p in pixels]


def _on_device(loader, device: torch.device):
    """(batch, its pixels on the device), one batch ahead on a side stream when on CUDA."""
    if device.type != "cuda":
        for batch in loader:
            yield batch, _move(batch["pixels"], device)
        return
    stream, ahead = torch.cuda.Stream(device), None
    for batch in loader:
        with torch.cuda.stream(stream):
            moved = _move(batch["pixels"], device)
            ready = torch.cuda.Event()
            ready.record(stream)
        if ahead is not None:
            yield _wait(*ahead)
        ahead = (batch, moved, ready)
    if ahead is not None:
        yield _wait(*ahead)


def _wait(batch, moved, ready):
    current = torch.cuda.current_stream()
    current.wait_event(ready)
    for t in [moved] if isinstance(moved, torch.Tensor) else moved:
        t.record_stream(current)  # allocated on the side stream, used on this one
    return batch, moved


def run_local(items, runner: Runner, writer, *, batch_size: int, workers: int, max_pixels: int, times: dict):
    """Segment ``items`` (the pending inputs) through ``runner``, handing every result to ``writer``."""
    loader = DataLoader(ImageFiles(items, runner.prep, max_pixels), batch_size=batch_size, num_workers=workers,
                        collate_fn=collate, pin_memory=runner.cuda, worker_init_fn=_one_thread if workers else None,
                        prefetch_factor=4 if workers else None)
    for batch, pixels in _on_device(loader, runner.device):
        add_times(times, batch["times"])
        for n, error in batch["failed"]:
            writer.put(items[n], error=error)
        if not batch["positions"]:
            continue
        chosen = [items[n] for n in batch["positions"]]
        results, stage_times = runner.segment(pixels, batch["sizes"], [item.prompts for item in chosen])
        add_times(times, stage_times)
        for item, size, instances in zip(chosen, batch["sizes"], results):
            writer.put(item, size=size, instances=instances)
