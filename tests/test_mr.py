"""MR: the official MR presets and their sources, the official MR parameter counts, the MR request rules (every
invalid request a one-line error naming the nearest valid one), modality against weights, named MR weights, the
fake-hub download and loading of each MR variant, and MR reconstruction metrics."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

import reference_pipeline as ref
from maisi.config import load_config, preset
from maisi.errors import RequestError
from maisi.generation import mr
from maisi.generation.plan import plan_generation
from maisi.networks.official import OFFICIAL_FILES
from test_generation_common import DATA
from test_mr_common import mr_model_config, mr_weights

MR_PRESETS = ("rflow-mr", "rflow-mr-brain")
#: parameters of NVIDIA's networks (config_network_rflow.json, which both MR variants use)
OFFICIAL_VAE, OFFICIAL_UNET = 20_944_897, 180_500_868


# -- presets -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, size, spacing, modality, guidance, seed, lr",
    [
        ("rflow-mr", (128, 256, 256), (1.25, 1.0, 1.0), "mri_t1", 15.0, 0, 1e-4),
        ("rflow-mr-brain", (256, 256, 256), (0.8, 1.0, 1.0), "mri_flair_skull_stripped", 10.0, 1234, 1e-5),
    ],
)
def test_mr_presets_hold_the_official_defaults(name, size, spacing, modality, guidance, seed, lr):
    cfg = preset(name)
    g = cfg.generate
    assert (g.output_size, g.spacing, g.modality, g.guidance, g.steps, g.seed) == (
        size,
        spacing,
        modality,
        guidance,
        30,
        seed,
    )
    # the decode is the memory plan's (the official diff_model_infer's 80^3 / 0.4 windows are an explicit setting)
    assert (g.mask_source, g.decode_window, g.decode_overlap) == ("none", None, None)
    assert (cfg.train.lr, cfg.train.batch_size, cfg.data.modality) == (lr, 1, "mri")
    assert cfg.model == preset("rflow-ct").model  # both MR variants are config_network_rflow.json networks
    # the official file over the CT preset gives the same request and learning rate (the preset's source)
    official = load_config(
        preset="rflow-ct", files=[f"src/maisi/resources/2026/config_maisi_diff_model_{name}.json"]
    )
    for key in ("output_size", "spacing", "modality", "guidance", "steps", "seed"):
        assert getattr(official.generate, key) == getattr(g, key), key
    assert official.train.lr == lr


def test_official_mr_networks_have_the_official_parameter_counts_and_keys():
    """Built on the meta device: maisi's MR networks and MONAI's classes built from the official 2026
    ``config_network_rflow.json`` have the same parameters, so the official MR files load strictly."""
    from maisi.networks import build, count_parameters

    defs = ref.network_definitions("2026/config_network_rflow.json")
    for name in MR_PRESETS:
        m = preset(name).model
        with torch.device("meta"):
            ours = {c: build(c, m) for c in ("vae", "unet")}
            theirs = {
                "vae": ref.instantiate(defs["autoencoder_def"]),
                "unet": ref.instantiate(defs["diffusion_unet_def"], use_flash_attention=False),
            }
        counts = {c: count_parameters(n) for c, n in ours.items()}
        assert counts == {"vae": OFFICIAL_VAE, "unet": OFFICIAL_UNET}
        assert {c: round(v / 1e6, 1) for c, v in counts.items()} == {"vae": 20.9, "unet": 180.5}
        for c in ours:
            shapes = {k: tuple(v.shape) for k, v in ours[c].state_dict().items()}
            assert shapes == {k: tuple(v.shape) for k, v in theirs[c].state_dict().items()}, c


# -- request rules -----------------------------------------------------------------------------------------------


def _official(tmp_path, variant):
    """A folder holding (empty) official files of ``variant``: enough to plan, which reads no weights."""
    models = tmp_path / variant / "models"
    models.mkdir(parents=True)
    for name in OFFICIAL_FILES[variant].values():
        (models / name).touch()
    return tmp_path / variant


def _plan(tmp_path, variant, preset_name=None, **generate):
    cfg = preset(preset_name or (variant if variant in MR_PRESETS else "rflow-ct"))
    cfg.generate = dataclasses.replace(
        cfg.generate, weights=str(_official(tmp_path, variant)), output_dir=str(tmp_path / "out"), **generate
    )
    return plan_generation(cfg)


BAD_MR_REQUESTS = [
    (
        "rflow-mr-brain",
        dict(output_size=(256, 256, 64)),
        "modality 'mri_flair_skull_stripped': output_size [256, 256, 64] is not an MR size (Z 128 with X = Y in "
        "128, 256, 384 or 512; Z 256 with X x Y = 128 x 256, 256 x 128 or 256 x 256); nearest valid request "
        "--output-size 256 256 128 --spacing 0.8 1 0.5 (same field of view)",
    ),
    (
        "rflow-mr",
        dict(output_size=(512, 512, 256)),
        "nearest valid request --output-size 512 512 128 --spacing 1.25 1 2 (same field of view)",
    ),
    ("rflow-mr", dict(output_size=(200, 200, 128)), "nearest valid request --output-size 256 256 128"),
    ("rflow-mr", dict(output_size=(256, 128, 128)), "nearest valid request --output-size 256 256 128"),
    (
        "rflow-mr",
        dict(spacing=(0.3, 1.0, 1.0)),
        "spacing [0.3, 1, 1]: axis X = 0.3 mm is outside the MR range [0.4, 5] mm; nearest valid spacing "
        "[0.4, 1, 1]",
    ),
    ("rflow-mr-brain", dict(spacing=(1.0, 1.0, 6.0)), "axis Z = 6 mm is outside the MR range [0.4, 5] mm"),
    (
        "rflow-mr-brain",
        dict(modality="ct"),
        "modality 'ct' (id 1) is not an MR modality, and rflow-mr-brain weights generate MR; pass --modality "
        "with one of mri, mri_t1, mri_t2, mri_flair, mri_swi, mri_mra, mri_t1_skull_stripped",
    ),
    ("rflow-mr", dict(modality="ct_contrast"), "pass --modality with one of mri, mri_t1, mri_t2, mri_flair"),
    (
        "rflow-ct",
        dict(modality="mri_t2"),
        "modality 'mri_t2' (id 10) is an MR modality, and rflow-ct weights generate CT; pass --modality ct, or "
        "MR weights (--weights rflow-mr or rflow-mr-brain)",
    ),
    ("ddpm-ct", dict(modality="mri", output_size=(512, 512, 768)), "and ddpm-ct weights generate CT"),
    (
        "rflow-mr",
        dict(mask="mask.nii.gz", mask_source="auto"),
        "mask source 'file': rflow-mr weights have no ControlNet, so MR generation is image-only",
    ),
    (
        "rflow-mr-brain",
        dict(organ_sizes={"liver": 0.5}, mask_source="auto"),
        "so MR generation is image-only",
    ),
    ("rflow-mr-brain", dict(mask_source="phantom"), "mask source 'phantom': rflow-mr-brain weights have no"),
    ("rflow-mr", dict(modality="mri_t3"), "unknown modality 'mri_t3'"),
]


@pytest.mark.parametrize(
    "variant, overrides, message", BAD_MR_REQUESTS, ids=[f"{v}-{'-'.join(o)}" for v, o, _ in BAD_MR_REQUESTS]
)
def test_invalid_mr_requests_are_one_line_errors(tmp_path, variant, overrides, message):
    with pytest.raises(RequestError) as e:
        _plan(tmp_path, variant, **overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("size", mr.MR_SIZES, ids=lambda s: "x".join(map(str, s)))
def test_every_official_mr_size_is_accepted(tmp_path, size):
    plan = _plan(tmp_path, "rflow-mr", output_size=size, spacing=(1.0, 1.0, 1.0))
    assert plan.mask_source == "none" and plan.components == ("vae", "unet") and plan.modality == 9


def test_mr_sizes_are_the_official_list():
    z128 = {(n, n, 128) for n in (128, 256, 384, 512)}
    z256 = {(128, 256, 256), (256, 128, 256), (256, 256, 256)}
    assert set(mr.MR_SIZES) == z128 | z256 and len(mr.MR_SIZES) == 7


def test_mr_spacing_range_is_its_own(tmp_path):
    """0.4-5 mm on every axis, outside the CT ranges (in-plane 0.5-3 mm) at both ends."""
    assert _plan(tmp_path / "a", "rflow-mr-brain", output_size=(512, 512, 128), spacing=(0.45, 0.45, 1.2))
    assert _plan(tmp_path / "b", "rflow-mr", output_size=(128, 128, 128), spacing=(4.5, 4.5, 0.4))


def test_ct_modality_keeps_the_ct_rules(tmp_path):
    plan = _plan(
        tmp_path, "rflow-ct", output_size=(96, 96, 64), spacing=(3.0, 3.0, 3.0), mask_source="phantom"
    )
    assert plan.modality == 1 and plan.mask_source == "phantom"
    with pytest.raises(RequestError, match=r"axis X = 0.45 mm is outside \[0.5, 3\] mm"):
        _plan(tmp_path / "b", "rflow-ct", spacing=(0.45, 0.45, 1.0), mask_source="phantom")


def test_mr_weights_default_to_image_only_whatever_the_preset(tmp_path):
    """``--weights rflow-mr-brain`` on a CT preset's request: the mask source is none, not a phantom (MR weights
    have no ControlNet)."""
    plan = _plan(
        tmp_path, "rflow-mr-brain", preset_name="rflow-ct", modality="mri_t1", output_size=(256, 256, 128)
    )
    assert plan.mask_source == "none" and plan.components == ("vae", "unet")


# -- warnings: field of view, guidance, documented contrasts --------------------------------------------------


def test_brain_fov_of_the_official_example_gives_no_warning(tmp_path):
    """The T1 axial example of the official skill: 256 x 256 x 128 at 0.94 x 0.94 x 1.36 mm (240 x 240 x 174)."""
    plan = _plan(
        tmp_path, "rflow-mr-brain", modality="mri_t1", output_size=(256, 256, 128), spacing=(0.94, 0.94, 1.36)
    )
    assert plan.warnings == ()


@pytest.mark.parametrize("name", MR_PRESETS)
def test_the_presets_requests_give_no_warning(tmp_path, name):
    assert _plan(tmp_path, name).warnings == ()


def test_far_fov_is_warned_with_the_nearest_training_fov(tmp_path):
    plan = _plan(
        tmp_path, "rflow-mr-brain", modality="mri_t2", output_size=(128, 128, 128), spacing=(0.5, 0.5, 0.5)
    )
    (w,) = plan.warnings
    assert w.startswith(
        "field of view 64 x 64 x 64 mm is far from what rflow-mr-brain was trained on (nearest"
    )
    assert "T2 coronal, 200 x 180 x 200 mm); at this size --spacing 1.5625 1.4062 1.5625 gives it" in w


def test_body_model_fov_table(tmp_path):
    """rflow-mr's table is by body region: a prostate T2 request near its median is quiet, a 5 mm one is not."""
    quiet = _plan(
        tmp_path / "a", "rflow-mr", modality="mri_t2", output_size=(256, 256, 128), spacing=(0.66, 0.66, 0.7)
    )
    assert quiet.warnings == ()
    loud = _plan(
        tmp_path / "b", "rflow-mr", modality="mri_t2", output_size=(256, 256, 128), spacing=(5.0, 5.0, 5.0)
    )
    assert "nearest median: abdomen T2, 350 x 350 x 245.6 mm" in loud.warnings[0]


def test_guidance_zero_and_undocumented_contrast_are_warned(tmp_path):
    plan = _plan(tmp_path, "rflow-mr", guidance=0.0, modality="mri_dwi", output_size=(256, 256, 128))
    guidance, contrast = plan.warnings[:2]
    assert guidance.startswith("MR with guidance 0: the image does not commit to the requested contrast")
    assert (
        contrast
        == "modality 'mri_dwi' is not among the contrasts rflow-mr is documented for (mri, mri_t1, mri_t2, mri_flair)"
    )


def test_mr_rules_are_described_for_help():
    text = mr.describe_rules()
    assert "128x128x128" in text and "256x256x256" in text and "0.4-5 mm" in text and "\n" not in text


# -- weights: names, download, loading, parameter counts ----------------------------------------------------------


@pytest.mark.parametrize("variant", MR_PRESETS)
def test_named_mr_weights_resolve_after_a_fake_hub_download(tmp_path_factory, monkeypatch, variant):
    from maisi.generation.weights import resolve_weights, weights_preset
    from maisi.networks.official import official_variant

    weights, _ = mr_weights(tmp_path_factory, variant)  # downloaded into <MAISI_HOME>/<variant>
    monkeypatch.setenv("MAISI_HOME", str(weights.parent))
    assert resolve_weights(variant) == weights and official_variant(weights) == variant
    assert weights_preset(variant) == variant and weights_preset(str(weights)) == variant
    cfg = preset(variant)
    cfg.generate = dataclasses.replace(cfg.generate, weights=variant, output_size=(256, 256, 128))
    plan = plan_generation(cfg)
    assert plan.weights.variant == variant and plan.mask_source == "none"
    assert sorted(p.name for p in plan.weights.paths.values()) == sorted(OFFICIAL_FILES[variant].values())


def test_missing_named_mr_weights_say_how_to_get_them(tmp_path, monkeypatch):
    from maisi.errors import CheckpointError
    from maisi.generation.weights import resolve_weights

    monkeypatch.setenv("MAISI_HOME", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"run `maisi download rflow-mr-brain` first"):
        resolve_weights("rflow-mr-brain")


@pytest.mark.parametrize("variant", MR_PRESETS)
def test_downloaded_mr_files_load_strictly_and_are_counted(tmp_path_factory, variant):
    from maisi import system_info
    from maisi.networks.builders import count_parameters

    weights, nets = mr_weights(tmp_path_factory, variant)
    assert system_info.variant_without_preset(weights) is None  # a preset exists: maisi info loads and counts
    rows = system_info.describe_weights(weights, base=mr_model_config(variant))
    expected = {"vae": count_parameters(nets.autoencoder), "unet": count_parameters(nets.diffusion_unet)}
    assert {name: count for name, _, count in rows} == expected
    assert {name: path.rsplit("/", 1)[-1] for name, path, _ in rows} == OFFICIAL_FILES[variant]
    # the latent scale factor travels from the diffusion file into the VAE config
    from maisi.networks.model_set import load_model_set

    ms = load_model_set(weights, base=mr_model_config(variant))
    assert math.isclose(ms.config.vae.scale_factor, 0.8, rel_tol=1e-6)


def test_cli_mr_error_is_one_line(tmp_path, capsys):
    from maisi.cli import main

    argv = ["generate", "--preset", "rflow-mr-brain", "--weights", str(_official(tmp_path, "rflow-mr-brain"))]
    assert main([*argv, "--modality", "ct", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an MR modality" in err
    assert main([*argv, "--output-size", "256", "256", "96", "--dry-run"]) == 2
    assert "nearest valid request --output-size 256 256 128" in capsys.readouterr().err


# -- MR reconstruction metrics ------------------------------------------------------------------------------------


def test_mr_recon_metrics_use_the_mr_normalisation(tmp_path_factory):
    """``evaluate_recon(intensity="mri")`` scales by the 0-99.5th percentiles (the official MR normalisation) and
    reports no HU error; the MR example reconstructed by the MR VAE."""
    from maisi.data.intensity import mri_to_unit
    from maisi.data.nifti import load_nifti
    from maisi.evaluation.metrics import image_metrics
    from maisi.evaluation.recon import evaluate_recon, reconstruct
    from maisi.latents import LatentCodec
    from maisi.networks.model_set import load_model_set, save_model_set

    weights, _ = mr_weights(tmp_path_factory, "rflow-mr")
    ms = load_model_set(weights, base=mr_model_config("rflow-mr"), components=["vae"])
    folder = save_model_set(tmp_path_factory.mktemp("mr-vae"), ms)
    image = DATA / "example_mr_sm.nii.gz"
    result = evaluate_recon(folder, image, intensity="mri")
    (case,) = result["cases"]
    assert case["mae_hu"] is None and result["summary"]["mae_hu"]["n"] == 0
    unit, (low, high) = mri_to_unit(load_nifti(image, kind="image").array)
    # not clipped, as in the official transform: the brightest 0.5 % of voxels stay above 1
    assert (low, high) == (-47.0, pytest.approx(692.0, abs=1.0)) and 0.0 <= unit.min() and unit.max() > 1.0
    expected = image_metrics(unit, reconstruct(LatentCodec.from_model_set(ms), unit))["psnr"]
    assert case["psnr"] == pytest.approx(expected, rel=1e-5)
    assert (
        np.isfinite(case["psnr"])
        and case["psnr"] != evaluate_recon(folder, image, intensity="ct")["cases"][0]["psnr"]
    )


# -- the fine-tuning recipe ---------------------------------------------------------------------------------------

RECIPE = DATA.parent.parent / "recipes" / "mr"


def test_recipe_overlays_fit_the_preset_and_the_stand_in(tmp_path):
    """The recipe's overlays load over the brain preset, the stand-in's UNet sizes are the demo UNet's (the network
    the run builds before loading it), and the recipe's generation request passes the MR rules quietly but for the
    field of view (a body MR on the brain model)."""
    from maisi.generation.weights import DEMO_DIR, inspect_weights
    from maisi.io import read_json

    cfg = load_config(preset="rflow-mr-brain", files=[RECIPE / "finetune.json", RECIPE / "standin.json"])
    demo_unet = read_json(DEMO_DIR / "unet" / "config.json")["config"]
    for key, value in read_json(RECIPE / "standin.json")["model"]["unet"].items():
        assert demo_unet[key] == value, key
    assert cfg.train.max_steps <= 400 and cfg.train.lr == 1e-4
    cfg.generate = dataclasses.replace(
        cfg.generate,
        weights="demo",
        modality="mri",
        output_size=(128, 128, 128),
        spacing=(3.0, 3.0, 0.75),
        output_dir=str(tmp_path),
    )
    plan = plan_generation(cfg, weights=inspect_weights("demo"))
    assert plan.mask_source == "none" and [w.split(" is far")[0] for w in plan.warnings] == [
        "field of view 384 x 384 x 96 mm"
    ]


@pytest.mark.slow
def test_recipe_runs_end_to_end(tmp_path):
    """``recipes/mr/run.sh`` on the CPU (about 10 minutes): a generated MR volume, the metrics and the curve."""
    import subprocess

    done = subprocess.run(["bash", str(RECIPE / "run.sh"), str(tmp_path)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "generated" / "sample_00000_image.nii.gz").is_file()
    assert '"psnr"' in done.stdout and "train loss" in done.stdout


def test_request_grid_follows_the_modality():
    """One grid check for every caller (validation, the grid of image-only sources): MR rules for an MR modality."""
    from maisi.config import GenerateConfig
    from maisi.generation.request import request_grid

    assert request_grid(
        GenerateConfig(modality="mri_t1", output_size=(128, 128, 128), spacing=(4.0, 4.0, 0.45))
    ) == (
        (128, 128, 128),
        (4.0, 4.0, 0.45),
    )
    with pytest.raises(RequestError, match="is outside \\[0.5, 3\\] mm"):
        request_grid(GenerateConfig(modality="ct", output_size=(128, 128, 128), spacing=(4.0, 4.0, 0.45)))
    with pytest.raises(RequestError, match="nearest valid request --output-size 128 128 128"):
        request_grid(GenerateConfig(modality="mri", output_size=(96, 96, 96), spacing=(1.0, 1.0, 1.0)))


def test_maisi_weights_declaring_their_modalities_are_checked(tmp_path):
    """A maisi folder whose UNet declares the modality ids it was trained on (``modalities`` extra) is held to
    them; one that declares nothing is not (no evidence either way)."""
    from pathlib import Path

    from maisi.generation.weights import WeightsInfo

    gen = dataclasses.replace(preset("rflow-mr").generate, output_dir=str(tmp_path))
    mr_set = WeightsInfo(root=Path("w"), layout="maisi", extras={"unet": {"modalities": [0, 8, 9]}})
    ct_set = WeightsInfo(root=Path("w"), layout="maisi", extras={"unet": {"modalities": [1]}})
    assert mr.weights_modality(mr_set) == "mr" and mr.weights_modality(ct_set) == "ct"
    assert mr.weights_modality(WeightsInfo(root=Path("w"), layout="maisi")) is None
    assert mr.check_modality_weights(gen, mr_set, "none") == []
    with pytest.raises(RequestError, match="is an MR modality, and the weights in w generate CT"):
        mr.check_modality_weights(gen, ct_set, "none")
