"""sam3lt.Sam3LiteTextProcessor against HF transformers' Sam3Processor (Sam3ImageProcessor + CLIPTokenizer).

The tokenizer files are the real CLIP vocabulary: vocab.json + merges.txt are built here, with the standard
CLIP construction, from the BPE merges file bundled in sam3lt/assets (the one open_clip ships); HF's
CLIPTokenizer reads them, HF's Sam3Processor saves a checkpoint folder, and ours loads that folder.

Tolerances: pixel_values are expected bit-identical (asserted to 1e-6 absolute: the same torchvision resize in
the input dtype and the same fused float32 normalisation); ids, masks, boxes and scores exactly equal.
"""
from __future__ import annotations

import gzip
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from sam3lt.processor import BUNDLED_BPE, ProcessorOutput, Sam3LiteTextProcessor

transformers = pytest.importorskip("transformers", reason="the HF reference tests need transformers (test extra)")
skdata = pytest.importorskip("skimage.data", reason="sample photographs come from scikit-image (test extra)")
from transformers import CLIPTokenizer, Sam3ImageProcessor, Sam3Processor  # noqa: E402

PIXEL_ATOL = 1e-6
PROMPTS = ["cat", "A photo of a CAT!!", "  two   dogs\n and 3 birds ", "naïve café, 日本語 ☕", "<|endoftext|> x",
           "", "it's the dog's toy, isn't it?", "person wearing a red-and-white helmet (left)"]


# ------------------------------------------------------------------------------------------------------ fixtures
def _clip_vocab_files(folder):
    """vocab.json + merges.txt from the 16e6 BPE file, the standard CLIP construction (OpenAI CLIP / open_clip),
    written independently of sam3lt.processor's own builder."""
    lines = gzip.open(BUNDLED_BPE, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    # GPT-2's byte -> unicode table, in its insertion order: printable bytes as themselves, then the others
    # mapped to 256, 257, ...
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    byte_chars = [chr(b) for b in printable] + [chr(256 + n) for n in range(256 - len(printable))]
    vocab = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == len(set(vocab)) == 49408
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An HF-saved processor folder (processor_config.json, tokenizer.json, tokenizer_config.json)."""
    root = tmp_path_factory.mktemp("clip")
    _clip_vocab_files(root)
    hf = Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=CLIPTokenizer.from_pretrained(root))
    hf.save_pretrained(root / "ckpt")
    return root


@pytest.fixture(scope="module")
def hf(checkpoint):
    return Sam3Processor.from_pretrained(checkpoint / "ckpt")


@pytest.fixture(scope="module")
def ours(checkpoint):
    return Sam3LiteTextProcessor.from_pretrained(checkpoint / "ckpt")


def _photos():
    return {"astronaut": skdata.astronaut(), "chelsea": skdata.chelsea(), "coffee": skdata.coffee(),
            "camera": skdata.camera()}  # 512², 300×451, 400×600, 512² grayscale


PHOTOS = _photos()
_ALPHA = (np.arange(512)[None, :, None].repeat(512, 0) // 2).astype(np.uint8)
IMAGE_CASES = {
    "pil": lambda: Image.fromarray(PHOTOS["astronaut"]),
    "pil_grayscale": lambda: Image.fromarray(PHOTOS["camera"]),
    "pil_rgba": lambda: Image.fromarray(np.concatenate([PHOTOS["astronaut"], _ALPHA], -1)),
    "numpy_hwc": lambda: PHOTOS["chelsea"],
    "numpy_hw1_grayscale": lambda: PHOTOS["camera"][..., None],
    "numpy_1hw_grayscale": lambda: PHOTOS["camera"][None],
    "numpy_rgba": lambda: np.concatenate([PHOTOS["astronaut"], _ALPHA], -1),
    "numpy_float": lambda: PHOTOS["coffee"].astype(np.float32),
    "torch_chw": lambda: torch.from_numpy(PHOTOS["coffee"]).permute(2, 0, 1),
    "torch_hwc": lambda: torch.from_numpy(PHOTOS["chelsea"]),
    "batch_4d": lambda: np.stack([PHOTOS["astronaut"], PHOTOS["astronaut"][::-1]]),
    "list_mixed_sizes": lambda: [PHOTOS["astronaut"], Image.fromarray(PHOTOS["chelsea"]),
                                 torch.from_numpy(PHOTOS["coffee"]).permute(2, 0, 1)],
    "nested_list": lambda: [[PHOTOS["chelsea"]], [PHOTOS["coffee"], PHOTOS["astronaut"]]],
}


_HF_VERSION = tuple(int(p) for p in transformers.__version__.split(".")[:2])


# ------------------------------------------------------------------------------------------------------ images
@pytest.mark.parametrize("case", sorted(IMAGE_CASES))
def test_pixel_values_match_hf(hf, ours, case):
    if case.endswith("_rgba") and _HF_VERSION < (5, 23):
        # transformers 5.17 (the GPU image's) drops or rejects the alpha channel; 5.23 composites it on white,
        # which is what sam3lt does (checked against 5.23 in CI)
        pytest.skip(f"RGBA conversion differs in transformers {transformers.__version__} (sam3lt follows 5.23)")
    images = IMAGE_CASES[case]()
    ref = hf(images=images, return_tensors="pt")
    out = ours(images=images)
    assert out["pixel_values"].dtype == torch.float32
    assert out["pixel_values"].shape == ref["pixel_values"].shape
    assert (out["pixel_values"] - ref["pixel_values"]).abs().max().item() <= PIXEL_ATOL
    assert torch.equal(out["original_sizes"], ref["original_sizes"])


def test_custom_size_matches_hf(checkpoint, ours):
    hf_small = Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": 280, "width": 280}),
                             tokenizer=CLIPTokenizer.from_pretrained(checkpoint))
    small = Sam3LiteTextProcessor.from_pretrained(checkpoint / "ckpt", size=280)
    images = [PHOTOS["chelsea"], PHOTOS["coffee"]]
    ref, out = hf_small(images=images, return_tensors="pt"), small(images=images)
    assert out["pixel_values"].shape == (2, 3, 280, 280)
    assert (out["pixel_values"] - ref["pixel_values"]).abs().max().item() <= PIXEL_ATOL


def test_image_path_is_decoded_like_hf(hf, ours, tmp_path):
    path = tmp_path / "chelsea.png"
    Image.fromarray(PHOTOS["chelsea"]).save(path)
    ref, out = hf(images=str(path), return_tensors="pt"), ours(images=path)
    assert (out["pixel_values"] - ref["pixel_values"]).abs().max().item() <= PIXEL_ATOL


def test_plain_2d_grayscale_array_is_accepted(ours):
    # HF raises on a bare (H, W) array; we treat it as grayscale, the same as (H, W, 1).
    out = ours(images=PHOTOS["camera"])
    assert torch.equal(out["pixel_values"], ours(images=PHOTOS["camera"][..., None])["pixel_values"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_tensor_is_processed_on_cuda(hf, ours):
    image = torch.from_numpy(PHOTOS["coffee"]).permute(2, 0, 1).cuda()
    out = ours(images=image, text="cup")
    assert out["pixel_values"].is_cuda and out["input_ids"].is_cuda
    ref = hf(images=image, return_tensors="pt", device="cuda")
    assert (out["pixel_values"] - ref["pixel_values"].cuda()).abs().max().item() <= PIXEL_ATOL


# -------------------------------------------------------------------------------------------------------- text
def test_real_clip_vocabulary(ours):
    ids, mask = ours.tokenizer("a photo of a cat")  # the well-known CLIP ids
    assert ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids.shape == (1, 32) and mask[0].tolist() == [1] * 7 + [0] * 25


@pytest.mark.parametrize("prompt", PROMPTS)
def test_single_prompt_matches_hf(hf, ours, prompt):
    ref, out = hf(text=prompt, return_tensors="pt"), ours(text=prompt)
    assert out["input_ids"].dtype == out["attention_mask"].dtype == torch.long
    assert torch.equal(out["input_ids"], ref["input_ids"])
    assert torch.equal(out["attention_mask"], ref["attention_mask"])


def test_prompt_batch_and_long_prompt_match_hf(hf, ours):
    ref, out = hf(text=PROMPTS, return_tensors="pt"), ours(text=PROMPTS)
    assert torch.equal(out["input_ids"], ref["input_ids"]) and torch.equal(out["attention_mask"], ref["attention_mask"])
    long = "a cat " * 20  # 42 tokens: HF pads to 32 but does not truncate
    ref, out = hf(text=long, return_tensors="pt"), ours(text=long)
    assert out["input_ids"].shape == (1, 42) and torch.equal(out["input_ids"], ref["input_ids"])
    # A batch mixing long and short prompts: HF raises, we pad to the longest.
    ids, mask = ours.tokenizer([long, "cat"])
    assert ids.shape == (2, 42) and mask[1].sum() == 3 and torch.equal(ids[0], out["input_ids"][0])


def test_bundled_default_processor_matches_hf(hf):
    default = Sam3LiteTextProcessor()  # no checkpoint: bundled CLIP vocabulary, HF's image defaults
    image = PHOTOS["coffee"]
    ref, out = hf(images=image, text=PROMPTS, return_tensors="pt"), default(images=image, text=PROMPTS)
    for key in ("pixel_values", "original_sizes", "input_ids", "attention_mask"):
        assert torch.equal(out[key], ref[key]), key


def test_legacy_checkpoint_files(checkpoint, hf):
    """vocab.json + merges.txt + special_tokens_map.json + preprocessor_config.json (older transformers)."""
    legacy = checkpoint / "legacy"
    legacy.mkdir()
    for name in ("vocab.json", "merges.txt"):
        (legacy / name).write_bytes((checkpoint / name).read_bytes())
    (legacy / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": {"content": "<|startoftext|>"}, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
         "unk_token": "<|endoftext|>"}))
    (legacy / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Sam3ImageProcessor", "size": {"height": 1008, "width": 1008}, "resample": 2,
         "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "rescale_factor": 1 / 255}))
    out = Sam3LiteTextProcessor.from_pretrained(legacy)(images=PHOTOS["chelsea"], text=PROMPTS)
    ref = hf(images=PHOTOS["chelsea"], text=PROMPTS, return_tensors="pt")
    for key in ("pixel_values", "input_ids", "attention_mask"):
        assert torch.equal(out[key], ref[key]), key


def test_save_pretrained_is_readable_by_hf(ours, tmp_path):
    ours.save_pretrained(tmp_path)
    ref = Sam3Processor.from_pretrained(tmp_path)(images=PHOTOS["coffee"], text=PROMPTS, return_tensors="pt")
    out = Sam3LiteTextProcessor.from_pretrained(tmp_path)(images=PHOTOS["coffee"], text=PROMPTS)
    for key in ("pixel_values", "input_ids", "attention_mask"):
        assert torch.equal(out[key], ref[key]), key


def test_hub_ids_go_through_snapshot_download(checkpoint, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(checkpoint / "ckpt")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    processor = Sam3LiteTextProcessor.from_pretrained("someone/sam3-litetext", revision="main")
    assert calls[0][0] == "someone/sam3-litetext" and calls[0][1]["revision"] == "main"
    assert "tokenizer.json" in calls[0][1]["allow_patterns"]
    assert processor.tokenizer("cat")[0][0, 1] == 2368


def test_unreachable_hub_id_names_the_argument():
    with pytest.raises(OSError, match="path_or_hub_id"):
        Sam3LiteTextProcessor.from_pretrained("no-such-user/no-such-repo-sam3lt", local_files_only=True)


# ------------------------------------------------------------------------------------------- images + prompts
def test_one_image_many_prompts(hf, ours):
    ref = hf(images=PHOTOS["astronaut"], text=PROMPTS[:3], return_tensors="pt")
    out = ours(images=PHOTOS["astronaut"], text=PROMPTS[:3])
    assert out["pixel_values"].shape[0] == 1 and out["input_ids"].shape == (3, 32)
    for key in ("pixel_values", "original_sizes", "input_ids", "attention_mask"):
        assert torch.equal(out[key], ref[key]), key


def test_one_prompt_many_images_is_repeated(ours):
    out = ours(images=[PHOTOS["chelsea"], PHOTOS["coffee"]], text="cat")
    assert out["input_ids"].shape == (2, 32) and torch.equal(out["input_ids"][0], out["input_ids"][1])


BOX_CASES = {
    "boxes_no_text": dict(images="astronaut", input_boxes=[[[10, 20, 110, 220], [0, 0, 512, 512]]]),
    "padded_rows": dict(images=["astronaut", "chelsea"], text=["x", "y"],
                        input_boxes=[[[10, 20, 110, 220], [0, 0, 512, 512]], [[1, 2, 3, 4]]]),
    "labels_and_visual": dict(images=["astronaut", "chelsea"], text=["x", None],
                              input_boxes=[[[10, 20, 110, 220]], [[1, 2, 3, 4]]], input_boxes_labels=[[0], [1]]),
    "none_row": dict(images=["astronaut", "chelsea"], text=["x", "y"], input_boxes=[None, [[1, 2, 3, 4]]]),
    "tensor_boxes": dict(images="coffee", text="x", input_boxes=torch.tensor([[[1, 2, 3, 4.], [5, 6, 70, 80]]])),
    "numpy_boxes": dict(images="coffee", text="x", input_boxes=np.array([[[100, 200, 300, 400]]]),
                        input_boxes_labels=np.array([[0]])),
}


@pytest.mark.parametrize("case", sorted(BOX_CASES))
def test_boxes_match_hf(hf, ours, case):
    kwargs = dict(BOX_CASES[case])
    names = kwargs["images"]
    kwargs["images"] = [PHOTOS[n] for n in names] if isinstance(names, list) else PHOTOS[names]
    ref, out = hf(return_tensors="pt", **kwargs), ours(**kwargs)
    assert set(out) == set(ref)
    for key in ref:
        assert out[key].dtype == ref[key].dtype and torch.equal(out[key], ref[key]), key


def test_boxes_for_many_prompts_on_one_image_use_its_size(ours):
    # HF normalises only the first row here (a bug); every row belongs to the one image.
    out = ours(images=PHOTOS["coffee"], text=["x", "y"], input_boxes=[[[0, 0, 600, 400]], [[300, 200, 600, 400]]])
    assert torch.allclose(out["input_boxes"], torch.tensor([[[0.5, 0.5, 1.0, 1.0]], [[0.75, 0.75, 0.5, 0.5]]]))


def test_boxes_with_original_sizes_only(ours):
    out = ours(text="x", input_boxes=[[[0, 0, 600, 400]]], original_sizes=[[400, 600]])
    assert "pixel_values" not in out
    assert torch.equal(out["input_boxes"], torch.tensor([[[0.5, 0.5, 1.0, 1.0]]]))


def test_output_container(ours):
    out = ours(images=PHOTOS["chelsea"], text="cat")
    assert isinstance(out, ProcessorOutput) and out.pixel_values is out["pixel_values"]
    half = out.to("cpu", torch.float16)
    assert half.pixel_values.dtype == torch.float16 and half.input_ids.dtype == torch.long


# ------------------------------------------------------------------------------------------------ bad inputs
BAD_INPUTS = [
    (dict(), ValueError, "images, text, input_boxes"),
    (dict(text=[]), ValueError, "text"),
    (dict(text=["cat", 3]), TypeError, r"text\[1\]"),
    (dict(text=7), TypeError, "text"),
    (dict(text=["cat", None]), ValueError, r"text\[1\]"),
    (dict(images=[]), ValueError, "images"),
    (dict(images="astronaut", text=["a", "b"], images_twice=True), ValueError, "text"),
    (dict(images=np.zeros((5, 7, 9), np.uint8)), ValueError, "images"),
    (dict(images={"not": "an image"}), TypeError, "images"),
    (dict(text="x", input_boxes=[[[1, 2, 3, 4]]]), ValueError, "input_boxes"),  # pixels need a size
    (dict(images="astronaut", input_boxes=[[[1, 2, 3]]]), ValueError, r"input_boxes\[0\]\[0\]"),
    (dict(images="astronaut", input_boxes=torch.zeros(1, 2, 5)), ValueError, "input_boxes"),
    (dict(images="astronaut", input_boxes=[[1, 2, 3, 4]]), ValueError, "input_boxes"),
    (dict(images="astronaut", input_boxes=[[[1, 2, 3, 4]]], input_boxes_labels=[[1, 0]]), ValueError,
     r"input_boxes_labels\[0\]"),
    (dict(images="astronaut", input_boxes=[[[1, 2, 3, 4]]], input_boxes_labels=torch.ones(1, 1, 1)), ValueError,
     "input_boxes_labels"),
    (dict(images="astronaut", input_boxes_labels=[[1]]), ValueError, "input_boxes_labels"),
    (dict(images="astronaut", text=["a", "b"], input_boxes=[[[1, 2, 3, 4]]]), ValueError, "text"),
    (dict(images="astronaut", text="x", return_tensors="tf"), ValueError, "return_tensors"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_INPUTS)
def test_bad_inputs_name_the_argument(ours, kwargs, error, match):
    kwargs = dict(kwargs)
    if kwargs.pop("images_twice", False):  # 2 images for 2 prompts is fine; 3 images for 2 prompts is not
        kwargs["images"] = [PHOTOS["astronaut"]] * 3
    elif isinstance(kwargs.get("images"), str):
        kwargs["images"] = PHOTOS[kwargs["images"]]
    with pytest.raises(error, match=match):
        ours(**kwargs)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="size"):
        Sam3LiteTextProcessor(size={"shortest_edge": 10})
    with pytest.raises(ValueError, match="resample"):
        Sam3LiteTextProcessor(resample=42)


# ---------------------------------------------------------------------------------------------- post-process
def _fake_outputs(batch=2, queries=20, mask_size=72, seed=0, presence=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return SimpleNamespace(
        pred_logits=torch.randn(batch, queries, generator=g) * 3,
        pred_boxes=torch.rand(batch, queries, 4, generator=g).sort(-1).values[..., [0, 1, 2, 3]],
        pred_masks=torch.randn(batch, queries, mask_size, mask_size, generator=g) * 4,
        presence_logits=torch.randn(batch, 1, generator=g) + 2 if presence else None,
        semantic_seg=torch.randn(batch, 1, mask_size, mask_size, generator=g) * 4,
    )


TARGETS = [None, [(512, 512), (300, 451)]]


def _mismatch(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.long() != b.long()).float().mean().item() if a.numel() else 0.0


@pytest.mark.parametrize("target_sizes", TARGETS)
@pytest.mark.parametrize("presence", [True, False])
def test_instance_segmentation_matches_hf(hf, ours, target_sizes, presence):
    outputs = _fake_outputs(presence=presence)
    ref = hf.post_process_instance_segmentation(outputs, threshold=0.3, mask_threshold=0.5, target_sizes=target_sizes)
    out = ours.post_process_instance_segmentation(outputs, threshold=0.3, mask_threshold=0.5,
                                                  target_sizes=target_sizes)
    assert len(out) == len(ref)
    for r, o in zip(ref, out):
        assert set(o) == {"scores", "boxes", "masks"} and o["masks"].dtype == torch.bool
        assert len(r["scores"]) > 0
        assert torch.equal(o["scores"], r["scores"]) and torch.equal(o["boxes"], r["boxes"])
        assert _mismatch(o["masks"], r["masks"]) <= 1e-4


def test_instance_segmentation_tensor_target_sizes_and_our_output_class(hf, ours):
    from sam3lt import Sam3LiteTextOutput

    fake = _fake_outputs(seed=1)
    outputs = Sam3LiteTextOutput(**vars(fake))
    ref = hf.post_process_instance_segmentation(fake, target_sizes=[(400, 600), (512, 512)])
    out = ours.post_process_instance_segmentation(outputs, target_sizes=torch.tensor([[400, 600], [512, 512]]))
    for r, o in zip(ref, out):
        assert torch.equal(o["scores"], r["scores"]) and torch.equal(o["boxes"], r["boxes"])
        assert _mismatch(o["masks"], r["masks"]) <= 1e-4


def test_instance_segmentation_nothing_kept(ours):
    out = ours.post_process_instance_segmentation(_fake_outputs(), threshold=1.0, target_sizes=[(40, 50)] * 2)
    # HF would leave (0, 72, 72) at the model's mask size; we give the target size.
    assert out[0]["masks"].shape == (0, 40, 50) and out[0]["scores"].shape == (0,)


@pytest.mark.parametrize("target_sizes", TARGETS)
def test_object_detection_matches_hf(hf, ours, target_sizes):
    outputs = _fake_outputs(seed=2)
    ref = hf.post_process_object_detection(outputs, threshold=0.3, target_sizes=target_sizes)
    out = ours.post_process_object_detection(outputs, threshold=0.3, target_sizes=target_sizes)
    for r, o in zip(ref, out):
        assert set(o) == {"scores", "boxes"}
        assert torch.equal(o["scores"], r["scores"]) and torch.equal(o["boxes"], r["boxes"])


@pytest.mark.parametrize("target_sizes", TARGETS)
def test_semantic_segmentation_matches_hf(hf, ours, target_sizes):
    outputs = _fake_outputs(seed=3)
    ref = hf.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    out = ours.post_process_semantic_segmentation(outputs, target_sizes=target_sizes)
    for r, o in zip(ref, out):
        assert o.dtype == torch.bool and _mismatch(o, r) <= 1e-4
    ref = hf.post_process_semantic_segmentation(outputs, target_sizes, return_segmentation_scores=True)
    out = ours.post_process_semantic_segmentation(outputs, target_sizes, return_segmentation_scores=True)
    for r, o in zip(ref, out):
        assert _mismatch(o["segmentation"], r["segmentation"]) <= 1e-4
        assert torch.equal(o["segmentation_scores"], r["segmentation_scores"])


def test_post_processing_bad_inputs(ours):
    outputs = _fake_outputs()
    with pytest.raises(ValueError, match="target_sizes"):
        ours.post_process_instance_segmentation(outputs, target_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="target_sizes"):
        ours.post_process_object_detection(outputs, target_sizes=[(10, 10, 3)] * 2)
    with pytest.raises(ValueError, match="semantic_seg"):
        ours.post_process_semantic_segmentation(SimpleNamespace(semantic_seg=None))
    with pytest.raises(ValueError, match="pred_masks"):
        ours.post_process_instance_segmentation(SimpleNamespace(pred_logits=outputs.pred_logits))


# ---------------------------------------------------------------------------------------------- end to end
def test_pipeline_matches_hf_pipeline(checkpoint):
    """HF processor + HF model (tiny config, random weights) vs our processor + our model converted from it:
    same kept instances, scores and boxes to float tolerance, masks to ≤ 1e-4 mismatching pixels."""
    import sam3lt
    from transformers import Sam3LiteTextConfig as HFConfig, Sam3LiteTextModel as HFModel

    config = sam3lt.Sam3LiteTextConfig.tiny()
    torch.manual_seed(0)
    hf_model = HFModel(HFConfig(**{k: v for k, v in config.to_dict().items() if k != "architectures"})).eval()
    model = sam3lt.from_transformers(hf_model)
    hf_proc = Sam3Processor(image_processor=Sam3ImageProcessor(size={"height": 280, "width": 280}),
                            tokenizer=CLIPTokenizer.from_pretrained(checkpoint))
    proc = Sam3LiteTextProcessor.from_pretrained(checkpoint / "ckpt", size=config.image_size)
    image, prompts = PHOTOS["coffee"], ["cup", "a spoon", "saucer"]
    hf_in, ours_in = hf_proc(images=image, text=prompts, return_tensors="pt"), proc(images=image, text=prompts)
    with torch.no_grad():  # HF's model needs the image repeated per prompt; ours broadcasts one image
        hf_out = hf_model(pixel_values=hf_in["pixel_values"].expand(len(prompts), -1, -1, -1),
                          input_ids=hf_in["input_ids"], attention_mask=hf_in["attention_mask"])
        out = model(pixel_values=ours_in.pixel_values, input_ids=ours_in.input_ids,
                    attention_mask=ours_in.attention_mask)
    sizes = [image.shape[:2]] * len(prompts)
    threshold = 0.2  # random weights score about 0.25: every query is kept
    ref = hf_proc.post_process_instance_segmentation(hf_out, threshold, 0.5, sizes)
    res = proc.post_process_instance_segmentation(out, threshold, 0.5, sizes)
    for r, o in zip(ref, res):
        assert len(o["scores"]) == len(r["scores"]) > 0
        torch.testing.assert_close(o["scores"], r["scores"], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(o["boxes"], r["boxes"], atol=1e-3, rtol=1e-4)  # pixels
        assert _mismatch(o["masks"], r["masks"]) <= 1e-4
