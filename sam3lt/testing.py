"""Helpers for checking sam3lt without a GPU (used by the tests and bench/launches.py)."""
from __future__ import annotations

import torch.nn as nn


def fake_cuda(model: nn.Module, mode) -> nn.Module:
    """The model's parameters and buffers as fake CUDA tensors of ``mode`` (a ``FakeTensorMode``): shapes, dtypes
    and devices only, so a forward can be traced for host syncs or counted for kernel launches with no GPU."""
    with mode:
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                setattr(module, name, nn.Parameter(mode.from_tensor(p).to("cuda"), requires_grad=False))
            for name, b in list(module.named_buffers(recurse=False)):
                module._buffers[name] = mode.from_tensor(b).to("cuda")
    return model
