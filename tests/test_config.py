from __future__ import annotations

import json
from pathlib import Path

import pytest

from maisi.config import apply_overlay, config_from_dict, load_config, parse_assignments, preset, to_dict
from maisi.errors import ConfigError

REF = Path(__file__).resolve().parents[1] / "src" / "maisi" / "resources"


@pytest.mark.parametrize(
    "name,network_file", [("rflow-ct", "config_network_rflow.json"), ("ddpm-ct", "config_network_ddpm.json")]
)
def test_official_network_files_equal_presets(name, network_file):
    cfg = load_config(files=[REF / network_file])
    assert to_dict(cfg.model) == to_dict(preset(name).model)


def test_official_infer_file_maps_keys():
    cfg = load_config(files=[REF / "config_infer.json"])
    g = cfg.generate
    assert g.output_size == (256, 256, 256)
    assert g.spacing == (1.5, 1.5, 2.0)
    assert g.anatomy == ("lung tumor",)
    assert g.body_region == ("chest",)
    assert g.steps == 30 and g.mask_steps == 1000
    assert g.decode_window == (48, 48, 48) and g.decode_overlap == pytest.approx(0.6666)
    assert g.modality == "ct" and g.guidance == 0.0


@pytest.mark.parametrize("name", ["rflow-ct", "ddpm-ct"])
def test_official_ct_presets_request_what_config_infer_requests(name):
    """The official CT presets' request is the official config_infer.json's (a chest mask holding a lung tumour,
    256^3 at 1.5 x 1.5 x 2 mm), except the steps the ddpm sampler needs; the decode is left to the memory plan
    (the official file's 48^3 / 0.6666 windows, loaded with it, are explicit settings)."""
    official = load_config(files=[REF / "config_infer.json"]).generate
    ours = preset(name).generate
    same = ("output_size", "spacing", "anatomy", "body_region", "guidance")
    assert {k: getattr(ours, k) for k in same} == {k: getattr(official, k) for k in same}
    assert ours.decode_window is None and ours.decode_overlap is None and ours.decode_splits is None
    assert ours.anatomy == ("lung tumor",) and ours.steps == (1000 if name == "ddpm-ct" else 30)


def test_anatomy_none_clears_the_presets_anatomy():
    from maisi.cli import build_parser
    from maisi.cli.generate import overlay_from_args

    args = build_parser().parse_args(["generate", "--anatomy", "none"])
    assert overlay_from_args(args)["generate"]["anatomy"] == []
    args = build_parser().parse_args(["generate", "--anatomy", "liver", "hepatic tumor"])
    assert overlay_from_args(args)["generate"]["anatomy"] == ["liver", "hepatic tumor"]


@pytest.mark.parametrize(
    "fname,task",
    [
        ("config_maisi_vae_train.json", "vae"),
        ("config_maisi_diff_model_rflow-ct.json", "diffusion"),
        ("config_maisi_controlnet_train_rflow-ct.json", "controlnet"),
    ],
)
def test_official_training_files_load(fname, task):
    cfg = load_config(files=[REF / fname])
    assert cfg.train.task == task


def test_official_training_values():
    cfg = load_config(files=[REF / "config_maisi_controlnet_train_rflow-ct.json"])
    assert cfg.train.weighted_loss_labels == (23,) and cfg.train.weighted_loss == 100.0
    assert cfg.train.use_region_contrastive_loss is True
    assert cfg.generate.decode_window == (80, 80, 80)


@pytest.mark.parametrize(
    "fname,has_output,ignored",
    [
        ("environment_rflow-ct.json", True, ["trained_controlnet_path", "all_mask_files_json"]),
        ("environment_maisi_vae_train.json", False, ["model_dir", "finetune"]),
        ("environment_maisi_diff_model_rflow-ct.json", True, ["json_data_list", "existing_ckpt_filepath"]),
    ],
)
def test_official_environment_files_change_only_the_output_folder(fname, has_output, ignored, caplog):
    """An environment file holds paths of the official folder layout: its output folder becomes
    ``generate.output_dir``; every other key changes nothing and is named in the one warning."""
    import logging

    path = REF / fname
    with caplog.at_level(logging.WARNING, logger="maisi.config.official"):
        cfg = load_config(files=[path])
    expected = to_dict(preset("rflow-ct"))
    if has_output:
        expected["generate"]["output_dir"] = json.loads(path.read_text())["output_dir"]
        assert cfg.generate.output_dir == expected["generate"]["output_dir"]
    assert to_dict(cfg) == expected
    (warning,) = [r.getMessage() for r in caplog.records]
    assert all(key in warning for key in ignored) and "output_dir" not in warning


def test_unknown_key_in_file_names_key_and_file(tmp_path):
    f = tmp_path / "overlay.json"
    f.write_text(json.dumps({"train": {"learning_rate": 1e-3}}))
    with pytest.raises(ConfigError, match=r"overlay\.json.*unknown key 'learning_rate'"):
        load_config(files=[f])


def test_unknown_key_in_official_file(tmp_path):
    data = json.loads((REF / "config_infer.json").read_text())
    data["num_inference_stepz"] = 3
    f = tmp_path / "infer.json"
    f.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"infer\.json: unknown key 'num_inference_stepz'"):
        load_config(files=[f])


def test_unknown_key_in_official_network_definition(tmp_path):
    data = json.loads((REF / "config_network_rflow.json").read_text())
    data["autoencoder_def"]["num_chanels"] = [1, 2, 3]
    f = tmp_path / "net.json"
    f.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"net\.json.*unknown key 'num_chanels'"):
        load_config(files=[f])


def test_overlay_holds_only_differences(tmp_path):
    f = tmp_path / "o.json"
    f.write_text(json.dumps({"preset": "tiny", "generate": {"steps": 7}}))
    cfg = load_config(files=[f])
    assert cfg.preset == "tiny"
    assert cfg.generate.steps == 7
    assert cfg.generate.output_size == preset("tiny").generate.output_size


def test_command_line_overrides_parse_json_values():
    cfg = load_config(
        preset="tiny", overrides=["train.lr=0.5", "generate.output_size=[32,64,96]", "train.amp=bf16"]
    )
    assert cfg.train.lr == 0.5 and cfg.generate.output_size == (32, 64, 96) and cfg.train.amp == "bf16"


@pytest.mark.parametrize(
    "overlay,message",
    [
        ({"train": {"lr": "fast"}}, r"train\.lr: expected a number"),
        ({"train": {"max_steps": 1.5}}, r"train\.max_steps: expected an integer"),
        ({"train": {"amp": "fp8"}}, r"train\.amp: 'fp8' is not one of"),
        ({"generate": {"output_size": [64, 64]}}, r"generate\.output_size: expected 3 values"),
        (
            {"model": {"vae": {"use_checkpointing": "yes"}}},
            r"model\.vae\.use_checkpointing: expected true/false",
        ),
        ({"model": 3}, r"model: expected an object"),
    ],
)
def test_bad_values_are_named(overlay, message):
    with pytest.raises(ConfigError, match=message):
        apply_overlay(preset("tiny"), overlay)


def test_round_trip_through_dict():
    for name in ("rflow-ct", "ddpm-ct", "tiny"):
        cfg = preset(name)
        assert config_from_dict(to_dict(cfg)) == cfg


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset 'huge'"):
        preset("huge")


def test_parse_assignments_rejects_missing_equals():
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_assignments(["train.lr"])


def test_official_target_outside_the_allow_list_is_neither_imported_nor_run(tmp_path, monkeypatch):
    """A network definition naming an arbitrary module in ``_target_`` is refused by name; the module is never
    imported (it would write a marker file if it were)."""
    import sys

    marker = tmp_path / "imported.txt"
    (tmp_path / "evil_maisi_target.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nclass Net: pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    data = json.loads((REF / "config_network_rflow.json").read_text())
    data["autoencoder_def"]["_target_"] = "evil_maisi_target.Net"
    f = tmp_path / "net.json"
    f.write_text(json.dumps(data))
    with pytest.raises(
        ConfigError, match=r"net\.json: autoencoder_def: unknown _target_ 'evil_maisi_target\.Net'"
    ):
        load_config(files=[f])
    assert not marker.exists() and "evil_maisi_target" not in sys.modules
    data["autoencoder_def"]["_target_"] = "os.system"
    data["noise_scheduler"]["_target_"] = "subprocess.run"
    f.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"unknown _target_ 'os\.system'"):
        load_config(files=[f])


def test_official_keys_maisi_does_not_use_are_named_in_one_warning(caplog):
    import logging

    with caplog.at_level(logging.WARNING, logger="maisi.config.official"):
        load_config(files=[REF / "environment_maisi_vae_train.json", REF / "config_maisi_vae_train.json"])
    env, train = [r.getMessage() for r in caplog.records]
    assert env.startswith(f"{REF / 'environment_maisi_vae_train.json'}: official keys not used by maisi:")
    assert "trained_autoencoder_path" in env and "tfevent_path" in env
    assert "autoencoder_train.n_epochs (maisi trains by steps" in train and "data_option (" in train
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maisi.config.official"):
        load_config(files=[REF / "config_network_rflow.json"])  # every key of a network file is used
    assert caplog.records == []


def test_official_2026_files_give_the_adagn_mask_generator_and_the_v2_keys():
    """The 2026 network file defines the AdaGN mask UNet and its rectified-flow scheduler under the v1 keys: they
    load as ``mask_unet_v2`` / ``mask_scheduler_v2`` (equal to the rflow-ct preset's), the v1 ones untouched; the
    v2 inference keys load into the request."""
    cfg = load_config(
        files=[REF / "2026" / "config_network_rflow.json", REF / "2026" / "config_infer_v2.json"]
    )
    m, ref = cfg.model, preset("rflow-ct").model
    assert m.mask_unet_v2.variant == "adagn" and m.mask_unet_v2.adagn_condition_dim == 19
    assert m.mask_unet_v2.adagn_context_embed_dim == 256 and m.mask_unet_v2.cross_attention_dim == 19
    assert m.mask_unet_v2.include_spacing_input is True and m.mask_unet_v2.num_channels == (64, 128, 256, 512)
    assert m.mask_scheduler_v2.kind == "rflow" and m.mask_scheduler_v2.scale == 1.0
    assert to_dict(m.mask_unet_v2) == to_dict(ref.mask_unet_v2)
    assert to_dict(m.mask_scheduler_v2) == to_dict(ref.mask_scheduler_v2)
    assert m.mask_unet == ref.mask_unet and m.mask_scheduler.kind == "ddpm" and m.unet == ref.unet
    g = cfg.generate
    assert g.mask_steps == 100 and g.mask_guidance == 2.0 and g.demographics == {}
    assert g.organ_sizes == {"bone lesion": 0.5} and g.anatomy == ("bone lesion",)


def test_official_demographics_pairs_load(tmp_path):
    data = json.loads((REF / "2026" / "config_infer_v2.json").read_text())
    data["controllable_demographics"] = [["age", 63], ["sex", "F"], ["weight", 70]]
    f = tmp_path / "infer.json"
    f.write_text(json.dumps(data))
    assert load_config(files=[f]).generate.demographics == {"age": 63.0, "sex": "F", "weight": 70.0}
