"""Shared helpers for the tests that compare against HF transformers (the reference implementation)."""
from __future__ import annotations

import pytest
import torch

import sam3lt

transformers = pytest.importorskip("transformers", reason="the HF reference tests need transformers (test extra)")
from transformers import Sam3LiteTextConfig as HFConfig, Sam3LiteTextModel as HFModel  # noqa: E402
import seeds

OUTPUTS = ("pred_masks", "pred_boxes", "pred_logits", "presence_logits", "semantic_seg")
RTOL_FP32 = 1e-4  # max |ours − HF| / max |HF| per output, fp32 on CPU (issue 2)


def hf_config(config: sam3lt.Sam3LiteTextConfig) -> HFConfig:
    """The HF config with the same values, built from our ``to_dict`` (also checks HF reads it)."""
    hf = HFConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    hf._attn_implementation = "sdpa"
    return hf


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, perturb: bool = True) -> torch.nn.Module:
    """Make every weight non-trivial: perturb all parameters (``perturb``), give BatchNorms real statistics and
    layer scales O(1) values (HF's init leaves BN at identity and layer scale at 1e-5, hiding folding errors)."""
    gen = seeds.gen(seed)
    for name, p in model.named_parameters():
        if perturb:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        if "layer_scale" in name:
            p.copy_(torch.rand(p.shape, generator=gen) * 0.5 + 0.2)
    for name, b in model.named_buffers():
        if name.endswith("running_var"):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
        elif name.endswith("running_mean"):
            b.copy_(torch.randn(b.shape, generator=gen) * 0.3)
    return model


def make_pair(config: sam3lt.Sam3LiteTextConfig, seed: int = 0, fold_batchnorm: bool = True, perturb: bool = True):
    """An HF model with random non-trivial weights and the sam3lt model converted from it."""
    torch.manual_seed(seeds.BASE + seed)
    hf = randomize(HFModel(hf_config(config)).eval(), seed, perturb)
    return hf, sam3lt.from_transformers(hf, fold_batchnorm=fold_batchnorm)


def rel_err(ref: torch.Tensor, out: torch.Tensor) -> float:
    assert ref.shape == out.shape, (ref.shape, out.shape)
    return ((ref.double() - out.double()).abs().max() / ref.double().abs().max().clamp_min(1e-12)).item()


def assert_outputs_close(ref, out, rtol: float = RTOL_FP32, names=OUTPUTS):
    errors = {name: rel_err(getattr(ref, name), getattr(out, name)) for name in names}
    bad = {k: v for k, v in errors.items() if not v <= rtol}
    assert not bad, f"relative errors above {rtol}: {bad} (all: {errors})"
    return errors


def random_inputs(config: sam3lt.Sam3LiteTextConfig, batch: int, seq_len: int = 9, seed: int = 0,
                  pad: bool = True):
    """Random pixels and token ids ending in an EOT token (the largest id, as CLIP); with ``pad`` the
    later prompts are right-padded (attention_mask 0) by different amounts."""
    gen = seeds.gen(seed)
    size = config.image_size
    pixels = torch.randn(batch, 3, size, size, generator=gen)
    ids = torch.randint(1, 49000, (batch, seq_len), generator=gen)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    for i in range(batch):
        length = seq_len - (i * 3) % (seq_len - 2) if pad else seq_len
        ids[i, length - 1] = 49407
        ids[i, length:] = 0
        mask[i, length:] = 0
    return pixels, ids, mask
