"""sam3lt/model/fusion.py: the stacks' cross-layer fusions give what the blocks' own forwards give, in fp32 on the
eager backend bitwise (the fused ops' references are the same torch calls in the same order)."""
import pytest
import torch

import sam3lt
from sam3lt import Sam3LiteTextConfig, Sam3LiteTextModel
from sam3lt.model import fusion
from sam3lt.model.vision import ViTModel


@pytest.fixture(scope="module", params=["s0", "l"])
def model(request):
    torch.manual_seed(0)
    return Sam3LiteTextModel(Sam3LiteTextConfig.tiny(text_encoder=request.param)).eval()


@torch.no_grad()
def test_vit_stack_equals_its_blocks(model):
    vit = next(m for m in model.modules() if isinstance(m, ViTModel))
    size = vit.config.image_size
    pixels = torch.randn(1, 3, size, size)
    with sam3lt.use_backend("eager"):
        fused, hidden = vit(pixels, output_hidden_states=True)
        x = vit.layer_norm(vit.embeddings(pixels))
        for i, layer in enumerate(vit.layers):
            tables = (vit.rope_window_cos, vit.rope_window_sin) if layer.window_size else (vit.rope_global_cos,
                                                                                          vit.rope_global_sin)
            x = layer(x, *tables)
            assert torch.equal(hidden[i + 1], x), f"layer {i}"
    assert torch.equal(fused, x)


@torch.no_grad()
def test_text_stack_equals_its_blocks(model):
    text = model.text_encoder
    ids = torch.randint(0, 1000, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, 7:] = False
    with sam3lt.use_backend("eager"):
        fused, hidden = text(ids, mask, output_hidden_states=True)
        x = text.embeddings(ids)
        for i, layer in enumerate(text.layers):
            x = layer(x, mask)
            assert torch.equal(hidden[i + 1], x), f"layer {i}"
    assert torch.equal(fused, text.final_layer_norm(x))


@torch.no_grad()
def test_memory_kv_stacked_equals_per_layer(model):
    attns = [layer.cross_attn for layer in model.detr_encoder.layers]
    memory = torch.randn(2, 5, attns[0].k_proj.weight.shape[1])
    per_layer = fusion.memory_kv(attns, memory, memory)
    stacked = fusion.memory_kv(attns, memory, memory, fusion.StackedKV(attns))
    bounded = fusion.memory_kv(attns, memory, memory, fusion.StackedKV(attns), max_bytes=0)  # too big: per layer
    for i in range(len(attns)):
        for a, b, c in zip(per_layer[i], stacked[i], bounded[i]):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)  # one GEMM for all layers: GEMM rounding only
            assert torch.equal(c, a)
