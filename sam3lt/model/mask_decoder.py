"""Dot-product scoring and the mask decoder (HF ``Sam3LiteTextDotProductScoring`` and
``Sam3LiteTextMaskDecoder``): prompt cross-attention on the encoder states, the FPN pixel decoder
(nearest upsample + skip, conv, GroupNorm, ReLU), and masks as query embeddings × pixel embeddings."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops.linear import writable
from ..config import Sam3LiteTextConfig, Sam3LiteTextMaskDecoderConfig
from .common import Attention, Conv1x1, Conv3x3, DecoderMLP


class DotProductScoring(nn.Module):
    def __init__(self, config: Sam3LiteTextConfig):
        super().__init__()
        d = config.detr_decoder_config.hidden_size
        self.text_mlp = DecoderMLP(d, config.detr_decoder_config.intermediate_size, d, 2)
        self.text_mlp_out_norm = nn.LayerNorm(d)
        self.text_proj = nn.Linear(d, d)
        self.query_proj = nn.Linear(d, d)
        self.scale = 1.0 / math.sqrt(d)
        self.clamp_max_val = 12.0

    def forward(self, queries, text, text_mask):
        """queries (..., B, Q, D); text (B, Lp, D) -> logits (..., B, Q)."""
        text = self.text_mlp_out_norm(self.text_mlp(text) + text)
        if text_mask is None:
            pooled = text.mean(dim=1)
        else:
            valid = text_mask.to(text.dtype).unsqueeze(-1)
            pooled = (text * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
        proj_text = self.text_proj(pooled)  # (B, D)
        scores = torch.matmul(self.query_proj(queries), proj_text.unsqueeze(-1)).squeeze(-1)
        return (scores * self.scale).clamp(-self.clamp_max_val, self.clamp_max_val)


class PixelDecoder(nn.Module):
    def __init__(self, config: Sam3LiteTextMaskDecoderConfig):
        super().__init__()
        d = config.hidden_size
        self.conv_layers = nn.ModuleList([Conv3x3(d, d) for _ in range(config.num_upsampling_stages)])
        self.norms = nn.ModuleList([nn.GroupNorm(8, d) for _ in range(config.num_upsampling_stages)])

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """feats finest first, all (B, D, Hi, Wi); returns (B, D, H0, W0)."""
        x = feats[-1]
        for i, skip in enumerate(reversed(feats[:-1])):
            x = ops.upsample_nearest_add(x, skip)
            x = self.norms[i](self.conv_layers[i](x))
            x = x.relu_() if writable(x) else F.relu(x)  # in place on the GroupNorm's fresh output
        return x


class MaskEmbedder(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(d, d) for _ in range(3)])

    def forward(self, x):
        for layer in self.layers[:2]:  # Linear + ReLU as one ops.linear (as DecoderMLP): eager, ReLU in place
            x = ops.linear(x, layer.weight, layer.bias, activation="relu")
        return self.layers[2](x)


class MaskDecoder(nn.Module):
    def __init__(self, config: Sam3LiteTextMaskDecoderConfig):
        super().__init__()
        d = config.hidden_size
        self.pixel_decoder = PixelDecoder(config)
        self.mask_embedder = MaskEmbedder(d)
        self.instance_projection = Conv1x1(d, d)
        self.semantic_projection = Conv1x1(d, 1)
        self.prompt_cross_attn = Attention(d, config.num_attention_heads)
        self.prompt_cross_attn_norm = nn.LayerNorm(d)

    def forward(self, queries, fpn_feats, encoder_states, prompt, prompt_mask):
        """queries (B, Q, D); fpn_feats finest first (B, D, Hi, Wi); encoder_states (B, H·W, D) for the
        coarsest level. Returns mask logits (B, Q, H0, W0) and semantic logits (B, 1, H0, W0)."""
        normed = self.prompt_cross_attn_norm(encoder_states)
        encoder_states = encoder_states + self.prompt_cross_attn(normed, prompt, prompt, prompt_mask)
        height, width = fpn_feats[-1].shape[-2:]
        coarse = encoder_states.transpose(1, 2).reshape(encoder_states.shape[0], -1, height, width)
        pixel = self.pixel_decoder([*fpn_feats[:-1], coarse])
        masks = ops.mask_product(self.mask_embedder(queries), self.instance_projection(pixel))
        return masks, self.semantic_projection(pixel)
