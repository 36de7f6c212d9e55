"""Mask upsampling: the pixel decoder's nearest-upsample + skip add, the query × pixel-embedding mask
product, and post-processing of mask logits to boolean masks at the original image size."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _checks, _cuda, _triton
from ._backend import define, dispatch, register
from .linear import writable


def upsample_nearest_add_reference(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Eager reference (the spec). See :func:`upsample_nearest_add`.

    The add runs in place on the upsampled tensor (fresh, skip's shape and dtype) where that gives the layout
    ``up + skip`` would: ``up`` contiguous (the first operand's layout decides the output's; the model's case,
    skip channels-last from its convolution) or both with the same strides. Bitwise the same values; it saves a
    (B, C, H, W) buffer: at 336² the 96²×256 level, ~2,300 fresh pages on the CPU."""
    up = _nearest_like(x, skip)
    if writable(up) and (up.is_contiguous() or up.stride() == skip.stride()):
        return up.add_(skip)
    return up + skip


def _nearest_like(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """``F.interpolate(x, size=skip.shape[-2:], mode="nearest")``, made channels-last when ``skip`` is (the model's
    case on the CPU: its FPN convolutions run channels-last) and the factor is whole: the same values (nearest
    takes src = dst // factor), and the add then reads both in one layout (a mixed-layout add at 96²×256 took
    ~9 ms on 2 CPU cores, ~1 ms in one layout) and the next convolution gets the layout oneDNN runs fastest."""
    (b, c, h, w), (oh, ow) = x.shape, skip.shape[-2:]
    if (skip.is_contiguous() or not skip.is_contiguous(memory_format=torch.channels_last) or h == 0 or w == 0
            or oh % h or ow % w):
        return F.interpolate(x, size=(oh, ow), mode="nearest")
    up = torch.empty((b, oh, ow, c), dtype=x.dtype, device=x.device)  # fresh, even at factor 1
    up.view(b, h, oh // h, w, ow // w, c).copy_(x.permute(0, 2, 3, 1)[:, :, None, :, None, :])
    return up.permute(0, 3, 1, 2)


def check_upsample_nearest_add(x, skip) -> None:
    op = "upsample_nearest_add"
    _checks.floating(op, "x", x)
    _checks.floating(op, "skip", skip)
    if x.dim() != 4 or skip.dim() != 4 or x.shape[:2] != skip.shape[:2]:
        raise ValueError(f"{op}: expects x (B, C, h, w) and skip (B, C, H, W), got {tuple(x.shape)}, {tuple(skip.shape)}")
    if x.dtype != skip.dtype:
        raise TypeError(f"{op}: x and skip dtypes differ ({x.dtype}, {skip.dtype})")
    if (x.shape[-1] == 0 or x.shape[-2] == 0) and skip.numel() > 0:
        raise ValueError(f"{op}: empty input grid {tuple(x.shape[-2:])}")
    _checks.same_device(op, (("x", x), ("skip", skip)))


def upsample_nearest_add(x: torch.Tensor, skip: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``nearest_upsample(x, size=skip.shape[-2:]) + skip`` (torch's "nearest": src = floor(dst·in/out)).

    Args:
        x: (B, C, h, w); skip: (B, C, H, W), same dtype. Returns (B, C, H, W).
    """
    check_upsample_nearest_add(x, skip)
    return dispatch("upsample_nearest_add", backend, x, skip)


def mask_product_reference(mask_embed: torch.Tensor, pixel_embed: torch.Tensor) -> torch.Tensor:
    """Eager reference (the spec). See :func:`mask_product`."""
    return torch.einsum("bqc,bchw->bqhw", mask_embed, pixel_embed)


def check_mask_product(mask_embed, pixel_embed) -> None:
    op = "mask_product"
    _checks.floating(op, "mask_embed", mask_embed)
    _checks.floating(op, "pixel_embed", pixel_embed)
    if mask_embed.dim() != 3 or pixel_embed.dim() != 4:
        raise ValueError(f"{op}: expects mask_embed (B, Q, C) and pixel_embed (B, C, H, W)")
    if mask_embed.shape[0] != pixel_embed.shape[0] or mask_embed.shape[2] != pixel_embed.shape[1]:
        raise ValueError(f"{op}: mask_embed {tuple(mask_embed.shape)} and pixel_embed {tuple(pixel_embed.shape)} "
                         f"disagree on B or C")
    if mask_embed.dtype != pixel_embed.dtype:
        raise TypeError(f"{op}: dtypes differ ({mask_embed.dtype}, {pixel_embed.dtype})")
    _checks.same_device(op, (("mask_embed", mask_embed), ("pixel_embed", pixel_embed)))


def mask_product(mask_embed: torch.Tensor, pixel_embed: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Mask logits: (B, Q, C) query embeddings × (B, C, H, W) pixel embeddings -> (B, Q, H, W)."""
    check_mask_product(mask_embed, pixel_embed)
    return dispatch("mask_product", backend, mask_embed, pixel_embed)


def masks_to_binary_reference(mask_logits: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """Eager reference (the spec). See :func:`masks_to_binary`."""
    probs = mask_logits.sigmoid()
    if tuple(size) != tuple(mask_logits.shape[-2:]) and mask_logits.shape[0] > 0:
        probs = F.interpolate(probs.unsqueeze(0), size=tuple(size), mode="bilinear", align_corners=False).squeeze(0)
    elif mask_logits.shape[0] == 0:
        probs = probs.new_empty(0, *size)
    return probs > threshold


def check_masks_to_binary(mask_logits, size, threshold=0.5) -> None:
    op = "masks_to_binary"
    _checks.floating(op, "mask_logits", mask_logits)
    if mask_logits.dim() != 3 or len(size) != 2:
        raise ValueError(f"{op}: expects mask_logits (N, h, w) and size (H, W), got {tuple(mask_logits.shape)}, {size}")
    if (mask_logits.shape[1] == 0 or mask_logits.shape[2] == 0) and mask_logits.shape[0] > 0:
        raise ValueError(f"{op}: empty input masks {tuple(mask_logits.shape)}")
    if int(size[0]) < 0 or int(size[1]) < 0:
        raise ValueError(f"{op}: negative output size {tuple(size)}")


def masks_to_binary(mask_logits: torch.Tensor, size: tuple[int, int], threshold: float = 0.5,
                    backend: str | None = None) -> torch.Tensor:
    """HF post-processing of kept masks: ``bilinear(sigmoid(logits), size, align_corners=False) > threshold``.

    Args:
        mask_logits: (N, h, w) float logits. size: (H, W) output size. threshold: on probabilities.
    Returns:
        (N, H, W) bool.
    """
    check_masks_to_binary(mask_logits, size, threshold)
    return dispatch("masks_to_binary", backend, mask_logits, tuple(int(s) for s in size), float(threshold))


define("upsample_nearest_add", check_upsample_nearest_add)
register("upsample_nearest_add", "eager", upsample_nearest_add_reference)
register("upsample_nearest_add", "triton", *_triton.backend("upsample_nearest_add", "upsample"))
register("upsample_nearest_add", "cuda", *_cuda.backend(
    "upsample_nearest_add", lambda x, skip: _cuda.launch_reason((x, skip)) or _cuda.fits_int32(*x.shape[-2:], *skip.shape[-2:])))
# The Triton GEMM runs only when named (auto=False): under auto torch's cuBLAS matmul of the reference runs.
define("mask_product", check_mask_product)
register("mask_product", "eager", mask_product_reference)
register("mask_product", "triton", *_triton.backend("mask_product", "upsample"), auto=False)
register("mask_product", "cuda", *_cuda.torch_backend(mask_product_reference), auto=False)
define("masks_to_binary", check_masks_to_binary)
register("masks_to_binary", "eager", masks_to_binary_reference)
register("masks_to_binary", "triton", *_triton.backend("masks_to_binary", "upsample"))
register("masks_to_binary", "cuda", *_cuda.backend(
    "masks_to_binary", lambda logits, size, threshold=0.5: _cuda.launch_reason((logits,))
    or _cuda.fits_int32(*logits.shape[1:], int(size[0]), int(size[1]))))
