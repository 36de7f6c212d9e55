"""SAM3 ViT image encoder (patch embed, tiled absolute position embedding, 2-D axial RoPE, windowed and
global attention) and the FPN neck. State-dict keys are HF's except the fused ``attention.qkv`` (see
``sam3lt.loading``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops.linear import writable
from ..config import Sam3ViTConfig, Sam3VisionConfig
from .common import MLP, Conv1x1, Conv3x3, ConvPatch, ConvTranspose2x2, ModelOutputMixin, linear, sine_position_grid
from .fusion import prenorm_stack


def rope_tables(config: Sam3ViTConfig, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin (grid_h·grid_w, head_dim) fp32, exactly HF ``Sam3ViTRotaryEmbedding`` for a token grid.

    HF scales positions by ``window_size / grid_w`` (1 inside a window; 24/72 for global attention) and lays
    out the head dim as [x-frequencies | y-frequencies], each frequency repeated for its rotated pair.
    """
    spatial_dim = config.head_dim // 2
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, spatial_dim, 2, dtype=torch.float) / spatial_dim))
    hpos, wpos = torch.meshgrid(torch.arange(grid_h), torch.arange(grid_w), indexing="ij")
    positions = torch.stack([wpos.flatten(), hpos.flatten()], dim=-1) * (config.window_size / grid_w)
    freqs = positions[..., None].float() * inv_freq  # (T, 2, D/4)
    freqs = torch.cat([freqs[:, 0], freqs[:, 1]], dim=-1).repeat_interleave(2, dim=-1)  # (T, D)
    return freqs.cos(), freqs.sin()


class ViTAttention(nn.Module):
    """RoPE self-attention with one fused QKV GEMM; the partition/RoPE/attention/unpartition is one op."""

    def __init__(self, config: Sam3ViTConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, cos, sin, window_size: int):
        qkv = linear(x, self.qkv)  # (B, H, W, 3C)
        # Padded window tokens take the projection bias: HF pads the (normalised) input with zeros.
        out = ops.window_attention(qkv, cos, sin, self.num_heads, window_size, self.qkv.bias)
        return linear(out, self.o_proj)


class ViTLayer(nn.Module):
    def __init__(self, config: Sam3ViTConfig, window_size: int):
        super().__init__()
        self.window_size = window_size
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = ViTAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, x, cos, sin):
        # pre-norm; ViTModel runs the stack with each add fused into the next LayerNorm (model/fusion.py)
        x = x + self.attention(self.layer_norm1(x), cos, sin, self.window_size)
        return x + self.mlp(self.layer_norm2(x))


class PatchEmbeddings(nn.Module):
    def __init__(self, config: Sam3ViTConfig):
        super().__init__()
        p = config.patch_size
        self.projection = ConvPatch(config.num_channels, config.hidden_size, p, bias=False)


class ViTEmbeddings(nn.Module):
    def __init__(self, config: Sam3ViTConfig):
        super().__init__()
        self.patch_size = config.patch_size
        self.patch_embeddings = PatchEmbeddings(config)
        pretrain_grid = config.pretrain_image_size // config.patch_size
        self.position_embeddings = nn.Parameter(torch.zeros(1, pretrain_grid * pretrain_grid, config.hidden_size))

    def tiled_position_embeddings(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """The pretraining-size table tiled (not interpolated) over the grid: (1, H, W, C)."""
        table = self.position_embeddings
        size = int(table.shape[1] ** 0.5)
        table = table.reshape(1, size, size, -1)
        reps = (1, -(-grid_h // size), -(-grid_w // size), 1)
        if reps != (1, 1, 1, 1):  # at the pretraining size the table is used as it is (HF skips the tiling too)
            table = table.repeat(*reps)
        return table[:, :grid_h, :grid_w]

    def forward(self, pixel_values):
        proj = self.patch_embeddings.projection
        x = proj(pixel_values.to(proj.weight.dtype)).permute(0, 2, 3, 1)  # (B, H, W, C)
        return x + self.tiled_position_embeddings(x.shape[1], x.shape[2])


class ViTModel(nn.Module):
    def __init__(self, config: Sam3ViTConfig):
        super().__init__()
        self.config = config
        self.embeddings = ViTEmbeddings(config)
        self.layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList([
            ViTLayer(config, 0 if i in config.global_attn_indexes else config.window_size)
            for i in range(config.num_hidden_layers)])
        self.init_rope_tables()

    def init_rope_tables(self, device=None) -> None:
        """(Re)compute the fp32 RoPE tables (non-persistent buffers; also after a meta-device build)."""
        ws, grid = self.config.window_size, self.config.image_size // self.config.patch_size
        for kind, size in (("window", ws), ("global", grid)):
            cos, sin = rope_tables(self.config, size, size)
            self.register_buffer(f"rope_{kind}_cos", cos.to(device) if device else cos, persistent=False)
            self.register_buffer(f"rope_{kind}_sin", sin.to(device) if device else sin, persistent=False)

    def _apply(self, fn, recurse=True):
        # .to(dtype) must not round the RoPE tables (HF keeps them fp32): rebuild them on the new device.
        super()._apply(fn, recurse)
        device = self.layer_norm.weight.device
        if device.type != "meta":
            self.init_rope_tables(device)
        return self

    def forward(self, pixel_values, output_hidden_states: bool = False):
        x = self.layer_norm(self.embeddings(pixel_values))  # (B, H, W, C)
        hidden_states = [x] if output_hidden_states else None  # as HF: the layers' input, then each layer's output
        x, _ = prenorm_stack(self.layers, x, self._attend, hidden=hidden_states)
        return x, tuple(hidden_states) if output_hidden_states else None

    def _attend(self, layer: ViTLayer, h):
        if layer.window_size > 0:
            return layer.attention(h, self.rope_window_cos, self.rope_window_sin, layer.window_size)
        return layer.attention(h, self.rope_global_cos, self.rope_global_sin, 0)


class FPNLayer(nn.Module):
    """One neck level (HF ``Sam3FPNLayer``: same ``scale_layers`` indices, so the same keys)."""

    def __init__(self, in_channels: int, fpn_dim: int, scale_factor: float):
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        if scale_factor == 4.0:
            layers = [ConvTranspose2x2(in_channels, in_channels // 2), nn.GELU(),
                      ConvTranspose2x2(in_channels // 2, in_channels // 4)]
            channels = in_channels // 4
        elif scale_factor == 2.0:
            layers = [ConvTranspose2x2(in_channels, in_channels // 2)]
            channels = in_channels // 2
        elif scale_factor == 0.5:
            layers = [nn.MaxPool2d(kernel_size=2, stride=2)]
        elif scale_factor != 1.0:
            raise ValueError(f"scale_factors: {scale_factor} is not supported (expected 4, 2, 1 or 0.5)")
        self.scale_layers = nn.ModuleList(layers)
        self.proj1 = Conv1x1(channels, fpn_dim)
        self.proj2 = Conv3x3(fpn_dim, fpn_dim)

    def forward(self, x):
        for i, layer in enumerate(self.scale_layers):
            # a GELU after the transposed convolution runs in place on its fresh output (nn.GELU's values,
            # bitwise); never on x itself, the trunk output every level reads
            fresh = i > 0 and isinstance(layer, nn.GELU) and writable(x)
            x = torch.ops.aten.gelu_(x, approximate=layer.approximate) if fresh else layer(x)
        return self.proj2(self.proj1(x))


class VisionNeck(nn.Module):
    def __init__(self, config: Sam3VisionConfig):
        super().__init__()
        self.fpn_dim = config.fpn_hidden_size
        self.fpn_layers = nn.ModuleList([
            FPNLayer(config.backbone_config.hidden_size, config.fpn_hidden_size, s) for s in config.scale_factors])

    def forward(self, x, num_levels: int | None = None, positions: bool = True):
        """x: (B, C, H, W). Returns the first ``num_levels`` levels and their sine position encodings (none
        with ``positions=False``: the fast path holds its own copies)."""
        feats, pos = [], []
        for layer in self.fpn_layers[:num_levels]:
            f = layer(x)
            feats.append(f)
            if not positions:
                continue
            grid = sine_position_grid(f.shape[-2], f.shape[-1], self.fpn_dim // 2, True, f.dtype, f.device)
            pos.append(grid.unsqueeze(0).expand(f.shape[0], -1, -1, -1))
        return tuple(feats), tuple(pos)


@dataclass
class VisionOutput(ModelOutputMixin):
    """Image features, reusable across prompts (``vision_embeds``): HF ``Sam3VisionEncoderOutput``'s fields and
    access (``get_vision_features``)."""

    last_hidden_state: torch.Tensor  # (B, H·W, C) ViT output
    fpn_hidden_states: tuple[torch.Tensor, ...]  # per level (B, D, Hi, Wi), finest first
    fpn_position_encoding: tuple[torch.Tensor, ...]
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: None = None  # sam3lt's fused attention does not return attention weights
    pooler_output: None = None  # always None, as in HF

    _hf_order = ("last_hidden_state", "pooler_output", "hidden_states", "attentions", "fpn_hidden_states",
                 "fpn_position_encoding")


class VisionEncoder(nn.Module):
    """HF ``Sam3VisionModel``: ``backbone`` (ViT) + ``neck`` (FPN)."""

    def __init__(self, config: Sam3VisionConfig):
        super().__init__()
        self.config = config
        self.backbone = ViTModel(config.backbone_config)
        self.neck = VisionNeck(config)

    def forward(self, pixel_values, output_hidden_states: bool = False, num_levels: int | None = None,
                positions: bool = True):
        x, hidden = self.backbone(pixel_values, output_hidden_states)
        batch, height, width, channels = x.shape
        feats, pos = self.neck(x.permute(0, 3, 1, 2), num_levels, positions)
        return VisionOutput(x.reshape(batch, height * width, channels), feats, pos, hidden)
