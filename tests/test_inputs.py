"""Bad inputs get a clear ValueError/TypeError that names the argument."""
from __future__ import annotations

import pytest
import torch

import sam3lt

pytestmark = pytest.mark.usefixtures("no_grad")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sam3lt.Sam3LiteTextModel(sam3lt.Sam3LiteTextConfig.tiny("s0"))


@pytest.fixture()
def inputs(model):
    size = model.config.image_size
    return dict(pixel_values=torch.randn(1, 3, size, size), input_ids=torch.randint(0, 49407, (1, 5)),
                attention_mask=torch.ones(1, 5, dtype=torch.long))


def test_valid_call_runs(model, inputs):
    out = model(**inputs)
    assert out.pred_masks.shape[:2] == (1, model.config.detr_decoder_config.num_queries)
    assert torch.isfinite(out.pred_masks).all()


def test_both_or_neither_image_input(model, inputs):
    vision = model.get_vision_features(inputs["pixel_values"])
    with pytest.raises(ValueError, match="pixel_values / vision_embeds"):
        model(vision_embeds=vision, **inputs)
    inputs.pop("pixel_values")
    with pytest.raises(ValueError, match="pixel_values / vision_embeds"):
        model(**inputs)


def test_both_or_neither_text_input(model, inputs):
    text = model.get_text_features(inputs["input_ids"])
    with pytest.raises(ValueError, match="input_ids / text_embeds"):
        model(text_embeds=text, **inputs)
    inputs.pop("input_ids")
    with pytest.raises(ValueError, match="input_ids / text_embeds"):
        model(**inputs)


@pytest.mark.parametrize("shape, match", [((1, 1, 280, 280), "channels"), ((1, 4, 280, 280), "channels"),
                                          ((1, 3, 252, 280), "spatial size"), ((3, 280, 280), "dimensions")])
def test_pixel_shape(model, inputs, shape, match):
    inputs["pixel_values"] = torch.randn(*shape)
    with pytest.raises(ValueError, match=f"pixel_values.*{match}"):
        model(**inputs)


def test_integer_pixels(model, inputs):
    inputs["pixel_values"] = torch.randint(0, 255, inputs["pixel_values"].shape, dtype=torch.uint8)
    with pytest.raises(TypeError, match="pixel_values.*floating"):
        model(**inputs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_pixels(model, inputs, bad):
    inputs["pixel_values"][0, 1, 5, 7] = bad
    with pytest.raises(ValueError, match="pixel_values.*NaN or infinite"):
        model(**inputs)


def test_empty_prompt_list(model, inputs):
    inputs["input_ids"] = torch.zeros(0, 5, dtype=torch.long)
    inputs["attention_mask"] = torch.zeros(0, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="input_ids.*empty"):
        model(**inputs)


def test_attention_mask_shape(model, inputs):
    inputs["attention_mask"] = torch.ones(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="attention_mask"):
        model(**inputs)


@pytest.mark.parametrize("box", [[0.5, 0.5, 1.2, 0.1], [-0.1, 0.5, 0.2, 0.2]])
def test_boxes_outside_unit_square(model, inputs, box):
    with pytest.raises(ValueError, match=r"input_boxes.*\[0, 1\]"):
        model(**inputs, input_boxes=torch.tensor([[box]]))


def test_boxes_wrong_last_dim(model, inputs):
    with pytest.raises(ValueError, match="input_boxes.*4"):
        model(**inputs, input_boxes=torch.rand(1, 2, 3))


def test_box_labels_shape_mismatch(model, inputs):
    with pytest.raises(ValueError, match="input_boxes_labels"):
        model(**inputs, input_boxes=torch.rand(1, 2, 4) * 0.5, input_boxes_labels=torch.ones(1, 3, dtype=torch.long))


def test_padding_boxes_are_not_range_checked(model, inputs):
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.0, 0.0, 0.0, 0.0]]])
    model(**inputs, input_boxes=boxes, input_boxes_labels=torch.tensor([[1, -10]]))


def test_image_prompt_batch_mismatch(model, inputs):
    size = model.config.image_size
    inputs["pixel_values"] = torch.randn(2, 3, size, size)
    inputs["input_ids"] = torch.randint(0, 49407, (3, 5))
    inputs["attention_mask"] = torch.ones(3, 5, dtype=torch.long)
    with pytest.raises(ValueError, match="2 images and 3 prompts"):
        model(**inputs)


def test_unknown_text_variant():
    with pytest.raises(ValueError, match="text_encoder.*unknown text variant"):
        sam3lt.Sam3LiteTextConfig.from_preset("s7")
    with pytest.raises(ValueError, match="text_encoder.*unknown text variant"):
        sam3lt.Sam3LiteTextConfig.tiny("xl")


def test_unexpected_keyword(model, inputs):
    with pytest.raises(TypeError, match="pixel_mask"):
        model(**inputs, pixel_mask=None)


def test_validation_can_be_switched_off_for_the_fast_path(model, inputs):
    inputs["pixel_values"][0, 0, 0, 0] = float("nan")
    model.validate_inputs = False
    try:
        model(**inputs)  # no host sync to look for NaNs; the NaN propagates
    finally:
        model.validate_inputs = True
