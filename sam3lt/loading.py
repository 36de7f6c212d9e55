"""Load HF ``Sam3LiteTextModel`` checkpoints unchanged: ``config.json`` + safetensors (single file or
sharded with ``model.safetensors.index.json``) from a folder or the hub, or a live HF model instance; and save
them back in the same format (:func:`save_pretrained`), loadable by transformers.

The only key conversions: the ViT and text self-attention ``q_proj``/``k_proj``/``v_proj`` are concatenated
into one ``qkv`` projection (one GEMM instead of three), a ``detector_model.`` prefix (video checkpoints) is
stripped and the tracker's keys are ignored, as HF does. RepMixer BatchNorms and layer scales are folded into
the depthwise convolutions after loading unless ``fold_batchnorm=False``; the folded blocks keep the parameters
they were folded from, so saving writes HF's parameters bitwise.

:func:`from_pretrained` also takes transformers' argument names (``torch_dtype``, ``device_map``, the hub
download arguments), so that code written for ``transformers.Sam3LiteTextModel`` runs unchanged.
"""
from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import torch

from .config import Sam3LiteTextConfig

DEFAULT_CHECKPOINT = "yonigozlan/sam3-litetext-s0"
_FUSED_QKV = re.compile(r"^(vision_encoder\.backbone\.layers\.\d+\.attention|text_encoder\.layers\.\d+\.self_attn)\.")
_IGNORED_PREFIXES = ("tracker_model.", "tracker_neck.")


class CheckpointError(ValueError):
    """The checkpoint does not fit the model: lists every missing, unexpected and mis-shaped key."""


# Hub download arguments of HF's from_pretrained, passed on to huggingface_hub.snapshot_download.
_DOWNLOAD_ARGS = ("cache_dir", "local_files_only", "token", "force_download")
# HF from_pretrained arguments that are satisfied as they are: sam3lt always loads safetensors without a random
# initialisation (low memory) and runs no code from the checkpoint.
_SATISFIED_HF_ARGS = ("low_cpu_mem_usage", "trust_remote_code", "use_safetensors")
# HF from_pretrained arguments that sam3lt ignores, with one warning saying why.
_IGNORED_HF_ARGS = {"attn_implementation": "sam3lt picks its attention kernels itself (sam3lt.set_backend)"}


def resolve_checkpoint(path_or_hub_id: str | os.PathLike, revision: str | None = None, **download) -> Path:
    """A local folder as is, otherwise a hub snapshot (config, safetensors and tokenizer files only);
    ``download``: ``cache_dir``, ``local_files_only``, ``token``, ``force_download`` for the hub."""
    path = Path(path_or_hub_id).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"path_or_hub_id: {str(path)!r} is a file; expected a checkpoint folder or a hub id")
    from huggingface_hub import snapshot_download
    try:
        return Path(snapshot_download(str(path_or_hub_id), revision=revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.txt"], **download))
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


def load_into(model_class, config: Sam3LiteTextConfig, hf_state: dict[str, torch.Tensor], source: str, *,
              dtype: torch.dtype | None, device, fold_batchnorm: bool):
    """Build ``model_class(config)`` without random initialisation and load HF-keyed ``hf_state``."""
    with torch.device("meta"):
        model = model_class(config)
    state = convert_hf_state_dict(hf_state)
    check_state_dict(model, state, source)
    model.load_state_dict(state, strict=True, assign=True)
    model = model.float()  # also rebuilds the non-persistent RoPE tables, still on meta (ViTModel._apply)
    if fold_batchnorm:
        model.fold_batchnorm()
    model = model.to(device=device or "cpu", dtype=dtype or torch.float32)
    return model.eval()


def _parse_dtype(name: str, value) -> torch.dtype | str | None:
    if value is None or (isinstance(value, str) and value == "auto"):
        return value
    dtype = getattr(torch, value.removeprefix("torch."), None) if isinstance(value, str) else value
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:
        return dtype
    raise ValueError(f"{name}: expected a floating-point torch.dtype, its name ('float32', 'bfloat16', ...) or "
                     f"'auto', got {value!r}")


def _device_from_map(device_map) -> torch.device:
    """HF's ``device_map`` for a model on one device (sam3lt does not split a model across devices)."""
    value = device_map[""] if isinstance(device_map, dict) and list(device_map) == [""] else device_map
    if isinstance(value, str) and value == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return torch.device("cuda", value)
        if isinstance(value, (str, torch.device)) and torch.device(value).type != "meta":
            return torch.device(value)
    except (RuntimeError, ValueError):
        pass
    raise ValueError(f"device_map: sam3lt puts the whole model on one device; expected 'auto' (CUDA if available, "
                     f"else CPU), 'cpu', 'cuda', 'cuda:N', a CUDA index N, a torch.device or {{'': one of those}}, "
                     f"got {device_map!r}")


def hf_loading_arguments(dtype, device, kwargs: dict) -> tuple[torch.dtype | str | None, torch.device | None, dict]:
    """Merge transformers' ``from_pretrained`` names into sam3lt's: ``torch_dtype`` -> ``dtype``,
    ``device_map`` -> ``device`` (both given and different: ValueError); returns ``(dtype, device, download
    arguments)``. Arguments sam3lt satisfies as they are pass silently, ignored ones with one warning, anything
    else raises TypeError. ``kwargs`` is consumed."""
    torch_dtype = _parse_dtype("torch_dtype", kwargs.pop("torch_dtype", None))
    dtype = _parse_dtype("dtype", dtype)
    if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
        raise ValueError(f"dtype / torch_dtype: got both ({dtype} and {torch_dtype}); pass one (torch_dtype is "
                         "transformers' older name for dtype)")
    dtype = dtype if dtype is not None else torch_dtype
    if kwargs.get("device_map") is not None:
        mapped = _device_from_map(kwargs.pop("device_map"))
        if device is not None and torch.device(device) != mapped:
            raise ValueError(f"device / device_map: got both ({device!r} and {str(mapped)!r}); pass one")
        device = mapped
    kwargs.pop("device_map", None)
    if kwargs.get("use_safetensors") is False:
        raise ValueError("use_safetensors: sam3lt reads safetensors checkpoints only; got False")
    download = {name: kwargs.pop(name) for name in _DOWNLOAD_ARGS if name in kwargs}
    ignored = [name for name in _IGNORED_HF_ARGS if name in kwargs]
    for name in (*_SATISFIED_HF_ARGS, *ignored):
        kwargs.pop(name, None)
    if kwargs:
        raise TypeError(f"from_pretrained: unexpected argument(s) {sorted(kwargs)}; sam3lt takes dtype (or "
                        f"torch_dtype), device (or device_map), fold_batchnorm, revision, {', '.join(_DOWNLOAD_ARGS)}"
                        f" and accepts {', '.join([*_SATISFIED_HF_ARGS, *_IGNORED_HF_ARGS])}")
    if ignored:
        warnings.warn("from_pretrained: ignored " + "; ".join(f"{name} ({_IGNORED_HF_ARGS[name]})"
                                                              for name in ignored), stacklevel=3)
    return dtype, device, download


def _auto_dtype(config: dict, state: dict[str, torch.Tensor]) -> torch.dtype:
    """``dtype="auto"`` as HF: config.json's ``dtype`` (or ``torch_dtype``), else the first floating weight's."""
    name = config.get("dtype") or config.get("torch_dtype")
    if name:
        return _parse_dtype("config.json dtype", name)
    return next((v.dtype for v in state.values() if v.is_floating_point()), torch.float32)


def from_pretrained(model_class, path_or_hub_id: str | os.PathLike = DEFAULT_CHECKPOINT, *,
                    dtype: torch.dtype | str | None = None, device=None, fold_batchnorm: bool = True,
                    revision: str | None = None, **hf_kwargs):
    """``model_class`` loaded from a checkpoint folder or hub id (default: the S0 port
    ``yonigozlan/sam3-litetext-s0``); ``sam3lt.from_pretrained`` / ``Sam3LiteTextModel.from_pretrained``.

    Args:
        dtype: parameter dtype: a torch.dtype, its name, or "auto" (the checkpoint's, as HF); default float32.
        device: target device (default CPU).
        fold_batchnorm: fold the RepMixer BatchNorms into the convolutions (inference); False keeps HF's
            parameters, which are then folded on the fly in every forward.
        hf_kwargs: transformers' names: ``torch_dtype`` (= dtype), ``device_map`` ("auto" = CUDA if available
            else CPU, "cpu", "cuda", "cuda:N", N, a torch.device, ``{"": device}``), ``cache_dir``,
            ``local_files_only``, ``token``, ``force_download``; ``low_cpu_mem_usage``, ``trust_remote_code`` and
            ``use_safetensors=True`` hold as they are; ``attn_implementation`` is ignored with a warning; anything
            else raises TypeError.
    """
    dtype, device, download = hf_loading_arguments(dtype, device, hf_kwargs)
    folder = resolve_checkpoint(path_or_hub_id, revision, **download)
    config_file = folder / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"no config.json in {folder}")
    try:
        raw_config = json.loads(config_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CheckpointError(f"config file {config_file} is not valid JSON: {err}") from err
    config = Sam3LiteTextConfig.from_dict(raw_config)
    state = read_state_dict(folder)
    if isinstance(dtype, str):  # "auto"
        dtype = _auto_dtype(raw_config, state)
    return load_into(model_class, config, state, str(folder), dtype=dtype, device=device,
                     fold_batchnorm=fold_batchnorm)


def from_transformers(model_class, hf_model, *, dtype: torch.dtype | None = None, device=None,
                      fold_batchnorm: bool = True):
    """``model_class`` from a live ``transformers`` ``Sam3LiteTextModel`` (same weights; dtype/device default to
    its own); ``sam3lt.from_transformers`` / ``Sam3LiteTextModel.from_transformers``."""
    if not hasattr(hf_model, "state_dict") or not hasattr(hf_model, "config"):
        raise TypeError(f"hf_model: expected a transformers Sam3LiteTextModel, got {type(hf_model).__name__}")
    config = Sam3LiteTextConfig.from_dict(hf_model.config.to_dict())
    param = next(hf_model.parameters())
    state = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}  # no aliasing
    return load_into(model_class, config, state, type(hf_model).__name__, dtype=dtype or param.dtype,
                     device=device or param.device, fold_batchnorm=fold_batchnorm)


# --------------------------------------------------------------------------------------------------- saving
def to_hf_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights under HF ``Sam3LiteTextModel`` key names (the inverse of :func:`convert_hf_state_dict`):
    ``qkv`` split into q/k/v again, folded RepMixer blocks replaced by the HF parameters they were folded from."""
    state = model.state_dict()
    for name, module in model.named_modules():
        if getattr(module, "folded", False) and hasattr(module, "hf_state_dict"):  # a folded RepMixer block
            for key in module._FOLDED:
                del state[f"{name}.{key}"]
            state.update({f"{name}.{key}": value for key, value in module.hf_state_dict().items()})
    for key in [k for k in state if _FUSED_QKV.match(k) and ".qkv." in k]:
        base, leaf = key.split(".qkv.")
        for part, value in zip("qkv", state.pop(key).chunk(3, dim=0)):
            state[f"{base}.{part}_proj.{leaf}"] = value
    return state


_WEIGHT_FILES = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors$|^model\.safetensors\.index\.json$")


def save_pretrained(model: torch.nn.Module, save_directory: str | os.PathLike, *,
                    max_shard_size: int | str = "50GB", is_main_process: bool = True, safe_serialization: bool = True,
                    push_to_hub: bool = False, **kwargs) -> None:
    """Write ``config.json`` (HF's format, with the weights' ``dtype``) and ``model.safetensors`` (sharded with an
    index above ``max_shard_size``, as HF) with HF's key names, in the model's dtype; transformers'
    ``Sam3LiteTextModel.from_pretrained`` and sam3lt's load the folder. Weight files of an earlier save in the
    folder are replaced. HF's other ``save_pretrained`` arguments are refused (TypeError)."""
    if kwargs:
        raise TypeError(f"save_pretrained: unexpected argument(s) {sorted(kwargs)}; sam3lt takes max_shard_size, "
                        "is_main_process, safe_serialization=True and push_to_hub=False")
    if not safe_serialization:
        raise ValueError("safe_serialization: sam3lt writes safetensors only; got False")
    if push_to_hub:
        raise ValueError("push_to_hub: sam3lt does not upload; save, then use huggingface_hub.upload_folder")
    if not is_main_process:  # as HF: only the main process writes
        return
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    folder = Path(save_directory).expanduser()
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_directory: {str(folder)!r} is a file; expected a folder")
    # fresh, unshared, contiguous CPU tensors (fused q/k/v views and split qkv chunks share storage)
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in to_hf_state_dict(model).items()}
    split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        if _WEIGHT_FILES.match(old.name) and old.name not in split.filename_to_tensors:
            old.unlink()
    for filename, names in split.filename_to_tensors.items():
        save_file({name: state[name] for name in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
                 "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
    config = model.config.to_dict()
    config["dtype"] = str(model.dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
