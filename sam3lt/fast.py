"""The inference fast path: :func:`optimize` turns a :class:`Sam3LiteTextModel` into a :class:`FastSam3LiteText`.

What it does to the model (in place; the returned object holds it):

- casts it to ``dtype`` (bf16 by default; the RoPE tables stay fp32, as HF keeps them) on ``device``, folds the
  RepMixer BatchNorms, lets projections of one input share a GEMM (``model.fuse_projections``), switches off the
  input checks that read tensor values (they sync the device), and caches
  what depends on the weights alone: the FPN position encodings and the DETR decoder's first-layer query
  positions and box bias;
- splits the forward into three stages, each run on static input buffers: ``vision`` (ViT + neck), ``text``
  (text encoder + projection) and ``heads`` (DETR encoder/decoder, scoring, masks). On CUDA each stage is
  captured in a CUDA graph per shape bucket: one per image batch size (``image_batches``), one per prompt-count
  bucket (``prompt_buckets``; N prompts run in the smallest bucket ≥ N, padded with copies of the first prompt,
  and the outputs are sliced back), and one heads graph per (images, prompts) pair met. The stages of one call
  hand their outputs to the next through the static buffers, so a full forward is three graph replays and no
  copies. The graphs of a stage share one memory pool. The forward has no host-device sync and no CPU→GPU copy (a
  captured graph cannot have either; ``tests/test_fast.py`` checks it on the CPU with fake CUDA tensors);
- optionally (``compile=True``) compiles each stage with ``torch.compile(fullgraph=True)`` first: the
  ``sam3lt`` ops are custom ops, so there is no graph break, and the CUDA graphs capture the compiled code.

Calls that no bucket covers (other image sizes are rejected by the model's checks; a sequence length other
than ``seq_len``, more images than the largest ``image_batches``, more prompts than the largest bucket, box
prompts, hidden states) run the plain model in the fast path's dtype, eagerly; :attr:`FastSam3LiteText.stats`
counts graph replays and such fallbacks. Without CUDA (or with ``cuda_graphs=False``) the same static-buffer
path runs without capture.

Outputs are copies of the static buffers (``copy_outputs=True``, the default: a later call would overwrite
them); with ``copy_outputs=False`` they are views valid until the next call.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import torch

from . import ops
from .model import Sam3LiteTextModel, Sam3LiteTextOutput, VisionOutput
from .model.common import sine_position_grid
from .model.inputs import check_attention_mask

_OUTPUT_FIELDS = ("pred_masks", "pred_boxes", "pred_logits", "presence_logits", "semantic_seg")


# device type -> its own optimize (same keyword arguments); sam3lt/cpu.py registers "cpu" when sam3lt is imported,
# so that this module does not import the one that builds on it
DEVICE_PLANS: dict[str, Callable] = {}


def _buckets(name: str, values: Sequence[int]) -> tuple[int, ...]:
    try:
        out = tuple(sorted({int(v) for v in values}))
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected a sequence of positive integers, got {values!r}") from None
    if not out or out[0] < 1:
        raise ValueError(f"{name}: expected a non-empty sequence of positive integers, got {values!r}")
    return out


class _Stage:
    """``fn`` over static input buffers: captured in a CUDA graph when ``graph_pool`` is given, else a call.

    ``fn`` takes the static inputs and returns a tuple of tensors (the static outputs when captured)."""

    def __init__(self, fn: Callable, inputs: tuple[torch.Tensor, ...], graph_pool=None, warmup: int = 2):
        self.fn, self.inputs, self.graph = fn, inputs, None
        if graph_pool is None:
            self.outputs = None
            return
        # Warm up on a side stream (Triton compiles, cuBLAS picks its workspace, lazy caches fill), then capture.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(warmup):
                fn(*inputs)
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=graph_pool):
            self.outputs = fn(*inputs)

    def run(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run on ``inputs`` (default: the static buffers). A captured graph reads its static buffers only, so
        there the inputs, if given, must be those very tensors (the previous stage's static outputs)."""
        if self.graph is None:
            return self.fn(*(inputs or self.inputs))
        if inputs and any(a is not b for a, b in zip(inputs, self.inputs)):
            raise RuntimeError("a captured stage reads its static input buffers; other tensors were passed")
        self.graph.replay()
        return self.outputs


class FastSam3LiteText:
    """The fast inference path (see the module docstring); build it with :func:`optimize`.

    Call it like the model: ``fast(pixel_values=..., input_ids=..., attention_mask=...)`` →
    :class:`Sam3LiteTextOutput`. For many prompts on one image: ``vision = fast.encode_image(pixel_values)``
    then ``fast(vision_embeds=vision, input_ids=...)`` per prompt batch. ``text_embeds`` (a tensor or
    :class:`TextOutput` from :meth:`encode_text`) replaces ``input_ids`` as in the model.
    """

    def __init__(self, model: Sam3LiteTextModel, *, cuda_graphs: bool, compile: bool, image_batches, prompt_buckets,
                 seq_len: int, copy_outputs: bool, compile_mode: str | None = None, tune: bool = False):
        self.model = model
        # one image with N prompts runs in the 1-image bucket: it is always there
        self.image_batches = _buckets("image_batches", (1, *image_batches))
        self.prompt_buckets = _buckets("prompt_buckets", prompt_buckets)
        self.seq_len = int(seq_len)
        self.copy_outputs = bool(copy_outputs)
        self.device, self.dtype = model.device, model.dtype
        self.cuda_graphs = bool(cuda_graphs)
        self.compiled = bool(compile)
        self.stats: Counter = Counter()
        cfg = model.config
        vit = cfg.vision_config.backbone_config
        self.image_size = vit.image_size
        self.levels = len(cfg.vision_config.scale_factors) - 1  # the coarsest FPN level is unused
        # One memory pool per stage kind. Graphs sharing a pool may reuse each other's temporaries for their
        # outputs, which is safe only if no graph of the pool runs between one graph's replay and the read of
        # its outputs: true within a kind (one call replays one vision, one text and one heads graph, in that
        # order, and hands each one's outputs on before the next of its kind runs), not across kinds (a text
        # graph captured before a vision graph could overwrite the vision outputs the heads are about to read).
        self._pools = {k: torch.cuda.graph_pool_handle() if self.cuda_graphs else None
                       for k in ("vision", "text", "heads")}
        self._vision: dict[int, _Stage] = {}
        self._text: dict[int, _Stage] = {}
        self._heads: dict[tuple[int, int], _Stage] = {}
        self.tune = bool(tune)
        self._raw = {"vision": self._vision_fn, "text": self._text_fn, "heads": self._heads_fn}
        self._fns = dict(self._raw)
        if compile:
            self._fns = {k: torch.compile(fn, fullgraph=True, dynamic=False, mode=compile_mode)
                         for k, fn in self._raw.items()}
        # position encodings of the levels the heads use: constants the graphs read (held here, so the memory a
        # graph reads can never be freed and reused)
        self._pos = self._position_encodings()
        grid = self._pos[-1].shape[-2:]
        model.detr_decoder.precompute_first_layer(int(grid[0]), int(grid[1]))

    # ---- the three stages (plain functions of tensors; captured or compiled) -------------------------------
    def _vision_fn(self, pixels):
        out = self.model.vision_encoder(pixels, False, num_levels=self.levels, positions=False)
        return (out.last_hidden_state, *out.fpn_hidden_states)

    def _text_fn(self, input_ids, attention_mask):
        last, _ = self.model.text_encoder(input_ids, attention_mask)
        return self.model.text_projection(last), attention_mask.bool()

    def _heads_fn(self, text, text_mask, *feats):
        out = self.model.heads(list(feats), [p.unsqueeze(0) for p in self._pos], text, text_mask)
        return tuple(getattr(out, name) for name in _OUTPUT_FIELDS)

    def _position_encodings(self) -> list[torch.Tensor]:
        cfg = self.model.config.vision_config
        grid = self.image_size // cfg.backbone_config.patch_size
        sizes = [int(grid * s) for s in cfg.scale_factors[:self.levels]]
        with torch.inference_mode(False), torch.no_grad():
            return [sine_position_grid(n, n, cfg.fpn_hidden_size // 2, True, self.dtype, self.device).clone()
                    for n in sizes]

    # ---- stage instances per bucket -------------------------------------------------------------------
    def _stage(self, table: dict, key, name: str, make_inputs: Callable[[], tuple]) -> _Stage:
        if self.model.dtype != self.dtype or self.model.device != self.device:
            # the graphs read the weights where they were at capture: a moved model would leave them stale
            raise RuntimeError(f"FastSam3LiteText: the model was moved or cast after optimize() (now "
                               f"{self.model.dtype} on {self.model.device}); call sam3lt.optimize(model) again")
        stage = table.get(key)
        if stage is None:
            if not self._fns:
                raise RuntimeError("FastSam3LiteText: closed; build a new one with sam3lt.optimize(model)")
            self.stats["captures" if self.cuda_graphs else "buckets"] += 1
            inputs = make_inputs()
            if self.tune:  # measure the backends per op at these shapes, before compiling or capturing
                with ops.autotune():
                    self._raw[name](*inputs)
            stage = table[key] = _Stage(self._fns[name], inputs, self._pools[name])
        return stage

    def _vision_stage(self, images: int) -> _Stage:
        size = self.image_size
        return self._stage(self._vision, images, "vision", lambda: (
            torch.randn(images, 3, size, size, device=self.device, dtype=self.dtype),))

    def _text_stage(self, prompts: int) -> _Stage:
        def inputs():
            ids = torch.randint(1, 1000, (prompts, self.seq_len), device=self.device)
            return ids, torch.ones(prompts, self.seq_len, dtype=torch.long, device=self.device)
        return self._stage(self._text, prompts, "text", inputs)

    def _heads_stage(self, images: int, prompts: int) -> _Stage:
        # inputs: the text stage's and the vision stage's static outputs (one call chains the three stages)
        def inputs():
            text, vision = self._text_stage(prompts), self._vision_stage(images)
            if self.cuda_graphs:
                return (*text.outputs, *vision.outputs[1:])
            # no capture: buffers of their own, filled only when features are given (vision_embeds, text_embeds)
            return tuple(t.clone() for t in (*text.run(), *vision.run()[1:]))
        return self._stage(self._heads, (images, prompts), "heads", inputs)

    def _prompt_bucket(self, prompts: int) -> int | None:
        return next((b for b in self.prompt_buckets if b >= prompts), None)

    def _image_bucket(self, images: int) -> int | None:
        return next((b for b in self.image_batches if b >= images), None)

    def warmup(self, images: Sequence[int] | None = None, prompts: Sequence[int] | None = None) -> "FastSam3LiteText":
        """Capture (or build) the stages for these buckets now rather than at their first call: one image with
        each prompt bucket, and each image batch with one prompt per image."""
        with torch.inference_mode():
            for n in prompts or self.prompt_buckets:
                self._heads_stage(1, n)
            for b in images or self.image_batches:
                if b > 1:  # B images run with B prompts (one per image): the (B, B) heads bucket
                    self._heads_stage(b, b)
        return self

    # ---- public API -----------------------------------------------------------------------------------
    def _fallback(self, reason: str, **kwargs):
        self.stats["fallback: " + reason] += 1
        with torch.inference_mode():
            return self.model(**kwargs)

    @staticmethod
    def _copy_into(dst: torch.Tensor, src: torch.Tensor) -> None:
        """Fill a static buffer: src's rows, then copies of its first row (padding; sliced off later)."""
        n = src.shape[0]
        dst[:n].copy_(src)
        if dst.shape[0] > n:
            dst[n:].copy_(src[:1].expand(dst.shape[0] - n, *src.shape[1:]))

    def _out(self, t: torch.Tensor, n: int) -> torch.Tensor:
        return t[:n].clone() if self.copy_outputs else t[:n]

    def encode_image(self, pixel_values: torch.Tensor) -> VisionOutput:
        """The vision stage: a :class:`VisionOutput` (the levels the heads use) to reuse across prompt batches."""
        self.model._check_pixels(pixel_values)
        images = pixel_values.shape[0]
        bucket = self._image_bucket(images)
        with torch.inference_mode():
            if bucket is None:
                self.stats["fallback: image batch above the largest bucket"] += 1
                out = self.model.get_vision_features(pixel_values.to(self.device, self.dtype))
                feats, last = out.fpn_hidden_states[:self.levels], out.last_hidden_state
            else:
                stage = self._vision_stage(bucket)
                self._copy_into(stage.inputs[0], pixel_values)
                last, *feats = stage.run()
                self.stats["vision"] += 1
                last, feats = self._out(last, images), [self._out(f, images) for f in feats]
            pos = tuple(p.unsqueeze(0).expand(images, -1, -1, -1) for p in self._pos)
            return VisionOutput(last, tuple(feats), pos)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The text stage: projected prompt features (N, seq_len, D) (the model's ``pooler_output``)."""
        self.model._check_ids(input_ids, attention_mask)
        return self._run_text(input_ids, attention_mask, copy=True)[0]

    def _run_text(self, input_ids, attention_mask, copy: bool, bucket: int | None = None):
        prompts = input_ids.shape[0]
        bucket = bucket or self._prompt_bucket(prompts)
        with torch.inference_mode():
            if bucket is None or input_ids.shape[1] != self.seq_len:
                self.stats["fallback: text shape outside the buckets"] += 1
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                return self.model.get_text_features(input_ids, attention_mask).pooler_output, attention_mask.bool()
            stage = self._text_stage(bucket)
            self._copy_into(stage.inputs[0], input_ids)
            if attention_mask is None:
                stage.inputs[1].fill_(1)
            else:
                self._copy_into(stage.inputs[1], attention_mask)
            text, mask = stage.run()
            self.stats["text"] += 1
            return (self._out(text, prompts), self._out(mask, prompts)) if copy else (text, mask)

    def __call__(self, pixel_values: torch.Tensor | None = None, input_ids: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, *, vision_embeds: VisionOutput | None = None,
                 text_embeds=None, input_boxes: torch.Tensor | None = None,
                 input_boxes_labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                 **kwargs) -> Sam3LiteTextOutput:
        self.model._check_sources("FastSam3LiteText", pixel_values, vision_embeds, input_ids, text_embeds, kwargs)
        args = dict(pixel_values=pixel_values, input_ids=input_ids, attention_mask=attention_mask,
                    vision_embeds=vision_embeds, text_embeds=text_embeds, input_boxes=input_boxes,
                    input_boxes_labels=input_boxes_labels, output_hidden_states=output_hidden_states)
        if input_boxes is not None and input_boxes.numel() > 0:
            return self._fallback("box prompts", **args)
        if output_hidden_states:
            return self._fallback("hidden states", **args)

        if pixel_values is not None:
            self.model._check_pixels(pixel_values)
            images = pixel_values.shape[0]
        else:
            if not hasattr(vision_embeds, "fpn_hidden_states"):
                raise TypeError("vision_embeds: expected the output of encode_image / get_vision_features")
            images = vision_embeds.fpn_hidden_states[0].shape[0]
        if input_ids is not None:
            self.model._check_ids(input_ids, attention_mask)
            prompts = input_ids.shape[0]
        else:
            text = text_embeds if isinstance(text_embeds, torch.Tensor) else text_embeds.pooler_output
            prompts = text.shape[0]
            check_attention_mask(attention_mask, self.model.validate_inputs)
        if images != prompts and images != 1:
            raise ValueError(f"pixel_values / input_ids: {images} images and {prompts} prompts; pass one image "
                             f"with any number of prompts, or equal batch sizes")
        image_bucket = self._image_bucket(images)
        prompt_bucket = self._prompt_bucket(prompts)
        if images > 1 and image_bucket is not None:
            prompt_bucket = image_bucket  # one prompt per image: the two buckets are the same
        seq_ok = (input_ids if input_ids is not None else text).shape[1] == self.seq_len
        if image_bucket is None or prompt_bucket is None or not seq_ok:
            return self._fallback("shapes outside the buckets", **args)

        with torch.inference_mode():
            heads = self._heads_stage(image_bucket, prompt_bucket)
            text_buf, mask_buf, *feat_bufs = heads.inputs
            # vision: run the stage (captured, its outputs are the heads' input buffers), or copy the given features
            if pixel_values is not None:
                vision = self._vision[image_bucket]
                self._copy_into(vision.inputs[0], pixel_values)
                feats = vision.run()[1:]
                self.stats["vision"] += 1
            else:
                for dst, src in zip(feat_bufs, vision_embeds.fpn_hidden_states[:self.levels]):
                    self._copy_into(dst, src)
                feats = feat_bufs
            # text: the same
            if input_ids is not None:
                text, mask = self._run_text(input_ids, attention_mask, copy=False, bucket=prompt_bucket)
            else:
                self._copy_into(text_buf, text)
                if attention_mask is None:
                    mask_buf.fill_(True)
                else:
                    self._copy_into(mask_buf, attention_mask.bool())
                text, mask = text_buf, mask_buf
            outputs = heads.run(text, mask, *feats)
            self.stats["heads"] += 1
            return Sam3LiteTextOutput(**{name: self._out(t, prompts) for name, t in zip(_OUTPUT_FIELDS, outputs)})

    def close(self) -> None:
        """Free the graphs and static buffers now (the stage functions refer back to this object, so without
        close() the memory goes only when the garbage collector breaks that cycle). The model stays usable; this
        object does not."""
        self._vision.clear()
        self._text.clear()
        self._heads.clear()
        self._fns = self._raw = {}
        self.model.detr_decoder.precompute_first_layer(None)

    def __repr__(self) -> str:
        return (f"FastSam3LiteText(dtype={self.dtype}, device={self.device}, cuda_graphs={self.cuda_graphs}, "
                f"compile={self.compiled}, image_batches={self.image_batches}, "
                f"prompt_buckets={self.prompt_buckets}, seq_len={self.seq_len})")


def optimize(model: Sam3LiteTextModel, *, dtype: torch.dtype | None = None, device=None,
             cuda_graphs: bool | None = None, compile: bool = False, compile_mode: str | None = None,
             image_batches: Sequence[int] = (1,), prompt_buckets: Sequence[int] = (1, 4, 16, 64),
             seq_len: int = 32, copy_outputs: bool = True, warmup: bool = False,
             tune: bool | None = None) -> FastSam3LiteText:
    """Prepare ``model`` for fast inference (in place) and return the :class:`FastSam3LiteText` that runs it.

    Args:
        dtype: compute dtype (default: bf16 on CUDA; on the CPU :mod:`sam3lt.cpu` decides: an fp32 model with
            bf16 GEMMs where the CPU has native bf16 dot products, else fp32 GEMMs; fp16 and fp32 work too).
        device: where to run (default: the model's device).
        cuda_graphs: capture the stages in CUDA graphs (default: when the device is CUDA).
        compile: ``torch.compile`` each stage first (fullgraph, static shapes); ``compile_mode`` is passed on.
        image_batches: image batch sizes with a graph of their own (a batch runs in the smallest that fits,
            padded with copies of its first image).
        prompt_buckets: prompt counts with a graph of their own (N prompts run in the smallest bucket ≥ N).
        seq_len: the token length the text graphs take (the processor pads prompts to 32).
        copy_outputs: return copies of the static output buffers (default) rather than views of them.
        warmup: capture every bucket now rather than at its first call.
        tune: before a stage is compiled or captured, time every backend that can run each of its op calls at
            those shapes and keep the fastest (:func:`sam3lt.ops.autotune`; default: on CUDA). This is how a
            Triton GEMM with a fused epilogue is chosen over cuBLAS only where it wins on the device at hand.
    """
    if not isinstance(model, Sam3LiteTextModel):
        raise TypeError(f"model: expected a sam3lt Sam3LiteTextModel, got {type(model).__name__}")
    if dtype is not None and dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype: expected torch.float32, torch.float16 or torch.bfloat16, got {dtype}")
    device = torch.device(device) if device is not None else model.device
    if cuda_graphs is None:
        cuda_graphs = device.type == "cuda"
    if cuda_graphs and device.type != "cuda":
        raise ValueError(f"cuda_graphs: CUDA graphs need a CUDA device, the model runs on {device}")
    if seq_len < 1:
        raise ValueError(f"seq_len: expected a positive token count, got {seq_len}")
    if compile and cuda_graphs and compile_mode in ("reduce-overhead", "max-autotune"):
        raise ValueError(f"compile_mode: {compile_mode!r} makes torch.compile capture CUDA graphs of its own inside "
                         f"ours; use 'max-autotune-no-cudagraphs', or cuda_graphs=False")
    if device.type in DEVICE_PLANS:  # cpu: packed GEMMs, bf16 ones only where the CPU has them (sam3lt/cpu.py)
        fast = DEVICE_PLANS[device.type](model, dtype=dtype, compile=compile, image_batches=image_batches,
                                         prompt_buckets=prompt_buckets, seq_len=seq_len, copy_outputs=copy_outputs,
                                         tune=bool(tune))
        return fast.warmup() if warmup else fast
    prepare(model, dtype or torch.bfloat16, device)
    fast = FastSam3LiteText(model, cuda_graphs=cuda_graphs, compile=compile, image_batches=image_batches,
                            prompt_buckets=prompt_buckets, seq_len=seq_len, copy_outputs=copy_outputs,
                            compile_mode=compile_mode, tune=device.type == "cuda" if tune is None else tune)
    return fast.warmup() if warmup else fast


def prepare(model: Sam3LiteTextModel, dtype: torch.dtype, device: torch.device) -> None:
    """The in-place model changes of :func:`optimize` (see the module docstring)."""
    model.eval().requires_grad_(False)
    model.fold_batchnorm()
    if any(p.device != device or p.dtype != dtype for p in model.parameters()):
        model.to(device=device, dtype=dtype)
    if model.detr_decoder.layers[0].self_attn.qkv_weight is None:  # after .to(): the weights stay views
        model.fuse_projections()
    model.validate_inputs = False


def agreement(out: Sam3LiteTextOutput, ref: Sam3LiteTextOutput, mask_threshold: float = 0.0) -> dict[str, float]:
    """How closely ``out`` (e.g. the bf16 fast path) agrees with ``ref`` (e.g. the fp32 eager model), in the terms
    of the README's accuracy tolerance:

    - ``mask_iou``: IoU of the thresholded mask logits (``> mask_threshold``), all queries and prompts pooled
      (1.0 when both are empty);
    - ``score_max_diff``: max |Δ| of the scores ``sigmoid(pred_logits) · sigmoid(presence_logits)`` (HF's);
    - ``box_max_diff``: max |Δ| of the normalised xyxy boxes.
    """
    a, b = out.pred_masks.float() > mask_threshold, ref.pred_masks.float() > mask_threshold
    union = (a | b).sum().item()
    iou = 1.0 if union == 0 else (a & b).sum().item() / union

    def scores(o):
        return o.pred_logits.float().sigmoid() * o.presence_logits.float().sigmoid()

    return {"mask_iou": iou, "score_max_diff": (scores(out) - scores(ref)).abs().max().item(),
            "box_max_diff": (out.pred_boxes.float() - ref.pred_boxes.float()).abs().max().item()}
