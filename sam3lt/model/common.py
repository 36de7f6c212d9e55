"""Pieces shared by the components: attention with separate projections, MLPs, sine position encodings,
box helpers. Numerics follow HF ``modeling_sam3_lite_text`` line for line where it matters."""
from __future__ import annotations

import dataclasses
import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops.box_refine import clear_divisors, dim_t, encode_boxes_sine, interleave_sin_cos, inverse_sigmoid  # noqa: F401  (the spec lives in ops)
from ..ops.linear import ACTIVATIONS as LINEAR_ACTIVATIONS

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
               "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu}


def activation(name: str):
    if name not in ACTIVATIONS:
        raise ValueError(f"hidden_act: unsupported activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


class ModelOutputMixin:
    """HF ``ModelOutput`` access for the output dataclasses: ``out.name``, ``out["name"]``, ``out[0]`` and
    ``to_tuple()`` (the fields that are not None, in HF's order), ``keys()`` / ``values()`` / ``items()``,
    ``"name" in out`` and iteration over the names, as code written against transformers uses them."""

    _hf_order: tuple[str, ...] = ()  # HF's field order where the dataclass's differs

    def keys(self) -> list[str]:
        names = self._hf_order or [f.name for f in dataclasses.fields(self)]
        return [name for name in names if getattr(self, name) is not None]

    def values(self) -> list:
        return [getattr(self, name) for name in self.keys()]

    def items(self) -> list[tuple]:
        return [(name, getattr(self, name)) for name in self.keys()]

    def to_tuple(self) -> tuple:
        return tuple(self.values())

    def __getitem__(self, key):
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())


def split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """(B, L, H·D) -> (B, H, L, D) view (no copy)."""
    return x.unflatten(-1, (num_heads, -1)).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention with separate q/k/v/o projections (HF ``Sam3LiteTextAttention`` keys).

    Used by the DETR encoder/decoder, geometry encoder and mask decoder, where query, key and value inputs
    differ (position encodings are added to some of them), so the projections cannot share one GEMM.
    """

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size)
        self.k_proj = nn.Linear(hidden_size, hidden_size)
        self.v_proj = nn.Linear(hidden_size, hidden_size)
        self.o_proj = nn.Linear(hidden_size, hidden_size)
        # set by fuse_projections; buffers (not in the state dict) so that .to() keeps them with the weights
        self.register_buffer("qkv_weight", None, persistent=False)
        self.register_buffer("qkv_bias", None, persistent=False)

    def fuse_projections(self) -> None:
        """Put the q/k/v weights in one (3·D, D) tensor (the three Linear weights become views of it, so no
        memory is added) so that projections of one input share a GEMM: q and k when ``query is key`` (self-
        attention with a position encoding), k and v when ``key is value`` (cross-attention), all three when the
        three are one tensor. For inference with frozen weights (:func:`sam3lt.optimize`); the results equal
        the separate GEMMs up to the GEMM's own rounding."""
        layers = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight.detach() for p in layers])
        bias = torch.cat([p.bias.detach() for p in layers])
        d = self.q_proj.weight.shape[0]
        for i, p in enumerate(layers):
            p.weight = nn.Parameter(weight[i * d:(i + 1) * d], requires_grad=False)
            p.bias = nn.Parameter(bias[i * d:(i + 1) * d], requires_grad=False)
        self.qkv_weight, self.qkv_bias = weight, bias

    def project(self, query, key, value):
        heads = self.num_heads
        if self.qkv_weight is not None and query is key:
            w, b, d = self.qkv_weight, self.qkv_bias, self.qkv_weight.shape[0] // 3
            if key is value:
                q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
            else:
                (q, k), v = F.linear(query, w[:2 * d], b[:2 * d]).chunk(2, dim=-1), self.v_proj(value)
            return split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
        return (split_heads(self.q_proj(query), heads), *self.project_kv(key, value))

    def project_kv(self, key, value):
        """The keys and values of a memory, projected and split into heads (one GEMM when ``key is value`` after
        :meth:`fuse_projections`)."""
        if self.qkv_weight is not None and key is value:
            d = self.qkv_weight.shape[0] // 3
            k, v = F.linear(key, self.qkv_weight[d:], self.qkv_bias[d:]).chunk(2, dim=-1)
        else:
            k, v = self.k_proj(key), self.v_proj(value)
        return split_heads(k, self.num_heads), split_heads(v, self.num_heads)

    def forward(self, query, key, value, key_padding_mask=None):
        q, k, v = self.project(query, key, value)
        return self.o_proj(ops.masked_attention(q, k, v, key_padding_mask))

    def attend(self, query, k, v, key_padding_mask=None):
        """Attention of ``query`` over a memory's keys and values, already projected (:meth:`project_kv`)."""
        q = split_heads(self.q_proj(query), self.num_heads)
        return self.o_proj(ops.masked_attention(q, k, v, key_padding_mask))


def linear(x: torch.Tensor, layer: nn.Linear) -> torch.Tensor:
    """``layer(x)`` as ``ops.linear`` (on the CPU: MKL on the packed weight). An input of another dtype than the
    weight goes to the module as is: the bf16 CPU plan hands bf16 activations to the GEMMs it runs in bf16."""
    if x.dtype != layer.weight.dtype:
        return layer(x)
    return ops.linear(x, layer.weight, layer.bias)


class OpConvolution:
    """A convolution module (same parameters and keys as its nn class) whose forward is an op of ``sam3lt.ops``'s
    conv family, ``op(x, weight, bias, *extra)``: on the CPU in fp32 the ``cpu`` backend. ``backend`` names one for
    this module's calls (None: the usual choice); "eager" runs the reference as is, without the op's checks:
    ``sam3lt.optimize`` sets it where its bf16 plan runs the convolution in bf16, on bf16 inputs and fp32 weights."""

    backend: str | None = None
    op = reference = None  # the op and its reference (staticmethods of the subclass)

    def extra(self) -> tuple:
        return ()

    def forward(self, x):
        if self.backend == "eager":
            return self.reference(x, self.weight, self.bias, *self.extra())
        return self.op(x, self.weight, self.bias, *self.extra(), backend=self.backend)


class Conv1x1(OpConvolution, nn.Conv2d):
    """``nn.Conv2d(c, k, 1)`` as ``ops.conv1x1`` (the cpu backend: MKL's GEMM on the packed weight, below AVX-512)."""

    op, reference = staticmethod(ops.conv1x1), staticmethod(ops.conv1x1_reference)

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 1)


class Conv3x3(OpConvolution, nn.Conv2d):
    """``nn.Conv2d(c, k, 3, padding=p)`` as ``ops.conv3x3`` (the cpu backend: Winograd F(4×4, 3×3))."""

    op, reference = staticmethod(ops.conv3x3), staticmethod(ops.conv3x3_reference)

    def __init__(self, in_channels: int, out_channels: int, padding: int = 1):
        super().__init__(in_channels, out_channels, 3, padding=padding)

    def extra(self) -> tuple:
        return (self.padding[0],)


class ConvPatch(OpConvolution, nn.Conv2d):
    """``nn.Conv2d(c, k, p, stride=p, bias=...)`` as ``ops.conv_patch`` (the cpu backend: one GEMM over the
    patches)."""

    op, reference = staticmethod(ops.conv_patch), staticmethod(ops.conv_patch_reference)

    def __init__(self, in_channels: int, out_channels: int, patch: int, bias: bool = True):
        super().__init__(in_channels, out_channels, patch, stride=patch, bias=bias)


class ConvTranspose2x2(OpConvolution, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d(c, k, 2, stride=2)`` as ``ops.conv_transpose2x2`` (the cpu backend: one GEMM)."""

    op, reference = staticmethod(ops.conv_transpose2x2), staticmethod(ops.conv_transpose2x2_reference)

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 2, stride=2)


class MLP(nn.Module):
    """fc1 → act → fc2 (HF ``Sam3LiteTextMLP`` / ``Sam3MLP``; dropout is identity at inference).

    With a "gelu" or "relu" activation, fc1 + act is one ``ops.linear`` call: eager runs the same F.linear then
    F.gelu / F.relu (bitwise the plain modules), the triton backend one GEMM with the activation fused; fc2 is
    another (on the CPU, MKL on the packed weight).
    """

    def __init__(self, hidden_size: int, intermediate_size: int, act: str):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.act = activation(act)
        self.fused_act = act if act in LINEAR_ACTIVATIONS else None

    def forward(self, x):
        if self.fused_act is None:
            return self.fc2(self.act(self.fc1(x)))
        return linear(ops.linear(x, self.fc1.weight, self.fc1.bias, activation=self.fused_act), self.fc2)


class PreNormAttentionLayer(nn.Module):
    """The parameters of a pre-norm self-attention + cross-attention + MLP layer (HF keys layer_norm1..3,
    self_attn, cross_attn, mlp), shared by the DETR encoder and geometry encoder layers; their forwards differ
    in where position encodings and masks enter."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, act: str):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(hidden_size)
        self.self_attn = Attention(hidden_size, num_heads)
        self.cross_attn = Attention(hidden_size, num_heads)
        self.layer_norm2 = nn.LayerNorm(hidden_size)
        self.mlp = MLP(hidden_size, intermediate_size, act)
        self.layer_norm3 = nn.LayerNorm(hidden_size)


class DecoderMLP(nn.Module):
    """2- or 3-layer ReLU MLP (HF ``Sam3LiteTextDecoderMLP``: keys layer1/layer2/layer3)."""

    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int = 2):
        super().__init__()
        if num_layers not in (2, 3):
            raise ValueError(f"num_layers: only 2 or 3 supported, got {num_layers}")
        self.layer1 = nn.Linear(input_dim, hidden_dim)
        self.layer2 = nn.Linear(hidden_dim, hidden_dim if num_layers == 3 else output_dim)
        self.layer3 = nn.Linear(hidden_dim, output_dim) if num_layers == 3 else None

    def forward(self, x):
        # linear + ReLU as one op: the measured fast path may pick the Triton GEMM with the ReLU fused
        x = ops.linear(x, self.layer1.weight, self.layer1.bias, activation="relu")
        if self.layer3 is None:
            return self.layer2(x)
        return self.layer3(ops.linear(x, self.layer2.weight, self.layer2.bias, activation="relu"))


def box_cxcywh_to_xyxy(x: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = x.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def clear_constant_caches() -> None:
    """Drop the cached constant tensors (position-encoding grids, frequency divisors). Not while CUDA graphs of
    :func:`sam3lt.optimize` are alive: they read the divisors."""
    _sine_grid_cached.cache_clear()
    clear_divisors()


@functools.lru_cache(maxsize=16)
def _sine_grid_cached(height: int, width: int, num_feats: int, normalize: bool, dtype, device) -> torch.Tensor:
    # Computed once per (grid, dtype, device): the encoding depends only on the grid shape.
    with torch.inference_mode(False), torch.no_grad():
        y = torch.arange(1, height + 1, dtype=dtype, device=device)[:, None].expand(height, width)
        x = torch.arange(1, width + 1, dtype=dtype, device=device)[None, :].expand(height, width)
        if normalize:
            eps, scale = 1e-6, 2 * math.pi
            y = y / (y[-1:, :] + eps) * scale
            x = x / (x[:, -1:] + eps) * scale
        divisors = dim_t(num_feats, 10000, dtype, device)
        pos_x = interleave_sin_cos(x[..., None] / divisors)
        pos_y = interleave_sin_cos(y[..., None] / divisors)
        return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1).contiguous()  # (2·num_feats, H, W)


def sine_position_grid(height: int, width: int, num_feats: int, normalize: bool, dtype, device) -> torch.Tensor:
    """HF ``build_sine_position_embedding`` without a mask: (2·num_feats, H, W), cached per shape.
    Computed in ``dtype`` as HF does (HF builds it in the feature dtype)."""
    return _sine_grid_cached(int(height), int(width), int(num_feats), bool(normalize), dtype, torch.device(device))


def encode_points_sine(x: torch.Tensor, y: torch.Tensor, num_feats: int) -> tuple[torch.Tensor, torch.Tensor]:
    """HF ``encode_1d_positions`` (scale 2π, no normalisation)."""
    divisors = dim_t(num_feats, 10000, x.dtype, x.device)
    return (interleave_sin_cos((x * 2 * math.pi)[:, None] / divisors),
            interleave_sin_cos((y * 2 * math.pi)[:, None] / divisors))
