"""The on-disk cache of measured backend choices, so that a choice made by :func:`sam3lt.ops.autotune` in one
process serves every later process on the same device and software (``optimize`` and the plain model read it
through the normal ``auto`` dispatch).

One JSON file per device and software: ``<cache dir>/autotune/<device>-sm<cc>-torch<v>-triton<v>-sam3lt<v>.json``
mapping ``op|signature`` to the chosen backend and each candidate's time, so a new driver stack, library version
or card starts measuring afresh instead of trusting stale numbers. The cache dir is ``$SAM3LT_CACHE_DIR``, else
platformdirs' user cache dir for "sam3lt" when platformdirs is installed, else ``$XDG_CACHE_HOME/sam3lt`` or
``~/.cache/sam3lt``. Only CUDA measurements are stored (the CPU's choices stay in the process).

Note: ``sam3lt.ops.autotune`` is the context manager (this module is imported as ``sam3lt.ops.autotune`` only
by ``from sam3lt.ops.autotune import ...``).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import threading

import torch

from .._version import __version__

ENV = "SAM3LT_CACHE_DIR"
_lock = threading.Lock()
_loaded: dict[str, dict[str, dict]] = {}  # file path -> its entries, read once per process
_ops: dict[str, set[str]] = {}  # file path -> the ops it has choices for


def cache_dir() -> str:
    env = os.environ.get(ENV, "").strip()
    if env:
        return env
    try:
        import platformdirs

        return platformdirs.user_cache_dir("sam3lt")
    except ImportError:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        return os.path.join(base, "sam3lt")


def device_identity(device: torch.device) -> dict | None:
    """Name, compute capability and software versions of a CUDA device; None when there is none to ask
    (fake CUDA tensors without a GPU, other devices). Tests replace this function to stand in for a card."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return identity(torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index))


def identity(name: str, capability: tuple[int, int]) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return {"device": name, "capability": f"{capability[0]}{capability[1]}", "torch": torch.__version__,
            "triton": triton_version, "sam3lt": __version__}


def cache_file(ident: dict) -> str:
    slug = re.sub(r"[^A-Za-z0-9.+-]+", "_", ident["device"]).strip("_") or "device"
    name = f"{slug}-sm{ident['capability']}-torch{ident['torch']}-triton{ident['triton']}-sam3lt{ident['sam3lt']}"
    return os.path.join(cache_dir(), "autotune", re.sub(r"[^A-Za-z0-9.+_-]", "_", name) + ".json")


def load(path: str) -> dict[str, dict]:
    """The entries of one cache file (read once per process; a missing or unreadable file is empty)."""
    with _lock:
        return load_unlocked(path)


def load_unlocked(path: str) -> dict[str, dict]:
    if path not in _loaded:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            _loaded[path] = data.get("choices", {}) if isinstance(data, dict) else {}
        except (OSError, ValueError):
            _loaded[path] = {}
    return _loaded[path]


def ops_in(path: str) -> set[str]:
    """The ops with a choice in one cache file."""
    with _lock:
        if path not in _ops:
            _ops[path] = {k.split("|", 1)[0] for k in load_unlocked(path)}
        return _ops[path]


def store(path: str, ident: dict, key: str, backend: str, times: dict) -> None:
    """Add one choice and rewrite the file atomically (merged with what another process wrote meanwhile)."""
    entry = {"backend": backend, "ms": {k: v for k, v in times.items() if isinstance(v, (int, float, str))}}
    with _lock:
        try:
            with open(path, encoding="utf-8") as f:
                on_disk = json.load(f).get("choices", {})
        except (OSError, ValueError, AttributeError):
            on_disk = {}
        choices = {**on_disk, **_loaded.get(path, {}), key: entry}
        _loaded[path] = choices
        _ops[path] = {k.split("|", 1)[0] for k in choices}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"identity": ident, "choices": choices}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)


def forget_loaded() -> None:
    """Drop the in-process copies (the files stay): the next lookup reads the files again."""
    with _lock:
        _loaded.clear()
        _ops.clear()
