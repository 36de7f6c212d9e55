"""Decoding one image file robustly, and the two ways of preprocessing it for the model.

Decoding is the processor's (:func:`sam3lt.processor.load_image`: torchvision's decoder, EXIF orientation applied,
as HF decodes paths) for the formats torchvision reads, PIL for the others (TIFF, BMP, ...). A PIL header read
comes first: it rejects non-images and images above ``max_pixels`` before any pixel is decoded. 16-bit images
are scaled to 8 bits; CMYK, palette and grayscale images are converted to RGB by the decoders.

Preprocessing (``preprocess=``):

* ``"workers"`` (default): the uint8 antialiased resize runs in the DataLoader workers, exactly the processor's
  (:meth:`Sam3LiteTextProcessor.preprocess_images` resizes in uint8 too); rescale + normalise run on the device.
  Bitwise the processor's ``pixel_values``.
* ``"device"``: the workers only decode; the full-size uint8 image goes to the device and is resized there in
  float32, rounded back to uint8 levels, then normalised. torch's uint8 resize exists on the CPU only, so this
  differs from the processor by rounding: at most one uint8 level per pixel, i.e. ``|Δ pixel_values| ≤ 2/255``
  with the default mean/std of 0.5 (tested in ``tests/test_pipeline.py``).
"""
from __future__ import annotations

import copy
import os
import re
import time
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as tvF

from ..processor import Sam3LiteTextProcessor, _pil_to_rgb, load_image

PREPROCESS_MODES = ("workers", "device")
MAX_PIXELS = Image.MAX_IMAGE_PIXELS  # PIL's own decompression-bomb limit (~89 megapixels)
_TORCHVISION_FORMATS = {"JPEG", "PNG", "WEBP", "GIF"}  # decoded as the processor decodes paths


class DecodeError(Exception):
    """An input that cannot be segmented; the message is the reason recorded in errors.jsonl."""


def decode(path: str, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The file as a (3, H, W) uint8 RGB tensor, or :class:`DecodeError` saying why not."""
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)  # our limit decides, not a warning
            with Image.open(path) as probe:
                width, height, fmt = probe.width, probe.height, probe.format
        if width * height > max_pixels:
            raise DecodeError(f"too large: {width}x{height} = {width * height} pixels, above max_pixels "
                              f"({max_pixels})")
        if width == 0 or height == 0:
            raise DecodeError(f"empty image ({width}x{height})")
        if fmt in _TORCHVISION_FORMATS:
            image = load_image(path)
        else:
            with Image.open(path) as pil:
                image = _pil_decode(pil)
    except DecodeError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise DecodeError(f"too large: {err}") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (no decoder recognises the file)") from None
    except (OSError, RuntimeError, ValueError, SyntaxError) as err:  # truncated / corrupt data
        raise DecodeError(decode_error_reason(err)) from None
    if image.dtype == torch.uint16:  # 16-bit PNG: torchvision keeps 16 bits; the model takes 8
        image = tvF.to_dtype(image, torch.uint8, scale=True)
    return image.contiguous()


def _pil_decode(pil: Image.Image) -> torch.Tensor:
    pil = ImageOps.exif_transpose(pil)
    if pil.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: PIL's RGB conversion would clip
        pil = pil.point(lambda v: v / 257).convert("L")
    array = torch.from_numpy(np.array(_pil_to_rgb(pil)))
    return array.permute(2, 0, 1).contiguous()


# torchvision's decoders prefix their errors with where in its C++ sources they were raised:
# "decode_jpeg, /__w/vision/.../decode_jpeg.cpp:171, Image is incomplete or truncated".
_CPP_SOURCE = r"\S+\.(?:cpp|cc|cu|cuh|h|hpp)\b"
_CPP_PREFIX = re.compile(rf"^\s*\w+, {_CPP_SOURCE}(?::\d+)?, ")


def decode_error_reason(err: Exception) -> str:
    """An image decoder's error as a reason for the user: no path into torchvision's build, no hint about its
    other functions."""
    text = _CPP_PREFIX.sub("", " ".join(str(err).split()))
    text = " ".join(s for s in re.split(r"(?<=\.) ", text) if "`decode_" not in s)  # "For avif ... `decode_avif`"
    if not text or re.search(_CPP_SOURCE, text):  # another form naming a C++ source: say it plainly
        return "not a readable image (the decoder failed; jpeg, png, webp and gif are supported)"
    return text


class Preprocess:
    """The processor's image settings, split between the workers (``worker``) and the device (``device``)."""

    def __init__(self, processor: Sam3LiteTextProcessor, mode: str = "workers"):
        if mode not in PREPROCESS_MODES:
            raise ValueError(f"preprocess: expected one of {', '.join(PREPROCESS_MODES)}, got {mode!r}")
        self.mode, self.size = mode, list(processor.size)
        self.resample, self.do_resize = processor.resample, processor.do_resize
        self._normalise = copy.copy(processor)  # the processor's own rescale + normalise, without its resize
        self._normalise.do_resize = False

    def worker(self, image: torch.Tensor) -> torch.Tensor:
        """CPU side (DataLoader worker): the processor's uint8 resize, or nothing in device mode."""
        if self.mode == "device" or not self.do_resize:
            return image
        return tvF.resize(image[None], self.size, interpolation=self.resample, antialias=True)[0]

    def device(self, images: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        """Device side: uint8 images (already on the device) -> float32 ``pixel_values`` (B, 3, H, W)."""
        if self.mode == "device" and self.do_resize:
            images = torch.stack([
                tvF.resize(img[None].float(), self.size, interpolation=self.resample, antialias=True)[0]
                .round_().clamp_(0, 255) for img in images])
        elif isinstance(images, list):
            images = torch.stack(images)
        return self._normalise._resize_rescale_normalize(images)


def load(path: str, prep: Preprocess, max_pixels: int) -> dict:
    """Decode + worker-side preprocess of one file, timed; a failure is a result (``error``), not an exception."""
    start = time.perf_counter()
    try:
        image = decode(path, max_pixels)
    except DecodeError as err:
        return {"error": str(err) or "unreadable", "decode_s": time.perf_counter() - start, "preprocess_s": 0.0}
    decoded = time.perf_counter()
    pixels = prep.worker(image)
    return {"pixels": pixels, "size": tuple(image.shape[-2:]), "decode_s": decoded - start,
            "preprocess_s": time.perf_counter() - decoded}
