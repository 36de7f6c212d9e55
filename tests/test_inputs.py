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


# ---- integer inputs: a ValueError naming the argument and the valid range, never an IndexError -------------
VOCAB = 49408  # Sam3LiteTextConfig.tiny()'s text vocabulary, as the released model's


@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 1000, -1])
def test_token_ids_outside_the_vocabulary(model, inputs, bad):
    assert model.config.text_config.vocab_size == VOCAB
    inputs["input_ids"][0, 3] = bad
    match = rf"input_ids: token ids must be in \[0, {VOCAB - 1}\].*got {bad} at \[0, 3\]"
    with pytest.raises(ValueError, match=match):
        model(**inputs)
    with pytest.raises(ValueError, match=match):
        model.get_text_features(inputs["input_ids"], inputs["attention_mask"])


def test_integer_inputs_on_the_fast_path(model, inputs):
    """The fast path skips value checks only where they would sync a GPU: CPU ids and masks are still checked."""
    import copy

    fast = sam3lt.optimize(copy.deepcopy(model), dtype=torch.float32, prompt_buckets=(1,))
    assert fast.model.validate_inputs is False
    inputs["input_ids"][0, 0] = VOCAB
    with pytest.raises(ValueError, match=r"input_ids: token ids must be in \[0, "):
        fast(**inputs)
    with pytest.raises(ValueError, match=r"input_ids: token ids must be in \[0, "):
        fast.encode_text(inputs["input_ids"])
    inputs["input_ids"][0, 0] = 0
    inputs["attention_mask"][0, 1] = 3
    with pytest.raises(ValueError, match="attention_mask: values must be 0"):
        fast(**inputs)
    text = fast.encode_text(inputs["input_ids"])
    with pytest.raises(ValueError, match="attention_mask: values must be 0"):
        fast(pixel_values=inputs["pixel_values"], text_embeds=text, attention_mask=inputs["attention_mask"])


@pytest.mark.parametrize("dtype", [torch.bool, torch.uint8, torch.float32])
def test_token_id_dtype(model, inputs, dtype):
    inputs["input_ids"] = inputs["input_ids"].clamp(max=1).to(dtype)
    with pytest.raises(TypeError, match="input_ids.*integer token ids"):
        model(**inputs)


@pytest.mark.parametrize("bad", [2, -1])
def test_attention_mask_values(model, inputs, bad):
    inputs["attention_mask"][0, 4] = bad
    with pytest.raises(ValueError, match=rf"attention_mask: values must be 0 .* or 1 .*got {bad} at \[0, 4\]"):
        model(**inputs)
    text = model.get_text_features(inputs.pop("input_ids"))
    with pytest.raises(ValueError, match="attention_mask: values must be 0"):
        model(text_embeds=text, **inputs)


def test_bool_and_float_attention_masks_are_accepted(model, inputs):
    ref = model(**inputs).pred_logits
    for dtype in (torch.bool, torch.float32):
        inputs["attention_mask"] = inputs["attention_mask"].to(dtype)
        torch.testing.assert_close(model(**inputs).pred_logits, ref)


@pytest.mark.parametrize("bad", [2, -1, 5])
def test_box_labels_outside_the_label_set(model, inputs, bad):
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    labels = torch.tensor([[1, bad]])
    match = (r"input_boxes_labels: labels must be 1 \(positive\), 0 \(negative\), -10 \(padding\), "
             rf"got {bad} at \[0, 1\]")
    with pytest.raises(ValueError, match=match):
        model(**inputs, input_boxes=boxes, input_boxes_labels=labels)
    # the heads are public too (the fast path calls them): same check
    vision = model.get_vision_features(inputs["pixel_values"])
    text = model.get_text_features(inputs["input_ids"]).pooler_output
    levels = len(model.config.vision_config.scale_factors) - 1
    with pytest.raises(ValueError, match=match):
        model.heads(list(vision.fpn_hidden_states[:levels]), list(vision.fpn_position_encoding[:levels]), text,
                    input_boxes=boxes, input_boxes_labels=labels)


def test_value_checks_read_only_host_tensors():
    """The rule of sam3lt/model/inputs.py: CPU tensors always; others only when validating, never fake or meta
    tensors (the fake-CUDA forward of tests/test_fast.py checks that the fast path does not sync)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from sam3lt.model.inputs import check_token_ids, host_readable

    cpu = torch.tensor([[VOCAB]])
    assert host_readable(cpu, validate=False) and host_readable(cpu, validate=True)
    with pytest.raises(ValueError, match="input_ids"):
        check_token_ids(cpu, VOCAB, validate=False)
    meta = torch.empty(1, 3, dtype=torch.long, device="meta")
    assert not host_readable(meta, validate=True)
    check_token_ids(meta, VOCAB)  # skipped: nothing to read
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(cpu)
        assert not host_readable(fake, validate=True)
        check_token_ids(fake, VOCAB)  # reading a fake tensor's values would raise


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_ids_checked_in_eager_mode_and_not_synced_on_the_fast_path(model, inputs):
    import copy

    gpu = copy.deepcopy(model).cuda()
    ids = inputs["input_ids"].cuda()
    ids[0, 0] = VOCAB
    with pytest.raises(ValueError, match=r"input_ids: token ids must be in \[0, "):
        gpu.get_text_features(ids)
    gpu.validate_inputs = False  # as sam3lt.optimize sets it
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu._check_ids(ids, None)  # would raise on a sync
    finally:
        torch.cuda.set_sync_debug_mode("default")


# ---- processor: sizes and labels ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def processor():
    return sam3lt.Sam3LiteTextProcessor(size=56)


def _outputs(queries=3):
    return sam3lt.Sam3LiteTextOutput(pred_masks=torch.randn(1, queries, 8, 8), pred_boxes=torch.rand(1, queries, 4),
                                     pred_logits=torch.randn(1, queries), presence_logits=torch.randn(1, 1),
                                     semantic_seg=torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("sizes", [[(0, 20)], [(20, -3)], [(20.5, 20)], torch.tensor([[20, 0]]), [(True, 20)]])
@pytest.mark.parametrize("method", ["post_process_instance_segmentation", "post_process_object_detection",
                                    "post_process_semantic_segmentation"])
def test_target_sizes(processor, sizes, method):
    with pytest.raises(ValueError, match=r"target_sizes\[0\]: height and width must be positive whole numbers"):
        getattr(processor, method)(_outputs(), target_sizes=sizes)


def test_target_sizes_accepted_forms(processor):
    for sizes in ([(20, 30)], [[20.0, 30.0]], torch.tensor([[20, 30]])):
        (result,) = processor.post_process_instance_segmentation(_outputs(), threshold=-1, target_sizes=sizes)
        assert result["masks"].shape[-2:] == (20, 30)


@pytest.mark.parametrize("labels, where", [([[1, 2]], r"\[0\]\[1\]"), ([[-1]], r"\[0\]\[0\]")])
def test_processor_box_labels(processor, labels, where):
    boxes = [[[1, 2, 10, 12], [3, 4, 20, 20]][:len(labels[0])]]
    with pytest.raises(ValueError, match=rf"input_boxes_labels{where}: labels must be 1 \(positive\)"):
        processor(text="cat", input_boxes=boxes, input_boxes_labels=labels, original_sizes=[(40, 40)])


@pytest.mark.parametrize("sizes", [[(0, 40)], [(40, -1)]])
def test_processor_original_sizes(processor, sizes):
    with pytest.raises(ValueError, match=r"original_sizes\[0\]: height and width must be positive"):
        processor(text="cat", input_boxes=[[[1, 2, 10, 12]]], original_sizes=sizes)


@pytest.mark.parametrize("size", [0, (56, -1), {"height": 0, "width": 56}])
def test_processor_size(size):
    with pytest.raises(ValueError, match="size: height and width must be positive"):
        sam3lt.Sam3LiteTextProcessor(size=size)
