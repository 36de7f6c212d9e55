"""MobileCLIP student text encoder of SAM3-LiteText (HF ``Sam3LiteTextTextModel``).

RepMixer blocks (first and last layer when ``use_repmixer_blocks``) are inference-folded: the token mixer
``x + γ₁·(BN(conv(x)) + BN_skip(x) − BN_ref(x))`` is one depthwise conv with bias plus the residual, and the
conv FFN's ``BN(dwconv(x))`` is one depthwise conv with bias, its layer scale γ₂ folded into ``fc2``. Both
convolutions run through :func:`sam3lt.ops.repmixer_block_dwconv` (one kernel for both). An unfolded block keeps HF's parameters (and
keys) and folds them on the fly in every forward, so both forms share one code path.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..config import Sam3LiteTextTextConfig
from .common import MLP, activation, split_heads
from .fusion import prenorm_stack


class TextAttention(nn.Module):
    """Bidirectional self-attention with a fused QKV GEMM (HF keys q_proj/k_proj/v_proj are concatenated
    into ``qkv`` at load) and HF's ``out_proj``."""

    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x, key_padding_mask):
        q, k, v = split_heads(self.qkv(x), 3 * self.num_heads).chunk(3, dim=1)
        return self.out_proj(ops.masked_attention(q, k, v, key_padding_mask))


class TextEncoderLayer(nn.Module):
    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = TextAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config.hidden_size, config.intermediate_size, config.hidden_act)

    def forward(self, x, key_padding_mask):
        # pre-norm; TextEncoder runs the stack with each add fused into the next LayerNorm (model/fusion.py)
        x = x + self.self_attn(self.layer_norm1(x), key_padding_mask)
        return x + self.mlp(self.layer_norm2(x))


# ---- RepMixer: HF's unfolded modules (kept only when folding is switched off) -------------------------
class _MobileOneBlock(nn.Module):
    def __init__(self, hidden: int, kernel: int):
        super().__init__()
        self.batchnorm_skip = nn.BatchNorm2d(hidden)
        self.conv = nn.Conv2d(hidden, hidden, (1, kernel), padding=(0, kernel // 2), groups=hidden, bias=False)
        self.batchnorm_conv = nn.BatchNorm2d(hidden)


class _TokenMixer(nn.Module):
    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        hidden = config.hidden_size
        self.layer_scale = nn.Parameter(config.layer_scale_init_value * torch.ones(hidden, 1, 1))
        self.reference_batchnorm = nn.BatchNorm2d(hidden)
        self.mixer = _MobileOneBlock(hidden, config.repmixer_kernel_size)


class _ConvMLP(nn.Module):
    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        self.fc1 = nn.Conv2d(config.hidden_size, config.intermediate_size, kernel_size=1)
        self.fc2 = nn.Conv2d(config.intermediate_size, config.hidden_size, kernel_size=1)


class _ConvFeedForward(nn.Module):
    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        k = config.repmixer_kernel_size
        hidden = config.hidden_size
        self.depthwise_conv = nn.Conv2d(hidden, hidden, (1, k), padding=(0, k // 2), groups=hidden, bias=False)
        self.depthwise_batchnorm = nn.BatchNorm2d(hidden)
        self.mlp = _ConvMLP(config)


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Inference BatchNorm as y = s·x + t (fp32)."""
    scale = bn.weight.float() / torch.sqrt(bn.running_var.float() + bn.eps)
    return scale, bn.bias.float() - bn.running_mean.float() * scale


def fold_repmixer(token_mixer: _TokenMixer, ffn: _ConvFeedForward, layer_scale: torch.Tensor) -> dict:
    """Folded parameters of one RepMixer block (fp32): the maths is in this module's docstring."""
    s_conv, t_conv = _bn_affine(token_mixer.mixer.batchnorm_conv)
    s_skip, t_skip = _bn_affine(token_mixer.mixer.batchnorm_skip)
    s_ref, t_ref = _bn_affine(token_mixer.reference_batchnorm)
    g1 = token_mixer.layer_scale.float().flatten()
    kernel = token_mixer.mixer.conv.weight.float().flatten(1)  # (C, K)
    mixer_w = (g1 * s_conv)[:, None] * kernel
    mixer_w[:, kernel.shape[1] // 2] += g1 * (s_skip - s_ref)  # identity branches sit on the centre tap
    mixer_b = g1 * (t_conv + t_skip - t_ref)
    s_dw, t_dw = _bn_affine(ffn.depthwise_batchnorm)
    dw_w = s_dw[:, None] * ffn.depthwise_conv.weight.float().flatten(1)
    g2 = layer_scale.float().flatten()
    return dict(
        mixer_weight=mixer_w, mixer_bias=mixer_b, dw_weight=dw_w, dw_bias=t_dw,
        fc1_weight=ffn.mlp.fc1.weight.float().flatten(1), fc1_bias=ffn.mlp.fc1.bias.float(),
        fc2_weight=g2[:, None] * ffn.mlp.fc2.weight.float().flatten(1), fc2_bias=g2 * ffn.mlp.fc2.bias.float())


class RepMixerBlock(nn.Module):
    """HF ``Sam3LiteTextRepMixerBlock`` on (B, L, C) tokens: token mixer then conv FFN, both layer-scaled."""

    _FOLDED = ("mixer_weight", "mixer_bias", "dw_weight", "dw_bias", "fc1_weight", "fc1_bias", "fc2_weight",
               "fc2_bias")

    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        self.act = activation(config.hidden_act)
        self.layer_scale = nn.Parameter(config.layer_scale_init_value * torch.ones(config.hidden_size, 1, 1))
        self.token_mixer = _TokenMixer(config)
        self.conv_feed_forward = _ConvFeedForward(config)
        self.folded = False

    @torch.no_grad()
    def fold(self) -> None:
        """Replace HF's BatchNorm/layer-scale parameters by the folded convolutions (inference only).

        The HF parameters are kept outside the module tree (not in the state dict, not moved by ``.to()``) so
        that :meth:`hf_state_dict` can give them back bitwise for ``save_pretrained``."""
        if self.folded:
            return
        ref = self.layer_scale
        unfolded = (self.token_mixer, self.conv_feed_forward, self.layer_scale)
        params = fold_repmixer(*unfolded)
        del self.token_mixer, self.conv_feed_forward, self.layer_scale
        object.__setattr__(self, "_unfolded", unfolded)  # a plain attribute: not a submodule or parameter
        for name, value in params.items():
            self.register_buffer(name, value.to(device=ref.device, dtype=ref.dtype))
        self.folded = True

    @torch.no_grad()
    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """HF's parameters of this block (keys relative to it), in the block's dtype: its own, or once folded the
        ones it was folded from, after checking they still fold to its buffers (a change made to the folded
        weights cannot be unfolded, so it raises instead of saving stale parameters)."""
        if not self.folded:
            return self.state_dict()
        token_mixer, ffn, layer_scale = self._unfolded
        dtype = self.mixer_weight.dtype
        for name, value in fold_repmixer(token_mixer, ffn, layer_scale).items():
            if not torch.equal(value.to(dtype), getattr(self, name).to(value.device)):
                raise ValueError(f"RepMixer {name} no longer matches the BatchNorm/layer-scale parameters it was "
                                 "folded from (changed after folding); HF's format needs those parameters: load "
                                 "with fold_batchnorm=False to change weights and save them")
        state = {"layer_scale": layer_scale.detach(), **token_mixer.state_dict(prefix="token_mixer."),
                 **ffn.state_dict(prefix="conv_feed_forward.")}
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    def _params(self) -> dict:
        if self.folded:
            return {name: getattr(self, name) for name in self._FOLDED}
        dtype = self.layer_scale.dtype
        return {k: v.to(dtype) for k, v in fold_repmixer(self.token_mixer, self.conv_feed_forward,
                                                        self.layer_scale).items()}

    def forward(self, x, key_padding_mask=None):
        # The convolutions see padded prompt tokens like any other token, as in HF: no mask here.
        p = self._params()
        x, y = ops.repmixer_block_dwconv(x, p["mixer_weight"], p["mixer_bias"], p["dw_weight"], p["dw_bias"])
        y = F.linear(self.act(F.linear(y, p["fc1_weight"], p["fc1_bias"])), p["fc2_weight"], p["fc2_bias"])
        return x + y


class TextPositionEmbedding(nn.Module):
    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        self.position_embedding = nn.Parameter(torch.zeros(1, 1, config.max_position_embeddings, config.hidden_size))

    def forward(self, seq_len: int) -> torch.Tensor:
        table = self.position_embedding
        if seq_len != table.shape[2]:  # HF resamples the table bilinearly to the prompt length
            table = F.interpolate(table, size=(seq_len, table.shape[-1]), mode="bilinear")
        return table.reshape(1, seq_len, -1)


class TextEmbeddings(nn.Module):
    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = TextPositionEmbedding(config)

    def forward(self, input_ids):
        x = self.token_embedding(input_ids)
        return x + self.position_embedding(input_ids.shape[1]).to(x.dtype)


class TextEncoder(nn.Module):
    """Token + position embeddings, RepMixer/transformer layers, final LayerNorm. ``projection`` (the
    MobileCLIP EOT projection) is kept for checkpoint compatibility and used by :meth:`pooled`."""

    def __init__(self, config: Sam3LiteTextTextConfig):
        super().__init__()
        self.config = config
        self.embeddings = TextEmbeddings(config)
        repmixer_at = {0, config.num_hidden_layers - 1} if config.use_repmixer_blocks else set()
        self.layers = nn.ModuleList([
            RepMixerBlock(config) if i in repmixer_at else TextEncoderLayer(config)
            for i in range(config.num_hidden_layers)])
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.projection = nn.Linear(config.hidden_size, config.projection_dim, bias=False)

    def fold(self) -> None:
        for layer in self.layers:
            if isinstance(layer, RepMixerBlock):
                layer.fold()

    def forward(self, input_ids, attention_mask=None, output_hidden_states: bool = False):
        x = self.embeddings(input_ids)
        key_padding_mask = None if attention_mask is None else attention_mask.bool()
        hidden = [x] if output_hidden_states else None  # as HF: the embeddings, then every layer's output
        _, last = prenorm_stack(self.layers, x, lambda layer, h: layer.self_attn(h, key_padding_mask),
                                self.final_layer_norm, lambda block, x: block(x, key_padding_mask), hidden)
        return last, tuple(hidden) if output_hidden_states else None

    def pooled(self, last_hidden_state, input_ids):
        """MobileCLIP EOT pooling (the EOT token has the largest id) + projection."""
        rows = torch.arange(last_hidden_state.shape[0], device=last_hidden_state.device)
        return self.projection(last_hidden_state[rows, input_ids.argmax(dim=-1)])
