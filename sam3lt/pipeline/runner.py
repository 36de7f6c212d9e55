"""The model side of the pipeline: one :class:`Runner` per device (the local loop's, or one per Ray actor).

Per batch of images: the vision encoder runs once on the whole batch, then each image runs its prompts through
the heads in chunks of at most ``prompt_batch`` (the fast path's largest prompt bucket), with the prompt features
encoded once per distinct prompt list and cached. Post-processing (scores, boxes, mask upsampling to the
original size and thresholding) is the processor's, on the device (``sam3lt.ops.masks_to_binary``); only the
kept masks are copied back.
"""
from __future__ import annotations

import time
from collections import OrderedDict

import torch

from ..fast import FastSam3LiteText, optimize
from ..model import Sam3LiteTextModel, VisionOutput
from ..processor import Sam3LiteTextProcessor
from .decode import Preprocess

TEXT_CACHE_SIZE = 64  # distinct prompt lists whose features stay on the device (manifests may have many)


def load_model(checkpoint: str | None, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """(model, processor, random_weights). Without a checkpoint: a tiny random-weight model, seeded."""
    from ..config import Sam3LiteTextConfig

    if checkpoint is None:
        torch.manual_seed(seed)
        model = Sam3LiteTextModel(Sam3LiteTextConfig.tiny()).to(device=device, dtype=dtype).eval()
        return model, Sam3LiteTextProcessor(size=model.config.image_size), True  # bundled CLIP vocabulary
    model = Sam3LiteTextModel.from_pretrained(checkpoint, dtype=dtype, device=device).eval()
    return model, Sam3LiteTextProcessor.from_pretrained(checkpoint, size=model.config.image_size), False


STAGES = ("decode", "preprocess", "model", "postprocess", "write")  # the summary's time per stage


def add_times(total: dict, more: dict) -> None:
    """Add ``more``'s stage seconds into ``total`` (decode / preprocess: summed over worker processes)."""
    for name in STAGES:
        total[name] = total.get(name, 0.0) + float(more.get(name, 0.0))


class Runner:
    """Segments batches of preprocessed images on one device; see the module docstring."""

    def __init__(self, model, processor: Sam3LiteTextProcessor, prep: Preprocess, threshold: float,
                 mask_threshold: float, prompt_batch: int = 64):
        self.model = model
        self.fast = isinstance(model, FastSam3LiteText)
        plain = model.model if self.fast else model
        self.device, self.dtype = plain.device, plain.dtype
        self.processor, self.prep = processor, prep
        self.threshold, self.mask_threshold = threshold, mask_threshold
        self.prompt_batch = min(prompt_batch, max(model.prompt_buckets)) if self.fast else prompt_batch
        self._text: OrderedDict[tuple, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self.cuda = self.device.type == "cuda"

    @classmethod
    def build(cls, model, processor, *, device, dtype, fast: bool, prep_mode: str, threshold, mask_threshold,
              prompt_batch: int, image_batch: int) -> "Runner":
        """From a model (moved to ``device`` / ``dtype``), on ``sam3lt.optimize``'s fast path with ``fast`` (its
        buckets: the batch size, and prompt chunks up to ``prompt_batch``). A given FastSam3LiteText runs as is."""
        if not isinstance(model, FastSam3LiteText):
            model = model.to(device=device, dtype=dtype).eval()
            if fast:
                # on the CPU an fp32 model takes optimize's CPU plan (bf16 GEMMs only where the CPU has them)
                on_cpu = torch.device(device).type == "cpu" and dtype == torch.float32
                model = optimize(model, dtype=None if on_cpu else dtype, device=device, image_batches=(image_batch,),
                                 prompt_buckets=sorted({1, 4, 16, min(64, prompt_batch)}))
        return cls(model, processor, Preprocess(processor, prep_mode), threshold, mask_threshold, prompt_batch)

    def _sync(self) -> None:
        if self.cuda:  # the stage times are host waits otherwise: GPU time would land in the next stage
            torch.cuda.synchronize(self.device)

    def _text_features(self, prompts: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        cached = self._text.get(prompts)
        if cached is None:
            ids, mask = self.processor.tokenizer(list(prompts))
            ids, mask = ids.to(self.device), mask.to(self.device)
            if self.fast:
                features = self.model.encode_text(ids, mask)
            else:
                features = self.model.get_text_features(ids, mask).pooler_output
            cached = self._text[prompts] = (features, mask)
            if len(self._text) > TEXT_CACHE_SIZE:
                self._text.popitem(last=False)
        self._text.move_to_end(prompts)
        return cached

    @torch.inference_mode()
    def segment(self, pixels, sizes: list[tuple[int, int]], prompts: list[tuple[str, ...]]
                ) -> tuple[list[list[dict]], dict]:
        """uint8 images on the device (a (B, 3, S, S) batch, or a list of full-size ones in device-preprocess
        mode) with their original (height, width) and prompts -> per image its instances (``prompt``, ``score``,
        ``box`` xyxy in pixels, ``mask`` (H, W) bool numpy), best first; and the stage times."""
        start = time.perf_counter()
        pixel_values = self.prep.device(pixels).to(self.dtype)
        self._sync()
        prep_s = time.perf_counter() - start
        model_s = post_s = 0.0
        results = []
        vision = self._encode_images(pixel_values)
        for i, (size, image_prompts) in enumerate(zip(sizes, prompts)):
            one = VisionOutput(vision.last_hidden_state[i:i + 1], tuple(f[i:i + 1] for f in vision.fpn_hidden_states),
                               tuple(p[i:i + 1] for p in vision.fpn_position_encoding))
            instances = []
            for at in range(0, len(image_prompts), self.prompt_batch):
                chunk = tuple(image_prompts[at:at + self.prompt_batch])
                t0 = time.perf_counter()
                text, mask = self._text_features(chunk)
                outputs = self.model(vision_embeds=one, text_embeds=text, attention_mask=mask)
                self._sync()
                t1 = time.perf_counter()
                instances += self._postprocess(outputs, chunk, size)
                t2 = time.perf_counter()
                model_s, post_s = model_s + t1 - t0, post_s + t2 - t1
            results.append(sorted(instances, key=lambda inst: -inst["score"]))
        vision_s = time.perf_counter() - start - prep_s - model_s - post_s
        return results, {"preprocess": prep_s, "model": model_s + vision_s, "postprocess": post_s}

    def _encode_images(self, pixel_values: torch.Tensor) -> VisionOutput:
        if self.fast:
            return self.model.encode_image(pixel_values)
        return self.model.get_vision_features(pixel_values)

    def _postprocess(self, outputs, prompts: tuple[str, ...], size: tuple[int, int]) -> list[dict]:
        results = self.processor.post_process_instance_segmentation(
            outputs, self.threshold, self.mask_threshold, target_sizes=[tuple(size)] * len(prompts))
        instances = []
        for prompt, result in zip(prompts, results):
            if not len(result["scores"]):
                continue
            masks = result["masks"].cpu().numpy()  # only the kept masks leave the device
            for score, box, mask in zip(result["scores"].float().cpu().tolist(),
                                        result["boxes"].float().cpu().tolist(), masks):
                instances.append({"prompt": prompt, "score": score, "box": box, "mask": mask})
        return instances
