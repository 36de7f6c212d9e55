"""The fusions that span layers, in one place: the stacks call these, the blocks stay as the paper writes them.

- :func:`prenorm_stack`: pre-norm transformer blocks (ViT, text encoder) with every residual add fused into the
  LayerNorm that reads the sum (:func:`sam3lt.ops.add_layer_norm`), the next block's ``layer_norm1`` included:
  one pass over the residual stream per add instead of two. Equal to the blocks' own forwards (fp32 eager:
  bitwise; tests/test_model_backends.py).
- :class:`StackedKV` / :func:`memory_kv`: the key/value projections of the layers that attend to one memory
  (the DETR layers' prompt, text or image tokens), two GEMMs for all layers instead of two per layer.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .common import Attention, split_heads


def prenorm_stack(layers, x: torch.Tensor, attend: Callable, final_norm: nn.LayerNorm | None = None,
                  other: Callable | None = None, hidden: list | None = None):
    """Run ``layers`` on ``x``: each block with ``layer_norm1`` is ``x + attend(block, layer_norm1(x))`` then
    ``x + mlp(layer_norm2(x))``; any other block (RepMixer) runs ``other(block, x)``. Returns the output and
    ``final_norm(output)`` (None without ``final_norm``); each block's output is appended to ``hidden``."""
    h = None  # the current block's layer_norm1(x), when the previous add produced it
    for i, block in enumerate(layers):
        if not hasattr(block, "layer_norm1"):
            x, h = other(block, x), None
        else:
            if h is None:
                h = block.layer_norm1(x)
            x, h = ops.add_layer_norm_module(x, attend(block, h), block.layer_norm2)
            after = layers[i + 1] if i + 1 < len(layers) else None
            norm = final_norm if after is None else getattr(after, "layer_norm1", None)
            x, h = (x + block.mlp(h), None) if norm is None else ops.add_layer_norm_module(x, block.mlp(h), norm)
        if hidden is not None:
            hidden.append(x)
    if final_norm is not None and h is None:
        h = final_norm(x)
    return x, h


class StackedKV(nn.Module):
    """The k and v projections of several attention layers that attend to the same keys and values, stacked:
    two GEMMs for all the layers instead of two per layer. For inference with frozen weights (copies of the
    weights; small: 2·L·D² values); not in the state dict."""

    def __init__(self, attns: list[Attention]):
        super().__init__()
        self.num_heads, self.width = attns[0].num_heads, attns[0].k_proj.weight.shape[0]
        for name in ("k", "v"):
            layers = [getattr(a, f"{name}_proj") for a in attns]
            self.register_buffer(f"{name}_weight", torch.cat([p.weight.detach() for p in layers]), persistent=False)
            self.register_buffer(f"{name}_bias", torch.cat([p.bias.detach() for p in layers]), persistent=False)

    def forward(self, key, value) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer (k, v), split into heads (strided views of the two stacked outputs)."""
        keys, values = F.linear(key, self.k_weight, self.k_bias), F.linear(value, self.v_weight, self.v_bias)
        d, heads = self.width, self.num_heads
        return [(split_heads(keys[..., i * d:(i + 1) * d], heads), split_heads(values[..., i * d:(i + 1) * d], heads))
                for i in range(self.k_weight.shape[0] // d)]


def memory_kv(attns: list[Attention], key: torch.Tensor, value: torch.Tensor, stacked: StackedKV | None = None,
              max_bytes: int | None = None) -> list:
    """Each layer's (k, v) of one memory: with ``stacked`` all at once (two GEMMs) when the result fits
    ``max_bytes`` (2·L·B·L_mem·D values), else per layer, each computed only when the loop reaches it."""
    if stacked is not None and (max_bytes is None or 2 * len(attns) * value.numel() * value.element_size() <= max_bytes):
        return stacked(key, value)
    return _PerLayerKV(attns, key, value)


class _PerLayerKV:
    """(k, v) of layer i on indexing: the loop holds one layer's keys and values at a time."""

    def __init__(self, attns, key, value):
        self.attns, self.key, self.value = attns, key, value

    def __getitem__(self, i: int):
        return self.attns[i].project_kv(self.key, self.value)
