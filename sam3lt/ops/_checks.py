"""Argument checks shared by the ops' ``check_args`` (one convention: raise TypeError / ValueError naming the
argument and what was expected, the message prefixed with the op's name)."""
from __future__ import annotations

import torch


def tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")


def floating(op: str, name: str, t) -> None:
    tensor(op, name, t)
    if not t.dtype.is_floating_point:
        raise TypeError(f"{op}: {name} must be a floating-point tensor, got {t.dtype}")


def integer(op: str, name: str, n, minimum: int | None = None) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"{op}: {name} must be an int, got {type(n).__name__}")
    if minimum is not None and n < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {n}")


def like(op: str, ref_name: str, ref: torch.Tensor, named, optional=()) -> None:
    """Every (name, tensor) in ``named`` a floating-point tensor of ``ref``'s dtype on ``ref``'s device (or None,
    for the names in ``optional``)."""
    for name, t in named:
        if t is None and name in optional:
            continue
        floating(op, name, t)
        if t.dtype != ref.dtype:
            raise TypeError(f"{op}: {name} dtype {t.dtype} differs from {ref_name} dtype {ref.dtype}")
        if t.device != ref.device:
            raise ValueError(f"{op}: {name} is on {t.device}, {ref_name} on {ref.device}")


def same_device(op: str, named) -> None:
    devices = {t.device for _, t in named if t is not None}
    if len(devices) > 1:
        raise ValueError(f"{op}: inputs are on different devices "
                         f"({', '.join(f'{n}: {t.device}' for n, t in named if t is not None)})")
