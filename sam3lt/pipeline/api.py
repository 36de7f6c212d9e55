""":func:`segment_dataset`: the whole pipeline behind one call (the ``sam3lt segment`` command is a shell over it)."""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..fast import FastSam3LiteText
from ..model import Sam3LiteTextModel
from .decode import MAX_PIXELS, PREPROCESS_MODES, decode
from .inputs import UsageError, expand
from .output import DATASET, ERRORS, FORMATS, JOURNAL, PREDICTIONS, RESULTS, Journal, Writer, check_job
from .overlay import RANDOM_WEIGHTS_NOTE, render_overlay
from .results import write_final
from .runner import STAGES, Runner, load_model

ENGINES = ("local", "ray")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Summary:
    """What a :func:`segment_dataset` call did. ``exit_code``: 0 all inputs segmented, 1 some failed."""
    out: Path
    total: int  # inputs of the job
    skipped: int  # already finished by an earlier run (not computed again)
    segmented: int  # segmented by this run
    failed: int  # inputs of the job that failed (this run or earlier), listed in errors.jsonl
    instances: int  # instances found by this run
    seconds: float  # wall time of this run's segmenting
    times: dict = field(default_factory=dict)  # seconds per stage (decode / preprocess summed over workers)
    engine: str = "local"
    interrupted: bool = False

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    @property
    def images_per_s(self) -> float:
        return self.segmented / self.seconds if self.seconds > 0 else 0.0

    def lines(self) -> list[str]:
        if self.skipped == self.total and not self.interrupted:
            head = f"nothing to do: all {self.total} input(s) already finished in {self.out}"
        else:
            head = (f"{self.segmented} image(s) segmented ({self.instances} instance(s)) in {self.seconds:.1f} s, "
                    f"{self.images_per_s:.2f} images/s ({self.engine}); {self.skipped} already done")
        lines = [head + f"; {self.failed} failed" + (f" (see {self.out / 'errors.jsonl'})" if self.failed else "")]
        if self.segmented:
            lines.append("time per stage: " + ", ".join(f"{k} {self.times.get(k, 0.0):.2f} s" for k in STAGES)
                         + " (decode and preprocess summed over workers)")
        if self.interrupted:
            lines.append("interrupted: what finished is kept; run the same command again to continue")
        return lines


def segment_dataset(inputs, text=None, out="sam3lt-out", model=None, *, processor=None, format: str | None = None,
                    overlays: bool = False, batch_size: int = 4, workers: int | None = None, device=None,
                    dtype=None, fast: bool = False, preprocess: str = "workers", threshold: float = 0.3,
                    mask_threshold: float = 0.5, prompt_batch: int = 64, max_pixels: int = MAX_PIXELS, seed: int = 0,
                    engine: str = "local", ray_address: str | None = None, ray_actors: int | None = None,
                    ray_actor_cpus: float | None = None, progress: bool = True) -> Summary:
    """Segment every image of ``inputs`` with the prompts ``text`` and write the results to ``out``.

    Args:
        inputs: image files, folders (recursive), glob patterns, or ``.jsonl`` / ``.csv`` manifests (a ``path``
            column and an optional ``text`` column of per-image prompts that replace ``text``); one or a list.
        text: prompts for every image (a string or a list).
        out: output folder; a run stopped part-way continues when called again with the same settings.
        model: a checkpoint folder or hub id, a :class:`Sam3LiteTextModel`, a :class:`FastSam3LiteText`, or None
            for a tiny random-weight model (a dry run: its masks mean nothing).
        processor: the :class:`Sam3LiteTextProcessor` (default: the checkpoint's, or the bundled one).
        format: ``"coco"`` (dataset.json + predictions.json; default for more than one image) or ``"png"``
            (mask and overlay PNGs + results.json; default for one image).
        overlays: also write an overlay PNG per image in COCO format (``OUT/overlays/``).
        batch_size: images per vision forward. workers: DataLoader processes (default: min(4, CPUs - 1)).
        device, dtype: where and in what precision the model runs (default: cuda when available; a given
            model's dtype, else float32). A given model is moved and cast in place.
        fast: run on ``sam3lt.optimize``'s fast path (static buffers; CUDA graphs on a GPU).
        preprocess: ``"workers"`` (resize in the workers, bitwise the processor) or ``"device"`` (resize on the
            device from uint8, within one uint8 level of the processor).
        threshold, mask_threshold: score and mask-probability thresholds, as in the processor.
        prompt_batch: at most this many prompts per heads call. max_pixels: larger images fail (errors.jsonl).
        engine: ``"local"`` or ``"ray"`` (Ray Data: ``ray_address``, ``ray_actors`` model actors, default one per
            GPU or 1 on the CPU, with ``ray_actor_cpus`` CPUs each).
        progress: show a progress bar and report failures on stderr.

    Returns:
        A :class:`Summary`. Bad arguments raise :class:`UsageError` (a ``ValueError``) naming the argument.
    """
    text = _check_text(text)
    dtype = _dtype(dtype, model)
    workers = _check_arguments(format=format, engine=engine, preprocess=preprocess, batch_size=batch_size,
                               prompt_batch=prompt_batch, max_pixels=max_pixels, threshold=threshold,
                               mask_threshold=mask_threshold, ray_actors=ray_actors, ray_actor_cpus=ray_actor_cpus,
                               workers=workers)
    if engine == "ray":
        from .ray_engine import import_ray

        import_ray()  # before any work: without Ray, say how to install it
        ray_device, device = device, torch.device("cpu")  # the actors pick theirs (a GPU when the cluster has one)
    else:
        device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if device.type == "cuda" and not torch.cuda.is_available():
            raise UsageError("device: cuda was asked for but torch sees no CUDA device")
    if not (model is None or isinstance(model, (str, os.PathLike, Sam3LiteTextModel, FastSam3LiteText))):
        raise UsageError(f"model: expected a checkpoint path or hub id, a Sam3LiteTextModel or a FastSam3LiteText, "
                         f"got {type(model).__name__}")

    items = expand(inputs, text)
    items = [dataclasses.replace(item, prompts=item.prompts or tuple(text)) for item in items]
    fmt = format or ("coco" if len(items) > 1 else "png")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = str(model) if isinstance(model, (str, os.PathLike)) else None
    settings = {"text": text, "model": checkpoint or (None if model is None else "<in-memory model>"),
                "seed": seed if model is None else None, "dtype": str(dtype).removeprefix("torch."), "fast": fast,
                "preprocess": preprocess, "threshold": threshold, "mask_threshold": mask_threshold, "format": fmt,
                "overlays": overlays or fmt == "png"}
    check_job(out, settings)

    journal = Journal(out / JOURNAL)
    pending = [item for item in items if item.key not in journal.records]
    skipped = len(items) - len(pending)
    random_weights = model is None
    # ray:auto -- GPU actors when the cluster has GPUs, else CPU actors
    where = f"ray:{ray_device or 'auto'}" if engine == "ray" else str(device)
    info = {"text": text, "checkpoint": checkpoint, "random_weights": random_weights, "device": where,
            "dtype": settings["dtype"], "threshold": threshold, "mask_threshold": mask_threshold}
    times = dict.fromkeys(STAGES, 0.0)
    interrupted, start = False, time.perf_counter()
    writer = bar = None
    final_files = (DATASET, PREDICTIONS) if fmt == "coco" else (RESULTS,)
    finished = not pending and all((out / name).is_file() for name in (*final_files, ERRORS))
    try:
        if not finished:  # the final files need the model's image size even when every input is done
            model, processor = _model_and_processor(model, processor, device, dtype, seed)
            info["image_size"] = processor.size[0]
        if pending:
            bar = _progress_bar(len(pending), progress)
            render = _overlay_renderer(checkpoint, random_weights, max_pixels)
            writer = Writer(out, journal, fmt=fmt, overlays=overlays, render=render,
                            on_done=_reporter(bar, progress))
            common = dict(batch_size=batch_size, max_pixels=max_pixels, times=times)
            if engine == "local":
                from .local import run_local

                runner = Runner.build(model, processor, device=device, dtype=dtype, fast=fast, prep_mode=preprocess,
                                      threshold=threshold, mask_threshold=mask_threshold, prompt_batch=prompt_batch,
                                      image_batch=batch_size)
                run_local(pending, runner, writer, workers=workers, **common)
            else:
                from .ray_engine import run_ray

                run_ray(pending, model, processor, writer, device=ray_device, dtype=dtype, fast=fast,
                        preprocess=preprocess, threshold=threshold, mask_threshold=mask_threshold,
                        prompt_batch=prompt_batch, address=ray_address, actors=ray_actors,
                        actor_cpus=ray_actor_cpus, **common)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if writer is not None:
            writer.close()  # drains the queue: every image computed is written
            times["write"] = writer.seconds
        journal.close()
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    if not finished:  # a finished job's files stay as they are: a rerun does nothing
        write_final(out, items, journal.records, fmt=fmt, text=text, info=info)
    failed = sum("error" in journal.records.get(item.key, {}) for item in items)
    return Summary(out=out, total=len(items), skipped=skipped,
                   segmented=(writer.finished - writer.failed) if writer else 0, failed=failed,
                   instances=writer.instances if writer else 0, seconds=seconds if pending else 0.0, times=times,
                   engine=engine, interrupted=interrupted)


def _check_arguments(*, format, engine, preprocess, batch_size, prompt_batch, max_pixels, threshold,
                     mask_threshold, ray_actors, ray_actor_cpus, workers) -> int:
    """:class:`UsageError` for a bad value, naming the argument; returns ``workers`` (None: the default)."""
    _check_choice("format", format, FORMATS, allow_none=True)
    _check_choice("engine", engine, ENGINES)
    _check_choice("preprocess", preprocess, PREPROCESS_MODES)
    for name, value in (("batch_size", batch_size), ("prompt_batch", prompt_batch), ("max_pixels", max_pixels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{name}: expected a positive integer, got {value!r}")
    for name, value in (("threshold", threshold), ("mask_threshold", mask_threshold)):
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise UsageError(f"{name}: expected a number in [0, 1], got {value!r}")
    if ray_actors is not None and (isinstance(ray_actors, bool) or not isinstance(ray_actors, int) or ray_actors < 1):
        raise UsageError(f"ray_actors: expected a positive number of actors, got {ray_actors!r}")
    if ray_actor_cpus is not None and (not isinstance(ray_actor_cpus, (int, float)) or not ray_actor_cpus > 0):
        raise UsageError(f"ray_actor_cpus: expected a positive number of CPUs (fractions allowed), got "
                         f"{ray_actor_cpus!r}")
    workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise UsageError(f"workers: expected a number of processes >= 0, got {workers!r}")
    return workers


def _dtype(dtype, model) -> torch.dtype:
    """``dtype`` as a torch dtype; None: the given model's own, else float32."""
    if dtype is None:
        plain = model.model if isinstance(model, FastSam3LiteText) else model
        return plain.dtype if isinstance(plain, Sam3LiteTextModel) else torch.float32
    name = dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")
    _check_choice("dtype", name, DTYPES)
    return DTYPES[name]


def _check_text(text) -> list[str]:
    prompts = [text] if isinstance(text, str) else list(text or [])
    for prompt in prompts:
        if not isinstance(prompt, str) or not prompt.strip():
            raise UsageError(f"text: prompts must be non-empty strings, got {prompt!r}")
    return [p.strip() for p in prompts]


def _check_choice(name: str, value, choices, allow_none: bool = False) -> None:
    if not (value in choices or (allow_none and value is None)):
        raise UsageError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")


def _model_and_processor(model, processor, device, dtype, seed):
    """The model (loaded when given as a checkpoint or None) and its processor."""
    from ..processor import Sam3LiteTextProcessor

    if model is None or isinstance(model, (str, os.PathLike)):
        checkpoint = None if model is None else str(model)
        try:
            model, default_processor, _ = load_model(checkpoint, "cpu", dtype, seed)  # the runner moves it
        except (OSError, ValueError) as err:  # unreachable hub id, corrupt or mismatched checkpoint
            if checkpoint is None:
                raise
            raise UsageError(f"model: {str(err).removeprefix('path_or_hub_id: ')}") from err
        return model, processor or default_processor
    plain = model.model if isinstance(model, FastSam3LiteText) else model
    return model, processor or Sam3LiteTextProcessor(size=plain.config.image_size)


def _progress_bar(total: int, show: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="segment", unit="image", file=sys.stderr, disable=not show, dynamic_ncols=True)


def _reporter(bar, show: bool):
    def on_done(writer, record):
        bar.update(1)
        bar.set_postfix(failed=writer.failed, refresh=False)
        if show and "error" in record:
            bar.write(f"sam3lt: error: IMAGE: cannot read {record['key']}: {record['error']}", file=sys.stderr)
    return on_done


def _overlay_renderer(checkpoint, random_weights: bool, max_pixels: int):
    """render(item, instances) -> the overlay image, the picture decoded again (the workers sent it resized)."""
    from PIL import Image

    def render(item, instances):
        picture = Image.fromarray(decode(item.key, max_pixels).permute(1, 2, 0).numpy())
        title = (f"sam3lt | {', '.join(repr(p) for p in item.prompts)} | {len(instances)} instance(s) | "
                 f"{checkpoint or 'no checkpoint'}")
        return render_overlay(picture, instances, title, RANDOM_WEIGHTS_NOTE if random_weights else None)
    return render
