"""Checkpoint loading: HF save_pretrained -> sam3lt from_pretrained (single file and sharded), and the
errors for missing / unexpected / mis-shaped keys, corrupt files and bad paths."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import sam3lt
from hf_utils import assert_outputs_close, make_pair, random_inputs

pytestmark = pytest.mark.usefixtures("no_grad")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = sam3lt.Sam3LiteTextConfig.tiny("s0")
    hf, _ = make_pair(config, seed=11)
    folder = tmp_path_factory.mktemp("ckpt")
    hf.save_pretrained(folder)
    inputs = random_inputs(config, batch=2, seed=11)
    pixels, ids, mask = inputs
    with torch.no_grad():  # module-scoped: the test-level no_grad fixture does not cover it
        return folder, hf, hf(pixel_values=pixels, input_ids=ids, attention_mask=mask), inputs


def _run(model, inputs):
    pixels, ids, mask = inputs
    return model(pixel_values=pixels, input_ids=ids, attention_mask=mask)


def test_round_trip(saved):
    folder, _, ref, inputs = saved
    assert (folder / "model.safetensors").exists()
    model = sam3lt.Sam3LiteTextModel.from_pretrained(folder)
    assert_outputs_close(ref, _run(model, inputs))
    unfolded = sam3lt.from_pretrained(folder, fold_batchnorm=False)
    assert_outputs_close(ref, _run(unfolded, inputs))


def test_round_trip_sharded(saved, tmp_path):
    _, hf, ref, inputs = saved
    hf.save_pretrained(tmp_path, max_shard_size="2MB")
    shards = list(tmp_path.glob("model-*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").exists() and len(shards) > 1
    assert_outputs_close(ref, _run(sam3lt.from_pretrained(tmp_path), inputs))


def test_dtype_and_device(saved):
    folder = saved[0]
    model = sam3lt.from_pretrained(folder, dtype=torch.bfloat16, device="cpu")
    assert model.dtype == torch.bfloat16 and model.device.type == "cpu"
    # RoPE tables stay fp32 as in HF, whatever the parameter dtype
    assert model.vision_encoder.backbone.rope_window_cos.dtype == torch.float32


def _copy_checkpoint(src, dst, edit):
    dst.mkdir(exist_ok=True)
    (dst / "config.json").write_text((src / "config.json").read_text())
    state = load_file(str(src / "model.safetensors"))
    edit(state)
    save_file(state, str(dst / "model.safetensors"))
    return dst


def test_missing_key_error(saved, tmp_path):
    key = "detr_decoder.box_head.layer1.weight"
    folder = _copy_checkpoint(saved[0], tmp_path / "c", lambda s: s.pop(key))
    with pytest.raises(sam3lt.CheckpointError, match="1 missing keys") as err:
        sam3lt.from_pretrained(folder)
    assert key in str(err.value)


def test_missing_qkv_part_names_hf_keys(saved, tmp_path):
    key = "vision_encoder.backbone.layers.0.attention.k_proj.weight"
    folder = _copy_checkpoint(saved[0], tmp_path / "c", lambda s: s.pop(key))
    with pytest.raises(sam3lt.CheckpointError) as err:
        sam3lt.from_pretrained(folder)
    assert "vision_encoder.backbone.layers.0.attention.{q,k,v}_proj.weight" in str(err.value)


def test_unexpected_key_error(saved, tmp_path):
    folder = _copy_checkpoint(saved[0], tmp_path / "c", lambda s: s.update({"foo.bar": torch.zeros(3)}))
    with pytest.raises(sam3lt.CheckpointError, match="1 unexpected keys") as err:
        sam3lt.from_pretrained(folder)
    assert "foo.bar" in str(err.value)


def test_wrong_shape_error(saved, tmp_path):
    key = "mask_decoder.instance_projection.weight"

    def edit(state):
        state[key] = torch.zeros(3, 3)

    folder = _copy_checkpoint(saved[0], tmp_path / "c", edit)
    with pytest.raises(sam3lt.CheckpointError, match="1 shape mismatches") as err:
        sam3lt.from_pretrained(folder)
    assert key in str(err.value) and "(3, 3)" in str(err.value)


def test_all_errors_in_one_message(saved, tmp_path):
    def edit(state):
        state.pop("detr_decoder.box_head.layer1.weight")
        state["foo.bar"] = torch.zeros(3)
        state["mask_decoder.instance_projection.weight"] = torch.zeros(3, 3)

    folder = _copy_checkpoint(saved[0], tmp_path / "c", edit)
    with pytest.raises(sam3lt.CheckpointError) as err:
        sam3lt.from_pretrained(folder)
    message = str(err.value)
    assert "missing keys" in message and "unexpected keys" in message and "shape mismatches" in message


def test_corrupt_file_error(saved, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "config.json").write_text((saved[0] / "config.json").read_text())
    data = (saved[0] / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(sam3lt.CheckpointError, match="corrupt"):
        sam3lt.from_pretrained(folder)


def test_corrupt_config_and_missing_files(saved, tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    with pytest.raises(sam3lt.CheckpointError, match="config.json"):
        sam3lt.from_pretrained(folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(sam3lt.CheckpointError, match="not valid JSON"):
        sam3lt.from_pretrained(folder)
    (folder / "config.json").write_text((saved[0] / "config.json").read_text())
    with pytest.raises(sam3lt.CheckpointError, match="no model.safetensors"):
        sam3lt.from_pretrained(folder)


def test_config_json_round_trip(saved):
    config = sam3lt.Sam3LiteTextConfig.from_json_file(saved[0] / "config.json")
    assert config == sam3lt.Sam3LiteTextConfig.tiny("s0")
    again = sam3lt.Sam3LiteTextConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config


def test_video_prefix_and_tracker_keys_are_handled(saved):
    _, hf, ref, inputs = saved
    state = {f"detector_model.{k}": v for k, v in hf.state_dict().items()}
    state["tracker_model.some.weight"] = torch.zeros(2)
    config = sam3lt.Sam3LiteTextConfig.tiny("s0")
    model = sam3lt.loading.load_into(sam3lt.Sam3LiteTextModel, config, state, "test", dtype=None, device=None,
                                     fold_batchnorm=True)
    assert_outputs_close(ref, _run(model, inputs))


def test_unreachable_hub_id_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(OSError, match="path_or_hub_id"):
        sam3lt.from_pretrained("no-such-user/no-such-model-sam3lt")


def test_default_config_matches_hf_defaults():
    """Every field of every sub-config has HF's default, and HF's config.json dict loads unchanged."""
    from transformers import Sam3LiteTextConfig as HFConfig

    hf = HFConfig().to_dict()
    ours = sam3lt.Sam3LiteTextConfig.from_dict(hf)
    assert ours == sam3lt.Sam3LiteTextConfig()
    for name in ("text_config", "geometry_encoder_config", "detr_encoder_config", "detr_decoder_config",
                 "mask_decoder_config"):
        mine = getattr(ours, name).to_dict()
        assert {k: v for k, v in mine.items()} == {k: hf[name][k] for k in mine}, name
    vit = ours.vision_config.backbone_config.to_dict()
    assert vit == {k: hf["vision_config"]["backbone_config"][k] for k in vit}
