"""Configuration of SAM3-LiteText, field-for-field the HF ``Sam3LiteTextConfig`` (transformers ≥ 5.8).

Every sub-config is a plain dataclass whose fields carry HF's names and defaults, so an HF ``config.json``
loads unchanged through :meth:`Sam3LiteTextConfig.from_dict` (keys HF adds for its own bookkeeping, such as
``architectures`` or ``id2label``, are ignored). ``to_dict`` writes a config HF can read back.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any


def _from_dict(cls, data: dict[str, Any] | None):
    data = dict(data or {})
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


class _SubConfig:
    """Mixin: dict round trip for the sub-configs."""

    model_type: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None):
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["model_type"] = self.model_type
        return out


@dataclass
class Sam3ViTConfig(_SubConfig):
    """The 32-layer ViT image encoder (HF ``Sam3ViTConfig``)."""

    model_type = "sam3_vit_model"
    hidden_size: int = 1024
    intermediate_size: int = 4736
    num_hidden_layers: int = 32
    num_attention_heads: int = 16
    num_channels: int = 3
    image_size: int = 1008
    patch_size: int = 14
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    attention_dropout: float = 0.0
    window_size: int = 24
    global_attn_indexes: list[int] = field(default_factory=lambda: [7, 15, 23, 31])
    layer_scale_init_value: float | None = None
    pretrain_image_size: int = 336
    hidden_dropout: float = 0.0
    initializer_range: float = 0.02
    rope_parameters: dict = field(default_factory=lambda: {"rope_theta": 10000.0, "rope_type": "axial"})

    def __post_init__(self):
        for name in ("image_size", "patch_size", "pretrain_image_size"):
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                if len(set(value)) != 1:
                    raise ValueError(f"Sam3ViTConfig.{name}: only square sizes are supported, got {value}")
                setattr(self, name, int(value[0]))
        if self.global_attn_indexes is None:
            self.global_attn_indexes = [7, 15, 23, 31]
        if self.rope_parameters is None:
            self.rope_parameters = {"rope_theta": 10000.0, "rope_type": "axial"}
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("Sam3ViTConfig: hidden_size must be divisible by num_attention_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters.get("rope_theta", 10000.0))


@dataclass
class Sam3VisionConfig(_SubConfig):
    """ViT backbone + FPN neck (HF ``Sam3VisionConfig``)."""

    model_type = "sam3_vision_model"
    backbone_config: Sam3ViTConfig = field(default_factory=Sam3ViTConfig)
    fpn_hidden_size: int = 256
    backbone_feature_sizes: list | None = None
    scale_factors: list[float] = field(default_factory=lambda: [4.0, 2.0, 1.0, 0.5])
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02

    def __post_init__(self):
        if isinstance(self.backbone_config, dict):
            self.backbone_config = Sam3ViTConfig.from_dict(self.backbone_config)
        if self.scale_factors is None:
            self.scale_factors = [4.0, 2.0, 1.0, 0.5]
        if self.backbone_feature_sizes is None:
            grid = self.backbone_config.image_size // self.backbone_config.patch_size
            self.backbone_feature_sizes = [[int(grid * s)] * 2 for s in self.scale_factors[:-1]]

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["backbone_config"] = self.backbone_config.to_dict()
        return out

    @property
    def image_size(self) -> int:
        return self.backbone_config.image_size


@dataclass
class Sam3LiteTextTextConfig(_SubConfig):
    """MobileCLIP student text encoder (HF ``Sam3LiteTextTextConfig``)."""

    model_type = "sam3_lite_text_text_model"
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    projection_dim: int = 512
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-5
    attention_dropout: float = 0.0
    use_repmixer_blocks: bool = True
    layer_scale_init_value: float = 1e-5
    repmixer_kernel_size: int = 11

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("Sam3LiteTextTextConfig: hidden_size must be divisible by num_attention_heads")
        if self.repmixer_kernel_size % 2 == 0:
            raise ValueError("Sam3LiteTextTextConfig: repmixer_kernel_size must be odd")


@dataclass
class _AttentionStackConfig(_SubConfig):
    """Fields (HF names and defaults) shared by the geometry encoder, DETR encoder and DETR decoder configs."""

    hidden_size: int = 256
    num_layers: int = 6
    num_attention_heads: int = 8
    intermediate_size: int = 2048
    dropout: float = 0.1
    hidden_act: str = "relu"
    hidden_dropout: float = 0.0
    layer_norm_eps: float = 1e-6
    initializer_range: float = 0.02


@dataclass
class Sam3LiteTextGeometryEncoderConfig(_AttentionStackConfig):
    model_type = "sam3_lite_text_geometry_encoder"
    num_layers: int = 3
    roi_size: int = 7


@dataclass
class Sam3LiteTextDETREncoderConfig(_AttentionStackConfig):
    model_type = "sam3_lite_text_detr_encoder"


@dataclass
class Sam3LiteTextDETRDecoderConfig(_AttentionStackConfig):
    model_type = "sam3_lite_text_detr_decoder"
    num_queries: int = 200


@dataclass
class Sam3LiteTextMaskDecoderConfig(_SubConfig):
    model_type = "sam3_lite_text_mask_decoder"
    hidden_size: int = 256
    num_upsampling_stages: int = 3
    layer_norm_eps: float = 1e-6
    dropout: float = 0.0
    num_attention_heads: int = 8
    initializer_range: float = 0.02


# Text-encoder presets of the released LiteText students (efficientsam3 ``_create_student_text_encoder``):
# S0 = MobileCLIP-S0 "mct" (RepMixer, 4 transformer layers, RepMixer), S1 = MobileCLIP-S1 (12 transformer
# layers), L = MobileCLIP2-L (12 layers, width 768). FFN ratio 4, vocabulary 49408, no causal mask.
TEXT_PRESETS: dict[str, dict[str, Any]] = {
    "s0": dict(hidden_size=512, intermediate_size=2048, projection_dim=512, num_hidden_layers=6,
               num_attention_heads=8, use_repmixer_blocks=True),
    "s1": dict(hidden_size=512, intermediate_size=2048, projection_dim=512, num_hidden_layers=12,
               num_attention_heads=8, use_repmixer_blocks=False),
    "l": dict(hidden_size=768, intermediate_size=3072, projection_dim=768, num_hidden_layers=12,
              num_attention_heads=12, use_repmixer_blocks=False),
}

_SUB_CONFIGS = {
    "vision_config": Sam3VisionConfig,
    "text_config": Sam3LiteTextTextConfig,
    "geometry_encoder_config": Sam3LiteTextGeometryEncoderConfig,
    "detr_encoder_config": Sam3LiteTextDETREncoderConfig,
    "detr_decoder_config": Sam3LiteTextDETRDecoderConfig,
    "mask_decoder_config": Sam3LiteTextMaskDecoderConfig,
}


@dataclass
class Sam3LiteTextConfig:
    """Whole-model configuration (HF ``Sam3LiteTextConfig``); defaults are HF's."""

    model_type = "sam3_lite_text"
    vision_config: Sam3VisionConfig = field(default_factory=Sam3VisionConfig)
    text_config: Sam3LiteTextTextConfig = field(default_factory=Sam3LiteTextTextConfig)
    geometry_encoder_config: Sam3LiteTextGeometryEncoderConfig = field(
        default_factory=Sam3LiteTextGeometryEncoderConfig)
    detr_encoder_config: Sam3LiteTextDETREncoderConfig = field(default_factory=Sam3LiteTextDETREncoderConfig)
    detr_decoder_config: Sam3LiteTextDETRDecoderConfig = field(default_factory=Sam3LiteTextDETRDecoderConfig)
    mask_decoder_config: Sam3LiteTextMaskDecoderConfig = field(default_factory=Sam3LiteTextMaskDecoderConfig)
    initializer_range: float = 0.02

    def __post_init__(self):
        for name, cls in _SUB_CONFIGS.items():
            value = getattr(self, name)
            if value is None or isinstance(value, dict):
                setattr(self, name, cls.from_dict(value))
            elif not isinstance(value, cls):
                raise TypeError(f"Sam3LiteTextConfig.{name}: expected {cls.__name__} or dict, got {type(value)}")
        widths = {self.geometry_encoder_config.hidden_size, self.detr_encoder_config.hidden_size,
                  self.detr_decoder_config.hidden_size, self.mask_decoder_config.hidden_size,
                  self.vision_config.fpn_hidden_size}
        if len(widths) != 1:
            raise ValueError(f"Sam3LiteTextConfig: the FPN, geometry, DETR and mask widths must agree, got {widths}")

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Sam3LiteTextConfig":
        """From an HF ``config.json`` dict (or one written by :meth:`to_dict`); unknown keys are ignored.
        A ``sam3_lite_text_video`` config's ``detector_config`` is used as HF does."""
        if not isinstance(data, dict):
            raise TypeError(f"Sam3LiteTextConfig.from_dict: data must be a dict, got {type(data).__name__}")
        data = copy.deepcopy(data)
        if isinstance(data.get("detector_config"), dict):
            data = data["detector_config"]
        kwargs = {name: data.get(name) for name in _SUB_CONFIGS}
        if "initializer_range" in data:
            kwargs["initializer_range"] = data["initializer_range"]
        return cls(**kwargs)

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "Sam3LiteTextConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))

    @classmethod
    def from_preset(cls, text_encoder: str = "s0", **overrides) -> "Sam3LiteTextConfig":
        """Full-size config with the text encoder of a released student: "s0", "s1" or "l"."""
        key = str(text_encoder).lower().removeprefix("mobileclip-").removeprefix("mobileclip2-")
        if key not in TEXT_PRESETS:
            raise ValueError(f"text_encoder: unknown text variant {text_encoder!r}; expected one of "
                             f"{', '.join(TEXT_PRESETS)}")
        config = cls(text_config=Sam3LiteTextTextConfig(**TEXT_PRESETS[key]))
        for name, value in overrides.items():
            setattr(config, name, value)
        config.__post_init__()
        return config

    @classmethod
    def tiny(cls, text_encoder: str = "s0", image_size: int = 280) -> "Sam3LiteTextConfig":
        """A small random-weight config for CPU tests and the offline CLI demo. Its ViT grid
        (image_size / 14) is not a multiple of the window (8), so windowed attention pads."""
        text = dict(TEXT_PRESETS[str(text_encoder).lower()]) if str(text_encoder).lower() in TEXT_PRESETS else None
        if text is None:
            raise ValueError(f"text_encoder: unknown text variant {text_encoder!r}; expected one of "
                             f"{', '.join(TEXT_PRESETS)}")
        width = 96 if text["hidden_size"] == 768 else 64
        text.update(hidden_size=width, intermediate_size=2 * width, projection_dim=width, num_attention_heads=4,
                    num_hidden_layers=4 if text["use_repmixer_blocks"] else 2)
        vit = Sam3ViTConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=3, num_attention_heads=4,
                            image_size=image_size, patch_size=14, window_size=8, global_attn_indexes=[1],
                            pretrain_image_size=112)
        heads = dict(hidden_size=32, num_attention_heads=4, intermediate_size=64)
        return cls(
            vision_config=Sam3VisionConfig(backbone_config=vit, fpn_hidden_size=32),
            text_config=Sam3LiteTextTextConfig(**text),
            geometry_encoder_config=Sam3LiteTextGeometryEncoderConfig(num_layers=1, roi_size=3, **heads),
            detr_encoder_config=Sam3LiteTextDETREncoderConfig(num_layers=2, **heads),
            detr_decoder_config=Sam3LiteTextDETRDecoderConfig(num_layers=2, num_queries=12, **heads),
            mask_decoder_config=Sam3LiteTextMaskDecoderConfig(hidden_size=32, num_attention_heads=4),
        )

    # ---- serialisation ------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: getattr(self, name).to_dict() for name in _SUB_CONFIGS}
        out.update(model_type=self.model_type, initializer_range=self.initializer_range,
                   architectures=["Sam3LiteTextModel"])
        return out

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    @property
    def image_size(self) -> int:
        return self.vision_config.image_size
