"""The model pair of the layer and end-to-end benchmarks: HF transformers' ``Sam3LiteTextModel`` with random
weights (HF's own init, ``attn_implementation="sdpa"``, as in the H200 baseline notes) and
``sam3lt.from_transformers`` of it: the same weights.

Sizes: ``full`` is the released model (default S0 config, 1008² images: the GPU runs); ``cpu`` keeps every
width but shrinks the ViT to 8 layers (globals at 3 and 7) on 336² images with 12×12 windows (4 windows of 144
tokens, DETR over 24² tokens); ``tiny`` is ``Sam3LiteTextConfig.tiny()`` (CPU ``--quick`` and the tests).
"""
from __future__ import annotations

import torch

import sam3lt

SEQ_LEN, VALID_TOKENS = 32, 8
BOX = (0.5, 0.5, 0.4, 0.3)  # the box prompt of the per-layer runs (cx, cy, w, h), label 1
TARGET_SIZES = {"full": (1080, 1920), "cpu": (540, 960), "tiny": (270, 480)}  # post-processing output size


def make_config(size: str, text: str = "s0") -> sam3lt.Sam3LiteTextConfig:
    if size == "full":
        return sam3lt.Sam3LiteTextConfig.from_preset(text)
    if size == "tiny":
        return sam3lt.Sam3LiteTextConfig.tiny(text)
    if size == "cpu":
        config = sam3lt.Sam3LiteTextConfig.from_preset(text)
        vit = config.vision_config.backbone_config
        vit.image_size, vit.window_size, vit.num_hidden_layers, vit.global_attn_indexes = 336, 12, 8, [3, 7]
        return sam3lt.Sam3LiteTextConfig.from_dict(config.to_dict())  # re-derive the feature sizes
    raise ValueError(f"size: unknown size class {size!r}")


def describe_config(config: sam3lt.Sam3LiteTextConfig) -> dict:
    vit = config.vision_config.backbone_config
    return {"image_size": config.image_size, "vit_layers": vit.num_hidden_layers, "vit_width": vit.hidden_size,
            "vit_heads": vit.num_attention_heads, "window_size": vit.window_size,
            "global_attn_indexes": list(vit.global_attn_indexes),
            "text_layers": config.text_config.num_hidden_layers, "text_width": config.text_config.hidden_size,
            "detr_width": config.detr_encoder_config.hidden_size,
            "detr_encoder_layers": config.detr_encoder_config.num_layers,
            "detr_decoder_layers": config.detr_decoder_config.num_layers,
            "queries": config.detr_decoder_config.num_queries, "prompt_tokens": SEQ_LEN,
            "valid_prompt_tokens": VALID_TOKENS}


def build_pair(size: str, device: torch.device, text: str = "s0", seed: int = 0):
    """(hf_model, sam3lt_model, config), fp32, eval, on ``device``. sam3lt's input checks that sync the
    device are off (``validate_inputs = False``): HF has none."""
    from transformers import Sam3LiteTextConfig as HFConfig, Sam3LiteTextModel as HFModel

    config = make_config(size, text)
    try:
        hf_config = HFConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})
    except (TypeError, ValueError):
        if size != "full" or text != "s0":
            raise
        hf_config = HFConfig()  # another transformers release: its defaults are the released S0 model
    hf_config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    with torch.device(device):
        hf = HFModel(hf_config).eval()
    ours = sam3lt.from_transformers(hf)  # its config is read from HF's: the same model whatever the release
    ours.validate_inputs = False
    return hf, ours, ours.config


def param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def make_inputs(config, images: int, prompts: int, device, dtype, box: bool = False, seed: int = 0) -> dict:
    """Model inputs: ``images`` random images, ``prompts`` prompts of SEQ_LEN tokens (VALID_TOKENS valid, EOT
    last), optionally one positive box per prompt."""
    gen = torch.Generator().manual_seed(seed)
    size = config.image_size
    pixels = torch.randn(images, 3, size, size, generator=gen).to(device=device, dtype=dtype)
    ids = torch.randint(1, 49000, (prompts, SEQ_LEN), generator=gen)
    ids[:, VALID_TOKENS - 1] = 49407
    ids[:, VALID_TOKENS:] = 0
    mask = torch.zeros(prompts, SEQ_LEN, dtype=torch.long)
    mask[:, :VALID_TOKENS] = 1
    out = {"pixel_values": pixels, "input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if box:
        out["input_boxes"] = torch.tensor([[BOX]] * prompts, device=device, dtype=dtype)
        out["input_boxes_labels"] = torch.ones(prompts, 1, dtype=torch.long, device=device)
    return out


def input_bytes(inputs: dict) -> int:
    return sum(t.numel() * t.element_size() for t in inputs.values() if isinstance(t, torch.Tensor))
