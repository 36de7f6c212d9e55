"""Geometry (box prompt) encoder (HF ``Sam3LiteTextGeometryEncoder``): direct projection + ROI-aligned
image features + sine encoding of the box centre + label embedding, a CLS token, then transformer layers
that cross-attend to the image."""
from __future__ import annotations

import torch
import torch.nn as nn
import torchvision

from ..config import Sam3LiteTextGeometryEncoderConfig
from .common import PreNormAttentionLayer, box_cxcywh_to_xyxy, encode_points_sine


class GeometryEncoderLayer(PreNormAttentionLayer):
    def __init__(self, config: Sam3LiteTextGeometryEncoderConfig):
        super().__init__(config.hidden_size, config.num_attention_heads, config.intermediate_size, config.hidden_act)

    def forward(self, prompt, prompt_mask, vision, vision_key):
        h = self.layer_norm1(prompt)
        prompt = prompt + self.self_attn(h, h, h, prompt_mask)
        prompt = prompt + self.cross_attn(self.layer_norm2(prompt), vision_key, vision)
        return prompt + self.mlp(self.layer_norm3(prompt))


def append_after_valid(seq1, mask1, seq2):
    """HF ``concat_padded_sequences`` with an always-valid seq2: put seq2 right after the valid part of the
    right-padded seq1. Returns the (B, L1+L2, D) sequence and its validity mask."""
    batch, len1, dim = seq1.shape
    len2 = seq2.shape[1]
    valid1 = mask1.sum(dim=-1)
    mask = torch.arange(len1 + len2, device=seq1.device)[None] < (valid1 + len2)[:, None]
    out = torch.zeros(batch, len1 + len2, dim, device=seq1.device, dtype=seq1.dtype)
    out[:, :len1] = seq1
    index = torch.arange(len2, device=seq1.device)[None] + valid1[:, None]
    out = out.scatter(1, index[:, :, None].expand(-1, -1, dim), seq2)
    return out, mask


class GeometryEncoder(nn.Module):
    def __init__(self, config: Sam3LiteTextGeometryEncoderConfig):
        super().__init__()
        d = self.hidden_size = config.hidden_size
        self.roi_size = config.roi_size
        self.label_embed = nn.Embedding(2, d)
        self.cls_embed = nn.Embedding(1, d)
        self.boxes_direct_project = nn.Linear(4, d)
        self.boxes_pool_project = nn.Conv2d(d, d, config.roi_size)
        self.boxes_pos_enc_project = nn.Linear(d + 2, d)
        self.vision_layer_norm = nn.LayerNorm(d)
        self.final_proj = nn.Linear(d, d)
        self.prompt_layer_norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList([GeometryEncoderLayer(config) for _ in range(config.num_layers)])
        self.output_layer_norm = nn.LayerNorm(d)

    def _encode_boxes(self, boxes, labels, image):
        batch, num_boxes = boxes.shape[:2]
        height, width = image.shape[-2:]
        embed = self.boxes_direct_project(boxes)
        x0, y0, x1, y1 = box_cxcywh_to_xyxy(boxes).unbind(-1)
        # scaled with Python numbers: a torch.tensor([w, h, w, h]) here would be a CPU→GPU copy per call
        boxes_xyxy = torch.stack([x0 * width, y0 * height, x1 * width, y1 * height], dim=-1)
        # torchvision's roi_align has no bf16 kernel: HF runs it in fp16 then; so do we.
        dtype = torch.float16 if image.dtype == torch.bfloat16 else image.dtype
        pooled = torchvision.ops.roi_align(image.to(dtype), list(boxes_xyxy.to(dtype).unbind(0)),
                                           self.roi_size).to(image.dtype)
        embed = embed + self.boxes_pool_project(pooled).view(batch, num_boxes, self.hidden_size)
        cx, cy, w, h = boxes.unbind(-1)
        pos_x, pos_y = encode_points_sine(cx.flatten(), cy.flatten(), self.hidden_size // 2)
        pos = torch.cat((pos_y, pos_x, h.flatten()[:, None], w.flatten()[:, None]), dim=1)
        embed = embed + self.boxes_pos_enc_project(pos.view(batch, num_boxes, -1))
        return self.label_embed(labels.long()) + embed

    def forward(self, boxes, box_mask, box_labels, image_feats, image_pos):
        """boxes (B, N, 4) cxcywh in [0, 1]; box_mask (B, N) True = valid; image_feats/pos (B, D, H, W)."""
        batch = boxes.shape[0]
        vision = image_feats.flatten(2).transpose(1, 2)
        vision_key = vision + image_pos.flatten(2).transpose(1, 2)
        normed = self.vision_layer_norm(image_feats.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        prompt = self._encode_boxes(boxes, box_labels, normed)
        cls = self.cls_embed.weight.view(1, 1, -1).expand(batch, -1, -1)
        prompt, prompt_mask = append_after_valid(prompt, box_mask, cls)
        prompt = self.prompt_layer_norm(self.final_proj(prompt))
        for layer in self.layers:
            prompt = layer(prompt, prompt_mask, vision, vision_key)
        return self.output_layer_norm(prompt), prompt_mask
