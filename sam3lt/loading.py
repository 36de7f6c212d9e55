"""Load HF ``Sam3LiteTextModel`` checkpoints unchanged: ``config.json`` + safetensors (single file or
sharded with ``model.safetensors.index.json``) from a folder or the hub, or a live HF model instance.

The only key conversions: the ViT and text self-attention ``q_proj``/``k_proj``/``v_proj`` are concatenated
into one ``qkv`` projection (one GEMM instead of three), a ``detector_model.`` prefix (video checkpoints) is
stripped and the tracker's keys are ignored, as HF does. RepMixer BatchNorms and layer scales are folded into
the depthwise convolutions after loading unless ``fold_batchnorm=False``.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from .config import Sam3LiteTextConfig
from .model import Sam3LiteTextModel

DEFAULT_CHECKPOINT = "yonigozlan/sam3-litetext-s0"
_FUSED_QKV = re.compile(r"^(vision_encoder\.backbone\.layers\.\d+\.attention|text_encoder\.layers\.\d+\.self_attn)\.")
_IGNORED_PREFIXES = ("tracker_model.", "tracker_neck.")


class CheckpointError(ValueError):
    """The checkpoint does not fit the model: lists every missing, unexpected and mis-shaped key."""


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is, otherwise a hub snapshot (config, safetensors and tokenizer files only)."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"path_or_hub_id: {str(path)!r} is a file; expected a checkpoint folder or a hub id")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(str(path_or_hub_id), revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt"]))
    except Exception as err:  # network, auth, unknown repo: say what was looked for
        raise OSError(f"path_or_hub_id: {str(path_or_hub_id)!r} is not a local folder and could not be fetched "
                      f"from the Hugging Face hub ({type(err).__name__}: {err})") from err


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    try:
        return load_file(str(file))
    except Exception as err:
        raise CheckpointError(f"checkpoint file {file} is corrupt or not a safetensors file "
                              f"({type(err).__name__}: {err})") from err


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint folder (``model.safetensors`` or the shards of its index)."""
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as err:
            raise CheckpointError(f"checkpoint index {index} is corrupt: {err}") from err
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(weight_map.values())):
            if not (folder / shard).exists():
                raise CheckpointError(f"checkpoint shard {folder / shard} listed in {index.name} is missing")
            state.update(_load_safetensors(folder / shard))
        return state
    single = folder / "model.safetensors"
    if single.exists():
        return _load_safetensors(single)
    raise CheckpointError(f"no model.safetensors or model.safetensors.index.json in {folder}")


def convert_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``Sam3LiteTextModel`` keys -> sam3lt keys (fused qkv; video prefix stripped; tracker dropped)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("detector_model.")
        if not key.startswith(_IGNORED_PREFIXES):
            out[key] = value
    for key in [k for k in out if _FUSED_QKV.match(k) and ".q_proj." in k]:
        base, leaf = key.split(".q_proj.")
        parts = [f"{base}.{p}_proj.{leaf}" for p in "qkv"]
        if all(p in out for p in parts) and len({out[p].shape for p in parts}) == 1:
            out[f"{base}.qkv.{leaf}"] = torch.cat([out.pop(p) for p in parts], dim=0)
    return out


def _hf_name(key: str) -> str:
    """How a sam3lt key is called in an HF checkpoint (for error messages)."""
    if ".qkv." in key:
        base, leaf = key.split(".qkv.")
        return f"{base}.{{q,k,v}}_proj.{leaf}"
    return key


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise one :class:`CheckpointError` listing every missing, unexpected and mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(_hf_name(k) for k in expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    shapes = sorted(f"{_hf_name(k)}: checkpoint {tuple(state[k].shape)}, model {tuple(expected[k].shape)}"
                    for k in expected.keys() & state.keys() if state[k].shape != expected[k].shape)
    if missing or unexpected or shapes:
        lines = [f"checkpoint {source} does not match the model config:"]
        for title, items in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", shapes)):
            if items:
                lines.append(f"  {len(items)} {title}:")
                lines.extend(f"    {item}" for item in items)
        raise CheckpointError("\n".join(lines))


def load_into(config: Sam3LiteTextConfig, hf_state: dict[str, torch.Tensor], source: str, *,
              dtype: torch.dtype | None, device, fold_batchnorm: bool) -> Sam3LiteTextModel:
    """Build the model for ``config`` without random initialisation and load HF-keyed ``hf_state``."""
    with torch.device("meta"):
        model = Sam3LiteTextModel(config)
    state = convert_hf_state_dict(hf_state)
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.float()  # also rebuilds the non-persistent RoPE tables, still on meta (ViTModel._apply)
    if fold_batchnorm:
        model.fold_batchnorm()
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    return model.eval()


def from_pretrained(path_or_hub_id: str | os.PathLike = DEFAULT_CHECKPOINT, *, dtype: torch.dtype | None = None,
                    device=None, fold_batchnorm: bool = True, revision: str | None = None) -> Sam3LiteTextModel:
    """Load a checkpoint folder or hub id (default: the S0 port ``yonigozlan/sam3-litetext-s0``).

    Args:
        dtype: parameter dtype (default float32). device: target device (default CPU).
        fold_batchnorm: fold the RepMixer BatchNorms into the convolutions (inference); False keeps HF's
            parameters, which are then folded on the fly in every forward.
    """
    folder = resolve_checkpoint(path_or_hub_id, revision)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"no config.json in {folder}")
    try:
        config = Sam3LiteTextConfig.from_json_file(config_file)
    except json.JSONDecodeError as err:
        raise CheckpointError(f"config file {config_file} is not valid JSON: {err}") from err
    return load_into(config, read_state_dict(folder), str(folder), dtype=dtype, device=device,
                     fold_batchnorm=fold_batchnorm)


def from_transformers(hf_model, *, dtype: torch.dtype | None = None, device=None,
                      fold_batchnorm: bool = True) -> Sam3LiteTextModel:
    """Convert a live ``transformers`` ``Sam3LiteTextModel`` (same weights; dtype/device default to its own)."""
    if not hasattr(hf_model, "state_dict") or not hasattr(hf_model, "config"):
        raise TypeError(f"hf_model: expected a transformers Sam3LiteTextModel, got {type(hf_model).__name__}")
    config = Sam3LiteTextConfig.from_dict(hf_model.config.to_dict())
    param = next(hf_model.parameters())
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}  # no aliasing
    return load_into(config, state, type(hf_model).__name__, dtype=dtype or param.dtype,
                     device=device or param.device, fold_batchnorm=fold_batchnorm)
