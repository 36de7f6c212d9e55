"""A microbenchmark case: one op of ``sam3lt.ops`` on one realistic shape, its FLOP and byte counts, and the
baselines that do the same core work (bare SDPA, xformers, ...).

FLOP and byte counts are the *minimal* work of the op: attention counts 4·B·H·Lq·Lk·D (the two matmuls, as
FlashAttention reports it; softmax, RoPE and bias adds are not counted); bytes are what a fused kernel must
read and write once (inputs + output), so GB/s is an *effective* bandwidth: an eager implementation that
materialises intermediates moves more than it is credited for.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

MakeFn = Callable[[torch.device, torch.dtype, torch.Generator], tuple]


@dataclass
class Baseline:
    """``prepare(args) -> (fn, bargs)``: lay the op's inputs out for the baseline once (not timed); the timed
    call is ``fn(*bargs)``. ``supports(device, dtype) -> reason | None``."""

    name: str
    prepare: Callable[[tuple], tuple[Callable, tuple]]
    note: str = ""
    supports: Callable[[torch.device, torch.dtype], str | None] = lambda device, dtype: None


@dataclass
class Case:
    family: str
    op: str  # name of the sam3lt.ops function (and of its dispatch entry)
    name: str  # what part of the model this is
    shape: str  # human-readable shape
    make: MakeFn  # positional args of the op, in dispatch order
    flops: Callable[[tuple], float]
    bytes: Callable[[tuple], float]
    baselines: list[Baseline] = field(default_factory=list)
    sizes: tuple[str, ...] = ("full", "cpu", "tiny")  # size classes that run this case
    quick: bool = True  # also run under --quick


def nbytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def randn(gen: torch.Generator, *shape, device, dtype, scale: float = 1.0) -> torch.Tensor:
    """Random normal values from ``gen`` (a generator on ``device``: reproducible, made where they are used)."""
    x = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32)
    return (x * scale).to(dtype) if scale != 1.0 else x.to(dtype)
