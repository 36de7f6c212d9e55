"""DETR encoder (HF ``Sam3LiteTextDetrEncoder``): image self-attention with position encoding, cross-attention
to the prompt tokens, MLP; pre-norm."""
from __future__ import annotations

import torch.nn as nn

from .. import ops
from ..ops.linear import writable
from ..config import Sam3LiteTextDETREncoderConfig
from .common import PreNormAttentionLayer
from .fusion import StackedKV, memory_kv


class DetrEncoderLayer(PreNormAttentionLayer):
    def __init__(self, config: Sam3LiteTextDETREncoderConfig):
        super().__init__(config.hidden_size, config.num_attention_heads, config.intermediate_size, config.hidden_act)

    def forward(self, x, pos, prompt_kv, prompt_mask):
        """prompt_kv: the prompt tokens' keys and values for this layer (``cross_attn.project_kv(prompt, prompt)``;
        the encoder projects all layers' at once)."""
        # One image broadcast to many prompts (a stride-0 batch, the first layer's input): the self-attention
        # of the image tokens does not depend on the prompt yet, so it runs once and is broadcast.
        if x.shape[0] > 1 and x.stride(0) == 0 and pos.stride(0) == 0:
            h = self.layer_norm1(x[:1])
            hp = h + pos[:1]
        else:
            h = self.layer_norm1(x)
            hp = h + pos
        attn = self.self_attn(hp, hp, h)
        # pre-norm: each residual add and the next LayerNorm are one op (ops.add_layer_norm)
        x, h = ops.add_layer_norm_module(x, attn.expand_as(x), self.layer_norm2)
        x, h = ops.add_layer_norm_module(x, self.cross_attn.attend(h, *prompt_kv, prompt_mask), self.layer_norm3)
        out = self.mlp(h)  # fresh: the residual add runs in place on it (bitwise x + out: IEEE addition commutes)
        return out.add_(x) if writable(out) and out.shape == x.shape else x + out


class DetrEncoder(nn.Module):
    def __init__(self, config: Sam3LiteTextDETREncoderConfig):
        super().__init__()
        self.layers = nn.ModuleList([DetrEncoderLayer(config) for _ in range(config.num_layers)])
        self.stacked_prompt_kv = None  # see stack_projections

    def stack_projections(self) -> None:
        """Project the prompt keys/values of all layers with two GEMMs (inference)."""
        self.stacked_prompt_kv = StackedKV([layer.cross_attn for layer in self.layers])

    def forward(self, feats, pos, prompt, prompt_mask, output_hidden_states: bool = False):
        """feats, pos: (B, D, H, W) one level; prompt (B, Lp, D); prompt_mask (B, Lp) True = valid or None.
        Returns (B, H·W, D), the flattened position encoding (B, H·W, D) and the per-layer states."""
        x = feats.flatten(2).transpose(1, 2)
        pos = pos.flatten(2).transpose(1, 2)
        hidden = [x]  # as HF: the input first, then every layer's output
        kv = memory_kv([layer.cross_attn for layer in self.layers], prompt, prompt, self.stacked_prompt_kv)
        for i, layer in enumerate(self.layers):
            x = layer(x, pos, kv[i], prompt_mask)
            if output_hidden_states:
                hidden.append(x)
        return x, pos, tuple(hidden) if output_hidden_states else None
