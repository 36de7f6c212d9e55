"""The whole SAM3-LiteText image model: same forward signature and output names as HF ``Sam3LiteTextModel``.

One image with N prompts (``pixel_values``/``vision_embeds`` of batch 1, ``input_ids`` of batch N) runs
the vision encoder once and broadcasts its features to the N prompts.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn as nn

from .. import loading
from ..config import Sam3LiteTextConfig
from .common import Attention, ModelOutputMixin, box_cxcywh_to_xyxy
from .detr_decoder import DetrDecoder
from .detr_encoder import DetrEncoder
from .geometry import GeometryEncoder
from .inputs import BOX_PADDING_LABEL, check_attention_mask, check_box_labels, check_token_ids
from .mask_decoder import DotProductScoring, MaskDecoder
from .text import TextEncoder
from .vision import VisionEncoder, VisionOutput

@dataclass
class TextOutput(ModelOutputMixin):
    """Prompt features reusable across images (``text_embeds``): the fields and access of the
    ``BaseModelOutputWithPooling`` HF's ``get_text_features`` returns."""

    last_hidden_state: torch.Tensor  # (B, L, text width), after the final LayerNorm
    pooler_output: torch.Tensor  # (B, L, DETR width): the per-token projection the heads consume
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: None = None  # sam3lt's fused attention does not return attention weights


@dataclass
class Sam3LiteTextOutput(ModelOutputMixin):
    """Model outputs (HF ``Sam3LiteTextImageSegmentationOutput`` field names)."""

    pred_masks: torch.Tensor = None  # (B, Q, H0, W0) mask logits at 4× the ViT grid
    pred_boxes: torch.Tensor = None  # (B, Q, 4) xyxy in [0, 1]
    pred_logits: torch.Tensor = None  # (B, Q)
    presence_logits: torch.Tensor = None  # (B, 1)
    semantic_seg: torch.Tensor = None  # (B, 1, H0, W0)
    decoder_hidden_states: tuple | None = None
    decoder_reference_boxes: torch.Tensor | None = None
    encoder_hidden_states: tuple | None = None
    vision_hidden_states: tuple | None = None
    vision_attentions: None = None
    detr_encoder_attentions: None = None
    detr_decoder_attentions: None = None
    mask_decoder_attentions: None = None


def _pop_output_kwargs(caller: str, kwargs: dict) -> bool:
    """Pop HF's output switches from ``kwargs``: ``return_dict`` (returned; False = a tuple, as HF) and
    ``output_attentions`` (refused when true: sam3lt's fused attention kernels compute no attention weights)."""
    return_dict = kwargs.pop("return_dict", None)
    if kwargs.pop("output_attentions", None):
        raise ValueError(f"{caller}: output_attentions=True is not supported; sam3lt's fused attention kernels "
                         "do not compute attention weights")
    return return_dict is None or bool(return_dict)


def _feature_kwargs(caller: str, kwargs: dict) -> bool:
    """HF's keyword arguments of ``get_text_features`` / ``get_vision_features``: returns ``return_dict``;
    anything else is refused, not silently dropped."""
    return_dict = _pop_output_kwargs(caller, kwargs)
    if kwargs:
        raise TypeError(f"{caller}: unexpected argument(s) {sorted(kwargs)}")
    return return_dict


def _check_float_tensor(name: str, x, ndim: int | None = None):
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor (normalised pixels), got dtype {x.dtype}")
    if ndim is not None and x.dim() != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")


class Sam3LiteTextModel(nn.Module):
    """SAM3-LiteText: image + text (and optional boxes) → instance masks, boxes, scores.

    Submodule and parameter names are HF's (``vision_encoder``, ``text_encoder``, ``text_projection``,
    ``geometry_encoder``, ``detr_encoder``, ``detr_decoder``, ``mask_decoder``, ``dot_product_scoring``), except
    the fused ``qkv`` projections and, once folded, the RepMixer convolutions; :mod:`sam3lt.loading` converts.
    """

    def __init__(self, config: Sam3LiteTextConfig | None = None):
        super().__init__()
        self.config = config = config or Sam3LiteTextConfig()
        self.vision_encoder = VisionEncoder(config.vision_config)
        self.text_encoder = TextEncoder(config.text_config)
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.detr_encoder_config.hidden_size)
        self.geometry_encoder = GeometryEncoder(config.geometry_encoder_config)
        self.detr_encoder = DetrEncoder(config.detr_encoder_config)
        self.detr_decoder = DetrDecoder(config.detr_decoder_config)
        self.mask_decoder = MaskDecoder(config.mask_decoder_config)
        self.dot_product_scoring = DotProductScoring(config)
        self.validate_inputs = True  # value checks that read tensors (NaN pixels, box range) sync the device
        self.eval()

    # ---- construction helpers -------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike = "yonigozlan/sam3-litetext-s0", *,
                        dtype: torch.dtype | str | None = None, device: str | torch.device | None = None,
                        fold_batchnorm: bool = True, revision: str | None = None,
                        **hf_kwargs) -> "Sam3LiteTextModel":
        """Load an HF ``Sam3LiteTextModel`` checkpoint (``config.json`` + safetensors, sharded or not) from a
        folder or the hub. HF's argument names work too (``torch_dtype``, ``device_map``, ...). See
        :func:`sam3lt.loading.from_pretrained`."""
        return loading.from_pretrained(cls, path_or_hub_id, dtype=dtype, device=device, fold_batchnorm=fold_batchnorm,
                                       revision=revision, **hf_kwargs)

    @classmethod
    def from_transformers(cls, hf_model, *, dtype: torch.dtype | None = None, device=None,
                          fold_batchnorm: bool = True) -> "Sam3LiteTextModel":
        """Convert a live ``transformers`` ``Sam3LiteTextModel`` (same weights; dtype/device default to its own)."""
        return loading.from_transformers(cls, hf_model, dtype=dtype, device=device, fold_batchnorm=fold_batchnorm)

    def save_pretrained(self, save_directory: str | os.PathLike, **hf_kwargs) -> None:
        """Write ``config.json`` + ``model.safetensors`` in HF's format and key names, loadable by transformers'
        ``Sam3LiteTextModel.from_pretrained`` (and by sam3lt). Folded RepMixer blocks write the parameters they
        were folded from. See :func:`sam3lt.loading.save_pretrained`."""
        loading.save_pretrained(self, save_directory, **hf_kwargs)

    def fold_batchnorm(self) -> "Sam3LiteTextModel":
        """Fold the RepMixer BatchNorms and layer scales into the depthwise convolutions (inference)."""
        self.text_encoder.fold()
        return self

    def fuse_projections(self) -> "Sam3LiteTextModel":
        """Share one GEMM among the q/k/v projections of one input in the heads' attention layers
        (:meth:`sam3lt.model.common.Attention.fuse_projections`), and among the DETR layers' key/value projections
        of the same memory (``stack_projections``). Inference with frozen weights; :func:`sam3lt.optimize` calls it."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.fuse_projections()
        self.detr_encoder.stack_projections()
        self.detr_decoder.stack_projections()
        return self

    @property
    def dtype(self) -> torch.dtype:
        return self.text_projection.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.text_projection.weight.device

    # ---- encoders -------------------------------------------------------------------------------------
    def _check_pixels(self, pixel_values):
        _check_float_tensor("pixel_values", pixel_values, 4)
        vit = self.config.vision_config.backbone_config
        if pixel_values.shape[1] != vit.num_channels:
            raise ValueError(f"pixel_values: expected {vit.num_channels} channels (B, {vit.num_channels}, H, W), "
                             f"got shape {tuple(pixel_values.shape)}")
        if tuple(pixel_values.shape[-2:]) != (vit.image_size, vit.image_size):
            raise ValueError(f"pixel_values: expected spatial size {vit.image_size}x{vit.image_size} "
                             f"(config.image_size; the processor resizes to it), got "
                             f"{pixel_values.shape[-2]}x{pixel_values.shape[-1]}")
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values: the batch is empty")
        if self.validate_inputs and not torch.isfinite(pixel_values).all():
            raise ValueError("pixel_values: contains NaN or infinite values")

    def get_vision_features(self, pixel_values: torch.Tensor, output_hidden_states: bool = False,
                            **kwargs) -> VisionOutput:
        """ViT + neck: all FPN levels (finest first) and their position encodings, as HF's
        ``Sam3VisionEncoderOutput`` (a tuple with ``return_dict=False``)."""
        return_dict = _feature_kwargs("get_vision_features", kwargs)
        self._check_pixels(pixel_values)
        out = self.vision_encoder(pixel_values, output_hidden_states)
        return out if return_dict else out.to_tuple()

    def _check_ids(self, input_ids, attention_mask):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected a (num_prompts, seq_len) tensor, got "
                             f"{getattr(input_ids, 'shape', type(input_ids).__name__)}")
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids: the prompt list is empty (shape {tuple(input_ids.shape)})")
        if attention_mask is not None and tuple(attention_mask.shape) != tuple(input_ids.shape):
            raise ValueError(f"attention_mask: expected shape {tuple(input_ids.shape)} (as input_ids), got "
                             f"{tuple(attention_mask.shape)}")
        check_token_ids(input_ids, self.config.text_config.vocab_size, self.validate_inputs)
        check_attention_mask(attention_mask, self.validate_inputs)

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                          output_hidden_states: bool = False, **kwargs) -> TextOutput:
        """Text encoder + projection to the DETR width (``pooler_output``, per token, as HF; a tuple with
        ``return_dict=False``)."""
        return_dict = _feature_kwargs("get_text_features", kwargs)
        self._check_ids(input_ids, attention_mask)
        last, hidden = self.text_encoder(input_ids, attention_mask, output_hidden_states)
        out = TextOutput(last, self.text_projection(last), hidden)
        return out if return_dict else out.to_tuple()

    # ---- forward --------------------------------------------------------------------------------------
    def _check_boxes(self, input_boxes, input_boxes_labels, batch):
        _check_float_tensor("input_boxes", input_boxes, 3)
        if input_boxes.shape[-1] != 4:
            raise ValueError(f"input_boxes: expected (batch, num_boxes, 4) boxes in (cx, cy, w, h), got shape "
                             f"{tuple(input_boxes.shape)}")
        if input_boxes.shape[0] not in (1, batch):
            raise ValueError(f"input_boxes: batch size {input_boxes.shape[0]} does not match the {batch} prompts")
        if input_boxes_labels is not None and tuple(input_boxes_labels.shape) != tuple(input_boxes.shape[:2]):
            raise ValueError(f"input_boxes_labels: expected shape {tuple(input_boxes.shape[:2])} (batch, num_boxes)"
                             f" to match input_boxes, got {tuple(input_boxes_labels.shape)}")
        if self.validate_inputs:
            valid = torch.ones_like(input_boxes[..., 0], dtype=torch.bool) if input_boxes_labels is None else \
                input_boxes_labels != BOX_PADDING_LABEL
            inside = ((input_boxes >= 0) & (input_boxes <= 1)).all(-1) | ~valid
            if not bool(inside.all()):
                raise ValueError("input_boxes: coordinates must be normalised (cx, cy, w, h) in [0, 1]")

    @staticmethod
    def _check_sources(caller: str, pixel_values, vision_embeds, input_ids, text_embeds, kwargs: dict) -> None:
        kwargs.pop("original_sizes", None)  # processor output, so that model(**inputs) works as in HF
        if kwargs:
            raise TypeError(f"{caller}: unexpected argument(s) {sorted(kwargs)}")
        if (pixel_values is None) == (vision_embeds is None):
            raise ValueError("pixel_values / vision_embeds: pass exactly one of them")
        if (input_ids is None) == (text_embeds is None):
            raise ValueError("input_ids / text_embeds: pass exactly one of them")

    def forward(self, pixel_values: torch.Tensor | None = None, vision_embeds: VisionOutput | None = None,
                input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                text_embeds=None, input_boxes: torch.Tensor | None = None,
                input_boxes_labels: torch.Tensor | None = None, output_hidden_states: bool = False,
                **kwargs) -> Sam3LiteTextOutput:
        """Same arguments and outputs as HF ``Sam3LiteTextModel.forward``.

        ``text_embeds`` is the output of :meth:`get_text_features` (or HF's), or its ``pooler_output`` tensor.
        """
        return_dict = _pop_output_kwargs("forward", kwargs)
        self._check_sources("forward", pixel_values, vision_embeds, input_ids, text_embeds, kwargs)
        levels = len(self.config.vision_config.scale_factors) - 1  # the coarsest level is unused
        if vision_embeds is None:
            self._check_pixels(pixel_values)
            vision = self.vision_encoder(pixel_values, output_hidden_states, num_levels=levels)
        else:
            vision = vision_embeds
            if not hasattr(vision, "fpn_hidden_states"):
                raise TypeError("vision_embeds: expected the output of get_vision_features")
        image_batch = vision.fpn_hidden_states[0].shape[0]
        feats = list(vision.fpn_hidden_states[:levels])
        pos = list(vision.fpn_position_encoding[:levels])

        if text_embeds is None:
            self._check_ids(input_ids, attention_mask)
            text = self.get_text_features(input_ids, attention_mask).pooler_output
        else:
            text = text_embeds if isinstance(text_embeds, torch.Tensor) else text_embeds.pooler_output
            if text.dim() != 3:
                raise ValueError(f"text_embeds: expected (num_prompts, seq_len, hidden) features, got shape "
                                 f"{tuple(text.shape)}")
            if attention_mask is not None and tuple(attention_mask.shape) != tuple(text.shape[:2]):
                raise ValueError(f"attention_mask: expected shape {tuple(text.shape[:2])}, got "
                                 f"{tuple(attention_mask.shape)}")
            check_attention_mask(attention_mask, self.validate_inputs)
        if image_batch != text.shape[0] and image_batch != 1:
            raise ValueError(f"pixel_values / input_ids: {image_batch} images and {text.shape[0]} prompts; "
                             f"pass one image with any number of prompts, or equal batch sizes")
        text_mask = attention_mask.bool() if attention_mask is not None else None
        if input_boxes is not None and input_boxes.numel() > 0:
            self._check_boxes(input_boxes, input_boxes_labels, text.shape[0])
        else:
            input_boxes = None
        out = self.heads(feats, pos, text, text_mask, input_boxes, input_boxes_labels, output_hidden_states)
        out.vision_hidden_states = getattr(vision, "hidden_states", None)
        return out if return_dict else out.to_tuple()

    def heads(self, feats, pos, text, text_mask=None, input_boxes=None, input_boxes_labels=None,
              output_hidden_states: bool = False) -> Sam3LiteTextOutput:
        """Everything after the encoders, without input checks (the fast path captures it in a CUDA graph).

        feats, pos: the FPN levels the heads use, finest first, (1 or B, D, Hi, Wi) each; text (B, Lp, D)
        projected prompt features; text_mask (B, Lp) bool (True = valid) or None; input_boxes (1 or B, N, 4)
        cxcywh in [0, 1] or None. One image's features are broadcast to the B prompts.
        """
        batch = text.shape[0]
        if feats[0].shape[0] != batch:  # one image, many prompts
            feats = [f.expand(batch, -1, -1, -1) for f in feats]
            pos = [p.expand(batch, -1, -1, -1) for p in pos]
        prompt, prompt_mask = text, text_mask
        if input_boxes is not None:
            check_box_labels(input_boxes_labels, self.validate_inputs)
            prompt, prompt_mask = self._add_box_prompts(text, text_mask, input_boxes, input_boxes_labels,
                                                        feats[-1], pos[-1])
            batch = prompt.shape[0]
            if feats[-1].shape[0] != batch:
                feats = [f.expand(batch, -1, -1, -1) for f in feats]
                pos = [p.expand(batch, -1, -1, -1) for p in pos]

        enc, enc_pos, enc_hidden = self.detr_encoder(feats[-1], pos[-1], prompt, prompt_mask, output_hidden_states)
        spatial = tuple(feats[-1].shape[-2:])
        last, ref_boxes, boxes, presence, dec_hidden = self.detr_decoder(enc, enc_pos, spatial, prompt, prompt_mask,
                                                                         output_hidden_states)
        logits = self.dot_product_scoring(last, prompt, prompt_mask)
        masks, semantic = self.mask_decoder(last, feats, enc, prompt, prompt_mask)
        return Sam3LiteTextOutput(
            pred_masks=masks, pred_boxes=box_cxcywh_to_xyxy(boxes), pred_logits=logits,
            presence_logits=presence, semantic_seg=semantic, decoder_hidden_states=dec_hidden,
            decoder_reference_boxes=ref_boxes, encoder_hidden_states=enc_hidden)

    def _add_box_prompts(self, text, text_mask, boxes, labels, image, image_pos):
        batch = boxes.shape[0]
        if labels is None:
            labels = torch.ones(boxes.shape[:2], dtype=torch.long, device=boxes.device)
        box_mask = labels != BOX_PADDING_LABEL
        labels = torch.where(labels == BOX_PADDING_LABEL, 0, labels)
        if image.shape[0] != batch:
            image, image_pos = image.expand(batch, -1, -1, -1), image_pos.expand(batch, -1, -1, -1)
        geo, geo_mask = self.geometry_encoder(boxes.to(image.dtype), box_mask, labels, image, image_pos)
        if text.shape[0] == 1 and batch > 1:
            text = text.expand(batch, -1, -1)
            text_mask = None if text_mask is None else text_mask.expand(batch, -1)
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        return torch.cat([text, geo], dim=1), torch.cat([text_mask, geo_mask], dim=1)
