"""DETR decoder (HF ``Sam3LiteTextDetrDecoder``): 200 queries + a presence token; self-attention, text
cross-attention, image cross-attention with the log-scale box relative-position bias, MLP; post-norm; box
refinement after every layer. The box bias is passed to :func:`sam3lt.ops.box_bias_attention` in its
separable form (per-row and per-column terms), never as the (B, heads, Q, H·W) matrix."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..config import Sam3LiteTextDETRDecoderConfig
from .common import MLP, Attention, DecoderMLP, encode_boxes_sine, split_heads
from .fusion import StackedKV, memory_kv

STACKED_KV_MAX_BYTES = 512 * 2**20  # image keys/values of all decoder layers at once up to this size


class DetrDecoderLayer(nn.Module):
    def __init__(self, config: Sam3LiteTextDETRDecoderConfig):
        super().__init__()
        d, h = config.hidden_size, config.num_attention_heads
        self.self_attn = Attention(d, h)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.text_cross_attn = Attention(d, h)
        self.text_cross_attn_layer_norm = nn.LayerNorm(d)
        self.vision_cross_attn = Attention(d, h)
        self.vision_cross_attn_layer_norm = nn.LayerNorm(d)
        self.mlp = MLP(d, config.intermediate_size, config.hidden_act)
        self.mlp_layer_norm = nn.LayerNorm(d)

    def forward(self, x, query_pos, text_kv, text_mask, vision_kv, bias_y, bias_x):
        """text_kv / vision_kv: this layer's keys and values of the text and image tokens
        (``text_cross_attn.project_kv(text, text)``, ``vision_cross_attn.project_kv(vision + pos, vision)``; the
        decoder projects all layers' at once where it can)."""
        # post-norm: each residual add and the LayerNorm after it are one op (the sum itself is not needed)
        q = x + query_pos
        x = ops.add_layer_norm_module(x, self.self_attn(q, q, x), self.self_attn_layer_norm)[1]
        q = x + query_pos
        x = ops.add_layer_norm_module(x, self.text_cross_attn.attend(q, *text_kv, text_mask),
                                      self.text_cross_attn_layer_norm)[1]
        attn = self.vision_cross_attn
        q, (k, v) = split_heads(attn.q_proj(x + query_pos), attn.num_heads), vision_kv
        x = ops.add_layer_norm_module(x, attn.o_proj(ops.box_bias_attention(q, k, v, bias_y, bias_x)),
                                      self.vision_cross_attn_layer_norm)[1]
        return ops.add_layer_norm_module(x, self.mlp(x), self.mlp_layer_norm)[1]


class DetrDecoder(nn.Module):
    def __init__(self, config: Sam3LiteTextDETRDecoderConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.layers = nn.ModuleList([DetrDecoderLayer(config) for _ in range(config.num_layers)])
        self.output_layer_norm = nn.LayerNorm(d)
        self.box_head = DecoderMLP(d, d, 4, 3)
        self.query_embed = nn.Embedding(config.num_queries, d)
        self.reference_points = nn.Embedding(config.num_queries, 4)
        self.presence_token = nn.Embedding(1, d)
        self.presence_head = DecoderMLP(d, d, 1, 3)
        self.presence_layer_norm = nn.LayerNorm(d)
        self.clamp_presence_logit_max_val = 10.0
        self.ref_point_head = DecoderMLP(2 * d, d, d, 2)
        self.box_rpb_embed_x = DecoderMLP(2, d, self.num_heads, 2)
        self.box_rpb_embed_y = DecoderMLP(2, d, self.num_heads, 2)
        self._first_layer_cache = None  # see precompute_first_layer
        self.stacked_text_kv = self.stacked_vision_kv = None  # see stack_projections

    def stack_projections(self) -> None:
        """Project the text and image keys/values of all layers with two GEMMs each (they attend to the same
        memory), not two per layer (inference; :meth:`Sam3LiteTextModel.fuse_projections`)."""
        self.stacked_text_kv = StackedKV([layer.text_cross_attn for layer in self.layers])
        self.stacked_vision_kv = StackedKV([layer.vision_cross_attn for layer in self.layers])

    def _layer_inputs(self, boxes, height: int, width: int, num_feats: int, encoding=None):
        """A layer's query position encoding and box bias from its reference boxes (the presence token, row 0,
        has no position and no bias); ``encoding``: their sine encoding when already computed (``ops.box_refine``).
        The first layer's are functions of the weights alone."""
        if encoding is None:
            encoding = encode_boxes_sine(boxes, num_feats)
        query_pos = F.pad(self.ref_point_head(encoding), (0, 0, 1, 0))
        return (query_pos, *self.box_bias(boxes, height, width))

    def precompute_first_layer(self, height: int | None, width: int | None = None) -> None:
        """Cache the first layer's inputs that depend only on the weights, for a ``height``×``width`` grid in the
        current dtype/device (inference with frozen weights; :func:`sam3lt.optimize` calls it). ``None`` clears
        the cache; call it again after changing the weights. The cached values are what forward computes."""
        if height is None:
            self._first_layer_cache = None
            return
        with torch.inference_mode(False), torch.no_grad():  # plain tensors, usable outside inference mode
            boxes = self.reference_points.weight.unsqueeze(0).sigmoid()
            values = self._layer_inputs(boxes, height, width or height, self.query_embed.weight.shape[-1] // 2)
        weight = self.reference_points.weight
        self._first_layer_cache = ((height, width or height, weight.dtype, weight.device), values)

    def box_bias(self, boxes: torch.Tensor, height: int, width: int):
        """Separable box bias for the queries plus a zero row for the presence token:
        bias_y (B, heads, 1+Q, H) and bias_x (B, heads, 1+Q, W) (:func:`sam3lt.ops.box_bias`; its eager backend
        is the original module code, bitwise, and the triton backend one kernel launch for both)."""
        ey, ex = self.box_rpb_embed_y, self.box_rpb_embed_x
        return ops.box_bias(boxes, int(height), int(width), ey.layer1.weight, ey.layer1.bias, ey.layer2.weight,
                            ey.layer2.bias, ex.layer1.weight, ex.layer1.bias, ex.layer2.weight, ex.layer2.bias)

    def forward(self, vision, vision_pos, spatial_shape, text, text_mask, output_hidden_states: bool = False):
        """vision, vision_pos (B, H·W, D); text (B, Lp, D); text_mask (B, Lp) True = valid or None.
        Returns the last layer's normalised query states (B, Q, D), the reference boxes each layer started from
        (L, B, Q, 4), the refined boxes after the last layer (B, Q, 4) cxcywh, the last layer's presence logit
        (B, 1) and optionally the raw per-layer states. (HF also computes the presence logit after every layer,
        for training losses; the model's outputs use the last one only, so only that one is computed.)"""
        batch = vision.shape[0]
        height, width = spatial_shape
        boxes = self.reference_points.weight.unsqueeze(0).expand(batch, -1, -1).sigmoid()
        x = torch.cat([self.presence_token.weight, self.query_embed.weight]).unsqueeze(0).expand(batch, -1, -1)
        vision_key = vision + vision_pos
        ref_boxes, hidden = [boxes], [x]  # hidden: input, then each layer
        cache = self._first_layer_cache
        key = (height, width, boxes.dtype, boxes.device)
        num_feats, encoding = x.shape[-1] // 2, None
        text_kv = memory_kv([layer.text_cross_attn for layer in self.layers], text, text, self.stacked_text_kv)
        # all layers' image keys/values at once: 2·L·B·H·W·D values, so only up to a bound (many prompts: per layer)
        vision_kv = memory_kv([layer.vision_cross_attn for layer in self.layers], vision_key, vision,
                              self.stacked_vision_kv, STACKED_KV_MAX_BYTES)
        for i, layer in enumerate(self.layers):
            if i == 0 and cache is not None and cache[0] == key:
                query_pos, bias_y, bias_x = (t.expand(batch, *t.shape[1:]) for t in cache[1])
            else:
                query_pos, bias_y, bias_x = self._layer_inputs(boxes, height, width, num_feats, encoding)
            x = layer(x, query_pos, text_kv[i], text_mask, vision_kv[i], bias_y, bias_x)
            if output_hidden_states:
                hidden.append(x)
            queries = self.output_layer_norm(x[:, 1:])
            # refine the boxes and sine-encode them for the next layer in one op (the last layer's encoding is unused)
            boxes, encoding = ops.box_refine(self.box_head(queries), boxes, num_feats)
            ref_boxes.append(boxes)
        presence = self.presence_head(self.presence_layer_norm(x[:, :1])).squeeze(-1)
        presence = presence.clamp(-self.clamp_presence_logit_max_val, self.clamp_presence_logit_max_val)
        return (queries, torch.stack(ref_boxes[:-1]), boxes, presence,
                tuple(hidden) if output_hidden_states else None)
