"""The compact SAM3-LiteText model, one module per component."""
from .sam3_lite_text import Sam3LiteTextModel, Sam3LiteTextOutput, TextOutput
from .vision import VisionOutput

__all__ = ["Sam3LiteTextModel", "Sam3LiteTextOutput", "TextOutput", "VisionOutput"]
