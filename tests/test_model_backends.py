"""Whole-model parity across backends: the tiny model under backend "triton" (and "cuda" where built and a
GPU exists) equals backend "eager". On the CPU the Triton kernels run in the interpreter (fp32)."""
from __future__ import annotations

from _interp import CUDA, DEVICE, interpreter_env, kernel_test  # noqa: F401  (import before sam3lt)

import pytest
import torch

import sam3lt
import seeds

OUTPUTS = ("pred_masks", "pred_boxes", "pred_logits", "presence_logits", "semantic_seg")


def _model_and_inputs(dtype=torch.float32):
    torch.manual_seed(seeds.BASE)
    config = sam3lt.Sam3LiteTextConfig.tiny("s0", image_size=196)  # 14x14 grid, window 8: padded windows
    model = sam3lt.Sam3LiteTextModel(config).to(device=DEVICE, dtype=dtype)
    gen = seeds.gen(1)
    pixels = torch.randn(2, 3, 196, 196, generator=gen).to(DEVICE, dtype)
    ids = torch.randint(1, 49000, (2, 6), generator=gen)
    ids[:, -1] = 49407
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, 4:] = 0  # a padded prompt
    boxes = torch.tensor([[[0.5, 0.5, 0.4, 0.3]], [[0.3, 0.6, 0.2, 0.2]]], device=DEVICE, dtype=dtype)
    return model, dict(pixel_values=pixels, input_ids=ids.to(DEVICE), attention_mask=mask.to(DEVICE),
                       input_boxes=boxes, input_boxes_labels=torch.tensor([[1], [0]], device=DEVICE))


def _compare(backend: str, dtype=torch.float32, rtol=1e-4):
    model, inputs = _model_and_inputs(dtype)
    with torch.no_grad():
        with sam3lt.use_backend("eager"):
            ref = model(**inputs)
        with sam3lt.use_backend(backend):
            out = model(**inputs)
    for name in OUTPUTS:
        a, b = getattr(ref, name).double(), getattr(out, name).double()
        err = ((a - b).abs().max() / a.abs().max()).item()
        assert err <= rtol, f"{backend} vs eager, {name}: relative error {err:.3g} > {rtol}"


@kernel_test
def test_triton_model_equals_eager():
    _compare("triton")


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype, rtol", [(torch.float16, 2e-2), (torch.bfloat16, 5e-2)])
def test_triton_model_equals_eager_low_precision(dtype, rtol):
    _compare("triton", dtype, rtol)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_model_equals_eager():
    from sam3lt.ops import _cuda

    available, reason = _cuda.status()
    if not available:
        pytest.skip(f"cuda backend unavailable: {reason}")
    _compare("cuda")
