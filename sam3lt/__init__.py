"""sam3lt: fast SAM3-LiteText inference (compact model + Triton/CUDA kernels)."""
from .ops import set_backend, use_backend, get_backend

__version__ = "0.1.0"
__all__ = ["set_backend", "use_backend", "get_backend", "__version__"]

from .config import (Sam3LiteTextConfig, Sam3LiteTextDETRDecoderConfig, Sam3LiteTextDETREncoderConfig,
                     Sam3LiteTextGeometryEncoderConfig, Sam3LiteTextMaskDecoderConfig, Sam3LiteTextTextConfig,
                     Sam3ViTConfig, Sam3VisionConfig)
from .model import Sam3LiteTextModel, Sam3LiteTextOutput
from .loading import CheckpointError, from_pretrained, from_transformers

__all__ += ["Sam3LiteTextConfig", "Sam3LiteTextTextConfig", "Sam3ViTConfig", "Sam3VisionConfig",
            "Sam3LiteTextGeometryEncoderConfig", "Sam3LiteTextDETREncoderConfig", "Sam3LiteTextDETRDecoderConfig",
            "Sam3LiteTextMaskDecoderConfig", "Sam3LiteTextModel", "Sam3LiteTextOutput", "CheckpointError",
            "from_pretrained", "from_transformers"]
