"""sam3lt: the fastest way to run SAM3-LiteText (open-vocabulary segmentation: image + text -> masks).

A compact PyTorch model that is numerically HF transformers' ``Sam3LiteTextModel`` and loads its checkpoints
unchanged, with the hot ops behind :mod:`sam3lt.ops` (eager reference, Triton and CUDA backends).
"""
from .ops import get_backend, set_backend, use_backend
from .config import (Sam3LiteTextConfig, Sam3LiteTextDETRDecoderConfig, Sam3LiteTextDETREncoderConfig,
                     Sam3LiteTextGeometryEncoderConfig, Sam3LiteTextMaskDecoderConfig, Sam3LiteTextTextConfig,
                     Sam3ViTConfig, Sam3VisionConfig)
from .model import Sam3LiteTextModel, Sam3LiteTextOutput, TextOutput, VisionOutput
from .loading import CheckpointError
from .processor import Sam3LiteTextProcessor
from .fast import FastSam3LiteText, optimize
from . import cpu as _cpu  # noqa: F401  (registers optimize's CPU plan)
from .pipeline import segment_dataset

from_pretrained = Sam3LiteTextModel.from_pretrained  # sam3lt.from_pretrained(path_or_hub_id, dtype=..., device=...)
from_transformers = Sam3LiteTextModel.from_transformers  # sam3lt.from_transformers(hf_model)

from ._version import __version__
__all__ = [
    "get_backend", "set_backend", "use_backend",
    "Sam3LiteTextConfig", "Sam3LiteTextTextConfig", "Sam3ViTConfig", "Sam3VisionConfig",
    "Sam3LiteTextGeometryEncoderConfig", "Sam3LiteTextDETREncoderConfig", "Sam3LiteTextDETRDecoderConfig",
    "Sam3LiteTextMaskDecoderConfig",
    "Sam3LiteTextModel", "Sam3LiteTextOutput", "TextOutput", "VisionOutput",
    "CheckpointError", "from_pretrained", "from_transformers", "Sam3LiteTextProcessor",
    "FastSam3LiteText", "optimize", "segment_dataset", "__version__",
]
