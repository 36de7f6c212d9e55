"""The Ray Data engine (``engine="ray"``, ``sam3lt segment --ray``): imported only when asked for.

read (the pending inputs) -> decode + worker-side preprocessing in Ray tasks -> a fixed pool of model actors
(one per GPU with ``num_gpus=1``, or CPU actors) that segment batches and encode the kept masks as RLE -> the
driver, whose writer thread writes the same ``OUT/`` files as the local engine.

Faults: Ray Data restarts a dead actor and retries its batch (``max_restarts=-1``, ``max_task_retries=-1`` are
its defaults for actor pools); the record writes each input once even if a batch was computed twice. A bad
image is a row with an ``error``, not a failed task.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import torch

from ..fast import FastSam3LiteText
from .decode import Preprocess, load
from .inputs import UsageError
from .output import encode_instance
from .runner import Runner, add_times

INSTALL_HINT = "pip install 'sam3lt[ray]' (or pip install 'ray[data]')"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 -- the Data library is a separate extra of ray
    except ImportError as err:
        raise UsageError(f"engine: the Ray engine needs Ray Data, which is not installed ({err}); "
                         f"{INSTALL_HINT}") from None
    return ray


def _load_row(row: dict, prep: Preprocess, max_pixels: int) -> dict:
    """A Ray task's share of the work: decode and preprocess one input (a failure is a row with an error)."""
    result = load(row["key"], prep, max_pixels)
    pixels = result.get("pixels")
    size = result.get("size", (0, 0))
    return {"n": row["n"], "prompts": row["prompts"], "error": result.get("error", ""),
            "pixels": np.zeros((3, 1, 1), np.uint8) if pixels is None else pixels.numpy(),
            "height": int(size[0]), "width": int(size[1]),
            "decode_s": result["decode_s"], "preprocess_s": result["preprocess_s"]}


class SegmentActor:
    """One model on one device (the actor's GPU, else the CPU); called on batches of decoded rows."""

    def __init__(self, model_ref, processor, use_gpu: bool, dtype, fast, prep_mode, threshold, mask_threshold,
                 prompt_batch, image_batch: int, cpus: float):
        import ray

        model = ray.get(model_ref) if isinstance(model_ref, ray.ObjectRef) else model_ref
        device = torch.device("cuda" if use_gpu else "cpu")
        if not use_gpu:
            torch.set_num_threads(max(1, int(cpus)))
        self.runner = Runner.build(model, processor, device=device, dtype=dtype, fast=fast, prep_mode=prep_mode,
                                   threshold=threshold, mask_threshold=mask_threshold, prompt_batch=prompt_batch,
                                   image_batch=image_batch)

    def __call__(self, batch: dict) -> dict:
        rows = len(batch["n"])
        ok = [i for i in range(rows) if not batch["error"][i]]
        instances = [""] * rows
        times = {"model": 0.0, "postprocess": 0.0, "preprocess": 0.0}
        if ok:
            pixels = [torch.from_numpy(np.array(batch["pixels"][i])).to(self.runner.device) for i in ok]
            if len({tuple(p.shape) for p in pixels}) == 1:
                pixels = torch.stack(pixels)
            sizes = [(int(batch["height"][i]), int(batch["width"][i])) for i in ok]
            prompts = [tuple(json.loads(batch["prompts"][i])) for i in ok]
            results, times = self.runner.segment(pixels, sizes, prompts)
            for i, found in zip(ok, results):
                instances[i] = json.dumps([encode_instance(inst) for inst in found])
        return {"n": batch["n"], "error": batch["error"], "height": batch["height"], "width": batch["width"],
                "instances": np.array(instances, dtype=object),
                "decode_s": batch["decode_s"], "preprocess_s": batch["preprocess_s"],
                # the batch's device-side times, carried by its first row
                "model_s": np.array([times["model"]] + [0.0] * (rows - 1)),
                "postprocess_s": np.array([times["postprocess"]] + [0.0] * (rows - 1)),
                "device_preprocess_s": np.array([times["preprocess"]] + [0.0] * (rows - 1))}


def run_ray(items, model, processor, writer, *, device, dtype, fast, preprocess, threshold, mask_threshold,
            prompt_batch, address, actors, actor_cpus, batch_size, max_pixels, times) -> None:
    """Segment ``items`` on a Ray cluster (joined at ``address``, or started locally); see the module docstring."""
    ray = import_ray()
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING, configure_logging=False)
    try:
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if device is not None and torch.device(device).type == "cuda" and gpus == 0:
            raise UsageError("device: cuda was asked for but the Ray cluster has no GPU")
        use_gpu = gpus > 0 and (device is None or torch.device(device).type == "cuda")
        size = actors or (gpus if use_gpu else 1)
        cpus = actor_cpus if actor_cpus is not None else 1.0
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the pipeline's own bar counts written images
        plain = model.model if isinstance(model, FastSam3LiteText) else model  # the actors optimise their own
        rows = [{"n": n, "key": item.key, "prompts": json.dumps(list(item.prompts))} for n, item in enumerate(items)]
        blocks = -(-len(rows) // (4 * batch_size))  # small blocks: decoding spreads over the cluster's CPUs
        data = (ray.data.from_items(rows, override_num_blocks=blocks)
                .map(_load_row, fn_kwargs={"prep": Preprocess(processor, preprocess), "max_pixels": max_pixels})
                .map_batches(SegmentActor, batch_size=batch_size, batch_format="numpy",
                             compute=ray.data.ActorPoolStrategy(size=size), num_gpus=1 if use_gpu else 0,
                             num_cpus=cpus,
                             fn_constructor_kwargs={
                                 "model_ref": ray.put(plain.to("cpu")), "processor": processor, "use_gpu": use_gpu,
                                 "dtype": dtype, "fast": fast or plain is not model, "prep_mode": preprocess,
                                 "threshold": threshold, "mask_threshold": mask_threshold,
                                 "prompt_batch": prompt_batch, "image_batch": batch_size, "cpus": cpus}))
        for row in data.iter_rows():
            item = items[int(row["n"])]
            add_times(times, {"decode": row["decode_s"], "preprocess": row["preprocess_s"] +
                              row["device_preprocess_s"], "model": row["model_s"],
                              "postprocess": row["postprocess_s"]})
            if row["error"]:
                writer.put(item, error=str(row["error"]))
            else:
                writer.put(item, size=(int(row["height"]), int(row["width"])),
                           instances=json.loads(row["instances"]))
    finally:
        if started:
            ray.shutdown()
