"""Mask upsampling: the pixel decoder's nearest-upsample + skip add, the query × pixel-embedding mask
product, and post-processing of mask logits to boolean masks at the original image size."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import dispatch


def upsample_nearest_add_reference(x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
    """Eager reference (the spec). See :func:`upsample_nearest_add`."""
    return F.interpolate(x, size=skip.shape[-2:], mode="nearest") + skip


def upsample_nearest_add(x: torch.Tensor, skip: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """``nearest_upsample(x, size=skip.shape[-2:]) + skip`` (torch's "nearest": src = floor(dst·in/out)).

    Args:
        x: (B, C, h, w); skip: (B, C, H, W), same dtype. Returns (B, C, H, W).
    """
    return dispatch("upsample_nearest_add", backend, x, skip)


def mask_product_reference(mask_embed: torch.Tensor, pixel_embed: torch.Tensor) -> torch.Tensor:
    """Eager reference (the spec). See :func:`mask_product`."""
    return torch.einsum("bqc,bchw->bqhw", mask_embed, pixel_embed)


def mask_product(mask_embed: torch.Tensor, pixel_embed: torch.Tensor, backend: str | None = None) -> torch.Tensor:
    """Mask logits: (B, Q, C) query embeddings × (B, C, H, W) pixel embeddings -> (B, Q, H, W)."""
    return dispatch("mask_product", backend, mask_embed, pixel_embed)


def masks_to_binary_reference(mask_logits: torch.Tensor, size: tuple[int, int], threshold: float) -> torch.Tensor:
    """Eager reference (the spec). See :func:`masks_to_binary`."""
    probs = mask_logits.sigmoid()
    if tuple(size) != tuple(mask_logits.shape[-2:]) and mask_logits.shape[0] > 0:
        probs = F.interpolate(probs.unsqueeze(0), size=tuple(size), mode="bilinear", align_corners=False).squeeze(0)
    elif mask_logits.shape[0] == 0:
        probs = probs.new_empty(0, *size)
    return probs > threshold


def masks_to_binary(mask_logits: torch.Tensor, size: tuple[int, int], threshold: float = 0.5,
                    backend: str | None = None) -> torch.Tensor:
    """HF post-processing of kept masks: ``bilinear(sigmoid(logits), size, align_corners=False) > threshold``.

    Args:
        mask_logits: (N, h, w) float logits. size: (H, W) output size. threshold: on probabilities.
    Returns:
        (N, H, W) bool.
    """
    return dispatch("masks_to_binary", backend, mask_logits, tuple(int(s) for s in size), float(threshold))
