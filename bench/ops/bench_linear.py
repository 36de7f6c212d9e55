"""Linear layers with a fused epilogue (``sam3lt.ops.linear``): the ViT MLP (72² = 5184 tokens, 1024 → 4736 with
GELU, 4736 → 1024 with the residual) and the DETR encoder MLP (5184 tokens, 256 → 2048 with ReLU, 2048 → 256 with
the residual). ``eager`` is cuBLAS ``F.linear`` followed by separate activation / add kernels; ``triton`` is one
GEMM with bias, activation and residual applied in its epilogue.

FLOPs: 2·M·N·K (the epilogue is not counted), so ``frac_compute`` is the fraction of the measured matmul ceiling
of the dtype. Bytes: x, weight, bias, residual and output once. Baseline: bare ``F.linear`` (cuBLAS GEMM with the
bias, no activation or residual): the floor a fused epilogue can approach.
"""
from __future__ import annotations

import torch.nn.functional as F

from ._case import Baseline, Case, nbytes, randn

# size class -> (tokens, (ViT width, ViT MLP width), (DETR width, DETR MLP width))
SIZES = {"full": (5184, (1024, 4736), (256, 2048)), "cpu": (576, (1024, 4736), (256, 2048)),
         "tiny": (400, (64, 160), (32, 64))}  # tiny: Sam3LiteTextConfig.tiny()'s widths


def _make(tokens, k, n, activation, residual):
    def make(device, dtype, gen):
        # 1/sqrt(K) weights keep outputs O(1), as a trained layer's are
        x = randn(gen, 1, tokens, k, device=device, dtype=dtype)
        weight = randn(gen, n, k, device=device, dtype=dtype, scale=k ** -0.5)
        bias = randn(gen, n, device=device, dtype=dtype, scale=0.1)
        res = randn(gen, 1, tokens, n, device=device, dtype=dtype) if residual else None
        return x, weight, bias, activation, res
    return make


def _flops(args):
    x, weight = args[0], args[1]
    return 2 * x.numel() * weight.shape[0]


def _bytes(args):
    x, weight, bias, _, res = args
    return nbytes(x, weight, bias, res) + x.numel() // x.shape[-1] * weight.shape[0] * x.element_size()


def _gemm_only(args):
    x, weight, bias = args[:3]
    return F.linear, (x, weight, bias)


BASELINES = [Baseline("F.linear", _gemm_only, "cuBLAS GEMM + bias only (no activation / residual)")]


def cases(size: str) -> list[Case]:
    tokens, (vit, vit_mlp), (detr, detr_mlp) = SIZES[size]

    def case(name, k, n, activation, residual, quick=True):
        epilogue = " + ".join(p for p in ("bias", activation and activation.upper(), residual and "residual") if p)
        return Case("linear", "linear", name, f"{tokens}×{k} → {n}, {epilogue}",
                    _make(tokens, k, n, activation, residual), _flops, _bytes, BASELINES, quick=quick)

    return [
        case("ViT MLP fc1 + GELU", vit, vit_mlp, "gelu", False),
        case("ViT MLP fc2 + residual", vit_mlp, vit, None, True),
        case("DETR encoder MLP fc1 + ReLU", detr, detr_mlp, "relu", False),
        case("DETR encoder MLP fc2 + residual", detr_mlp, detr, None, True, quick=False),
    ]
