"""sam3lt as a drop-in for code written against transformers' Sam3LiteTextModel / Sam3Processor (issue 10, 3):
HF's from_pretrained argument names, save_pretrained folders that transformers loads (and back), the tokenizer
arguments of HF's processor, and HF's field names on get_text_features / get_vision_features.

Exactness: the weights sam3lt saves are HF's bitwise (compared tensor by tensor, and byte for byte with the file
transformers writes). Outputs of the same code from byte-identical files are compared with torch.equal. The
same weights loaded from a different file (sharded, or another model's save) may differ in the last bits: CPU
GEMM kernels take different paths by the weights' memory alignment, which follows the tensor's offset in the
file (~1e-9 seen on presence_logits), so those are held to RTOL_SAME = 1e-5 relative. sam3lt against
transformers (different kernels) is held to the parity bound of tests/test_parity.py (RTOL_FP32).
"""
from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import sam3lt
from hf_utils import OUTPUTS, RTOL_FP32, assert_outputs_close, make_pair, random_inputs, randomize

from transformers import AutoProcessor, Sam3LiteTextModel as HFModel, Sam3Processor  # noqa: E402  (after hf_utils' skip)

pytestmark = pytest.mark.usefixtures("no_grad")

CONFIG = sam3lt.Sam3LiteTextConfig.tiny("s0")  # RepMixer text encoder: exercises BatchNorm folding
RTOL_SAME = 1e-5  # same weights and code, weights at another memory alignment (see the module docstring)


def _run(model, inputs):
    pixels, ids, mask = inputs
    return model(pixel_values=pixels, input_ids=ids, attention_mask=mask)


def _assert_equal_outputs(ref, out):
    unequal = [name for name in OUTPUTS if not torch.equal(getattr(ref, name), getattr(out, name))]
    assert not unequal, f"outputs differ: {unequal}"


def _hf_load(folder, **kwargs):
    model, info = HFModel.from_pretrained(folder, output_loading_info=True, **kwargs)
    assert not any(info.values()), f"transformers reported loading problems: {info}"
    return model.eval()


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A checkpoint saved by transformers (random non-trivial weights: BatchNorm statistics, layer scales)."""
    hf, _ = make_pair(CONFIG, seed=31)
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def inputs():
    return random_inputs(CONFIG, batch=2, seed=31)


# -------------------------------------------------------------------------------------- from_pretrained names
def test_hf_dtype_and_device_names(hf_folder):
    ref = sam3lt.from_pretrained(hf_folder, dtype=torch.bfloat16, device="cpu")
    for kwargs in (dict(torch_dtype=torch.bfloat16, device_map="cpu"), dict(torch_dtype="bfloat16", device_map="auto"),
                   dict(dtype="torch.bfloat16", device_map={"": "cpu"}),
                   dict(dtype=torch.bfloat16, torch_dtype=torch.bfloat16, device="cpu", device_map=torch.device("cpu"))):
        model = sam3lt.Sam3LiteTextModel.from_pretrained(hf_folder, **kwargs)
        assert model.dtype == torch.bfloat16 and model.device.type == "cpu", kwargs
        state, ref_state = model.state_dict(), ref.state_dict()
        assert all(torch.equal(state[k], ref_state[k]) for k in ref_state), kwargs
    # "auto" as HF: config.json's dtype (float32 here)
    assert sam3lt.from_pretrained(hf_folder, dtype="auto").dtype == torch.float32


def test_device_map_auto_picks_cuda_when_available(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert sam3lt.loading.hf_loading_arguments(None, None, {"device_map": "auto"})[1] == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert sam3lt.loading.hf_loading_arguments(None, None, {"device_map": "auto"})[1] == torch.device("cpu")
    assert sam3lt.loading.hf_loading_arguments(None, None, {"device_map": 1})[1] == torch.device("cuda:1")


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(dtype=torch.float16, torch_dtype=torch.bfloat16), ValueError, "dtype / torch_dtype: got both"),
    (dict(device="cpu", device_map="cuda"), ValueError, "device / device_map: got both"),
    (dict(device_map={"vision_encoder": 0, "text_encoder": "cpu"}), ValueError, "device_map: sam3lt puts the whole"),
    (dict(device_map="balanced"), ValueError, "device_map: .*expected 'auto'"),
    (dict(device_map="meta"), ValueError, "device_map"),
    (dict(torch_dtype=torch.int8), ValueError, "torch_dtype: expected a floating-point"),
    (dict(dtype="float33"), ValueError, "dtype: expected a floating-point"),
    (dict(use_safetensors=False), ValueError, "use_safetensors"),
    (dict(output_loading_info=True), TypeError, r"unexpected argument\(s\) \['output_loading_info'\]"),
    (dict(quantization_config={"load_in_8bit": True}), TypeError, "quantization_config"),
])
def test_bad_loading_arguments_are_refused(hf_folder, kwargs, error, match):
    with pytest.raises(error, match=match):
        sam3lt.from_pretrained(hf_folder, **kwargs)


def test_harmless_hf_arguments(hf_folder):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # satisfied as they are: no warning
        sam3lt.from_pretrained(hf_folder, low_cpu_mem_usage=True, trust_remote_code=True, use_safetensors=True,
                               local_files_only=True)
    with pytest.warns(UserWarning, match="ignored attn_implementation") as record:
        sam3lt.from_pretrained(hf_folder, attn_implementation="sdpa")
    assert len([w for w in record if "from_pretrained" in str(w.message)]) == 1


# -------------------------------------------------------------------------------------------- save_pretrained
def test_hf_save_sam3lt_round_trip_is_bitwise(hf_folder, inputs, tmp_path):
    """HF save -> sam3lt load (folded) -> sam3lt save -> HF load, and back into sam3lt."""
    ours = sam3lt.from_pretrained(hf_folder)
    assert all(block.folded for block in ours.text_encoder.layers if hasattr(block, "folded"))
    ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    ref_state, state = load_file(str(hf_folder / "model.safetensors")), load_file(str(tmp_path / "model.safetensors"))
    assert state.keys() == ref_state.keys()
    assert all(state[k].dtype == ref_state[k].dtype and torch.equal(state[k], ref_state[k]) for k in ref_state)
    assert (tmp_path / "model.safetensors").read_bytes() == (hf_folder / "model.safetensors").read_bytes()
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "sam3_lite_text" and config["architectures"] == ["Sam3LiteTextModel"]
    assert config["dtype"] == "float32"
    assert sam3lt.Sam3LiteTextConfig.from_dict(config) == CONFIG

    hf_ref = _run(_hf_load(hf_folder), inputs)
    hf_out = _run(_hf_load(tmp_path), inputs)
    _assert_equal_outputs(hf_ref, hf_out)
    mine = _run(ours, inputs)
    _assert_equal_outputs(mine, _run(sam3lt.from_pretrained(tmp_path), inputs))
    assert_outputs_close(hf_out, mine, RTOL_FP32)


def test_sam3lt_model_saves_for_transformers(inputs, tmp_path):
    """A model built in sam3lt (not from HF), folded and with fused projections (sam3lt.optimize's form)."""
    torch.manual_seed(5)
    model = randomize(sam3lt.Sam3LiteTextModel(CONFIG), seed=5).eval()
    unfolded = _run(model, inputs)
    model.fold_batchnorm().fuse_projections()
    ref = _run(model, inputs)
    assert_outputs_close(unfolded, ref, 1e-5)
    model.save_pretrained(tmp_path)
    assert_outputs_close(_run(_hf_load(tmp_path), inputs), ref, RTOL_FP32)
    assert_outputs_close(ref, _run(sam3lt.from_pretrained(tmp_path).fuse_projections(), inputs), RTOL_SAME)
    # unfolded models save their own parameters: the same file
    again = sam3lt.from_pretrained(tmp_path, fold_batchnorm=False)
    again.save_pretrained(tmp_path / "unfolded")
    first, second = load_file(str(tmp_path / "model.safetensors")), load_file(str(tmp_path / "unfolded/model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_sharded_save_and_stale_files(hf_folder, inputs, tmp_path):
    ours = sam3lt.from_pretrained(hf_folder)
    ours.save_pretrained(tmp_path, max_shard_size="2MB")
    shards = sorted(tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    assert_outputs_close(_run(_hf_load(hf_folder), inputs), _run(_hf_load(tmp_path), inputs), RTOL_SAME)
    ours.save_pretrained(tmp_path)  # unsharded over it: the old shards and index go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_bf16_save_is_hf_bf16(hf_folder, tmp_path):
    sam3lt.from_pretrained(hf_folder, torch_dtype=torch.bfloat16).save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    hf_bf16 = HFModel.from_pretrained(hf_folder, dtype=torch.bfloat16).state_dict()
    loaded = _hf_load(tmp_path)  # dtype "auto" (HF's default): the config's bfloat16
    assert loaded.dtype == torch.bfloat16
    state = loaded.state_dict()
    assert all(torch.equal(state[k], hf_bf16[k]) for k in hf_bf16)
    assert sam3lt.from_pretrained(tmp_path, dtype="auto").dtype == torch.bfloat16


def test_changed_folded_weights_are_not_saved_stale(hf_folder, tmp_path):
    ours = sam3lt.from_pretrained(hf_folder)
    ours.text_encoder.layers[0].mixer_weight.mul_(2)
    with pytest.raises(ValueError, match="fold_batchnorm=False"):
        ours.save_pretrained(tmp_path)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(push_to_hub=True), ValueError, "push_to_hub"),
    (dict(safe_serialization=False), ValueError, "safe_serialization"),
    (dict(variant="fp16"), TypeError, "variant"),
])
def test_bad_save_arguments_are_refused(hf_folder, tmp_path, kwargs, error, match):
    with pytest.raises(error, match=match):
        sam3lt.from_pretrained(hf_folder).save_pretrained(tmp_path, **kwargs)


def test_save_on_non_main_process_writes_nothing(hf_folder, tmp_path):
    sam3lt.from_pretrained(hf_folder).save_pretrained(tmp_path / "x", is_main_process=False)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------- processor
IMAGE = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
PROMPTS = ["a cat", "a photo of a dog on a red sofa", "ear"]


@pytest.fixture(scope="module")
def processor_folder(tmp_path_factory):
    """sam3lt's processor saved for transformers (bundled CLIP vocabulary, the tiny model's image size)."""
    folder = tmp_path_factory.mktemp("processor")
    sam3lt.Sam3LiteTextProcessor(size=CONFIG.image_size).save_pretrained(folder)
    return folder


def _assert_same_inputs(ref, out, keys=("pixel_values", "original_sizes", "input_ids", "attention_mask")):
    for key in keys:
        assert torch.equal(torch.as_tensor(out[key]), torch.as_tensor(ref[key])), key


def test_processor_save_loads_in_auto_processor(processor_folder, tmp_path):
    hf = AutoProcessor.from_pretrained(processor_folder)
    assert isinstance(hf, Sam3Processor)
    ours = sam3lt.Sam3LiteTextProcessor.from_pretrained(processor_folder)
    _assert_same_inputs(hf(images=IMAGE, text=PROMPTS, return_tensors="pt"), ours(images=IMAGE, text=PROMPTS))
    # HF save -> sam3lt load -> sam3lt save -> HF load: same processor, HF's own settings kept
    hf.image_processor.mask_size = {"height": 72, "width": 72}
    hf.save_pretrained(tmp_path / "hf")
    sam3lt.Sam3LiteTextProcessor.from_pretrained(tmp_path / "hf").save_pretrained(tmp_path / "ours")
    back = AutoProcessor.from_pretrained(tmp_path / "ours")
    assert back.image_processor.mask_size == {"height": 72, "width": 72}
    assert back.tokenizer.model_max_length == hf.tokenizer.model_max_length
    assert back.tokenizer.get_vocab() == hf.tokenizer.get_vocab()
    _assert_same_inputs(hf(images=IMAGE, text=PROMPTS, return_tensors="pt"),
                        back(images=IMAGE, text=PROMPTS, return_tensors="pt"))


# Sam3Processor calls its tokenizer with padding="max_length", max_length=32; the users' arguments replace those
# (HF's own processor drops them for text alone and raises with images, so its tokenizer is the reference).
TOKENIZER_CASES = [
    dict(padding=True), dict(padding="longest"), dict(padding="max_length", max_length=40),
    dict(max_length=12), dict(truncation=True, max_length=5), dict(truncation="longest_first", max_length=4),
    dict(truncation=True, padding=True, max_length=6), dict(truncation=True),
]


@pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")  # HF's tokenizer, padding=True
@pytest.mark.parametrize("kwargs", TOKENIZER_CASES, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_tokenizer_arguments_match_hf(processor_folder, kwargs):
    hf = AutoProcessor.from_pretrained(processor_folder)
    ours = sam3lt.Sam3LiteTextProcessor.from_pretrained(processor_folder)
    prompts = [*PROMPTS, "a cat " * 20]  # 42 tokens: longer than 32
    if not kwargs.get("truncation") and kwargs.get("padding") in (None, "max_length"):
        prompts = PROMPTS  # HF cannot make one tensor of rows longer and shorter than max_length
    ref = hf.tokenizer(prompts, return_tensors="pt", **{"padding": "max_length", "max_length": 32, **kwargs})
    _assert_same_inputs(ref, ours(text=prompts, **kwargs), ("input_ids", "attention_mask"))
    # with images too (where HF's processor raises TypeError)
    _assert_same_inputs(ref, ours(images=IMAGE, text=prompts, **kwargs), ("input_ids", "attention_mask"))


def test_no_padding_and_numpy_tensors_match_hf(processor_folder):
    hf = AutoProcessor.from_pretrained(processor_folder)
    ours = sam3lt.Sam3LiteTextProcessor.from_pretrained(processor_folder)
    ref = hf.tokenizer(["a cat", "the dog"], padding=False, return_tensors="pt")
    _assert_same_inputs(ref, ours(text=["a cat", "the dog"], padding=False), ("input_ids", "attention_mask"))
    ref, out = hf(images=IMAGE, text=PROMPTS, return_tensors="np"), ours(images=IMAGE, text=PROMPTS, return_tensors="np")
    for key in ("pixel_values", "original_sizes", "input_ids", "attention_mask"):
        assert isinstance(out[key], np.ndarray) and out[key].dtype == ref[key].dtype, key
        assert np.array_equal(out[key], ref[key]), key


@pytest.mark.parametrize("kwargs, match", [
    (dict(text=["a cat", "a photo of a dog"], padding=False), "padding: with padding=False"),
    (dict(text="a cat", padding="bogus"), "padding: expected"),
    (dict(text="a cat", truncation="only_second"), "truncation: expected"),
    (dict(text="a cat", truncation=True, max_length=1), "max_length: truncation keeps"),
    (dict(text="a cat", max_length=0), "max_length: expected a positive integer"),
])
def test_bad_tokenizer_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sam3lt.Sam3LiteTextProcessor()(**kwargs)


# ---------------------------------------------------------------------------------- feature outputs' names
def _hf_fields(output) -> list[str]:
    return [f.name for f in dataclasses.fields(output)]


def test_feature_outputs_have_hf_fields():
    hf, ours = make_pair(CONFIG, seed=32)
    pixels, ids, mask = random_inputs(CONFIG, batch=2, seed=32)
    for hidden in (False, True):
        for name, args in (("get_text_features", dict(input_ids=ids, attention_mask=mask)),
                           ("get_vision_features", dict(pixel_values=pixels))):
            ref = getattr(hf, name)(**args, output_hidden_states=hidden)
            out = getattr(ours, name)(**args, output_hidden_states=hidden)
            assert all(hasattr(out, field) for field in _hf_fields(ref)), (name, _hf_fields(ref))
            assert list(out.keys()) == list(ref.keys()), name  # the fields that are set, in HF's order
            for key in ref.keys():
                assert key in out and type(out[key]) is type(ref[key]), (name, key)
            assert torch.equal(out[0], out[list(ref.keys())[0]]) and len(out.to_tuple()) == len(ref.to_tuple())
            as_tuple = getattr(ours, name)(**args, output_hidden_states=hidden, return_dict=False)
            assert isinstance(as_tuple, tuple) and len(as_tuple) == len(ref.to_tuple())
            close = ("last_hidden_state", "pooler_output", "fpn_hidden_states")
            for key in (k for k in close if k in ref):
                pairs = zip(ref[key], out[key]) if isinstance(ref[key], tuple) else [(ref[key], out[key])]
                for a, b in pairs:
                    assert (a - b).abs().max() <= RTOL_FP32 * a.abs().max(), (name, key)
    ref, out = (m(pixel_values=pixels, input_ids=ids, attention_mask=mask, return_dict=False) for m in (hf, ours))
    assert isinstance(out, tuple) and len(out) == len(ref)
    assert all(torch.equal(a, b) for a, b in zip(out, _run(ours, (pixels, ids, mask)).to_tuple()))
    with pytest.raises(ValueError, match="output_attentions"):
        ours.get_text_features(ids, output_attentions=True)
    with pytest.raises(ValueError, match="output_attentions"):
        ours(pixel_values=pixels, input_ids=ids, output_attentions=True)
    with pytest.raises(TypeError, match="unexpected argument"):
        ours.get_vision_features(pixels, interpolate_pos_encoding=True)


def _user_code(model_cls, processor_cls, folder):
    """Code written against transformers (HF's own examples), run with the classes given."""
    model = model_cls.from_pretrained(folder, torch_dtype=torch.float32).eval()  # HF's device_map needs accelerate
    processor = processor_cls.from_pretrained(folder)
    inputs = processor(images=IMAGE, text="a cat", return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
        text_embeds = model.get_text_features(**processor(text="a cat", return_tensors="pt"))
        vision_embeds = model.get_vision_features(pixel_values=inputs.pixel_values)
        reused = model(vision_embeds=vision_embeds, text_embeds=text_embeds, attention_mask=inputs.attention_mask)
    results = processor.post_process_instance_segmentation(outputs, threshold=0.0, mask_threshold=0.5,
                                                           target_sizes=inputs.get("original_sizes").tolist())
    return outputs, reused, text_embeds.pooler_output, vision_embeds.fpn_hidden_states, results[0]


def test_transformers_user_code_runs_with_sam3lt(hf_folder, processor_folder, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((hf_folder / name).read_bytes())
    for path in processor_folder.iterdir():
        (tmp_path / path.name).write_bytes(path.read_bytes())
    ref = _user_code(HFModel, AutoProcessor, tmp_path)
    out = _user_code(sam3lt.Sam3LiteTextModel, sam3lt.Sam3LiteTextProcessor, tmp_path)
    assert_outputs_close(ref[0], out[0], RTOL_FP32)
    assert_outputs_close(ref[1], out[1], RTOL_FP32)
    _assert_equal_outputs(out[0], out[1])  # features reused: the same computation
    assert (ref[2] - out[2]).abs().max() <= RTOL_FP32 * ref[2].abs().max()
    assert len(ref[3]) == len(out[3])
    ref_result, result = ref[4], out[4]
    assert torch.allclose(ref_result["scores"], result["scores"], atol=1e-5)
    # masks differ on purpose in dtype (bool, HF long); a pixel at the threshold may flip
    assert result["masks"].dtype == torch.bool and result["masks"].shape == ref_result["masks"].shape
    assert (result["masks"] == ref_result["masks"].bool()).float().mean() > 0.999
