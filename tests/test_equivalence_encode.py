"""maisi's data-preparation encode (``maisi encode`` -> ``maisi.data.encode.encode_dataset``) equals the official
``diff_model_create_training_data.py`` encode: CT clipped to [-1000, 1000] HU and scaled to [0, 1] (MONAI
``ScaleIntensityRange``), the VAE encoder on the whole volume, a posterior sample ``mu + sigma * eps``, unscaled.

maisi stores the posterior (mean, log-variance) instead of one sample; the official sample is recovered from it
with the same ``eps``. The bound is 1e-4 in latent units (latents have unit scale).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRange

import reference_pipeline as ref
from test_equivalence_common import TOL_UNIT, load_maisi_model_set, max_abs, official_weights, tiny_config

SPACING = (1.5, 1.5, 2.0)
SAMPLE_SEED = 21


def _ct_volume(shape, seed=5) -> np.ndarray:
    """Smooth random CT in HU, partly outside [-1000, 1000] so the clipping matters."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, *[max(2, n // 8) for n in shape]), generator=g)
    field = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=False)[0, 0]
    return (field.numpy() * 2600.0 - 1300.0).astype(np.float32)


def _official_unit(hu: np.ndarray) -> torch.Tensor:
    scale = ScaleIntensityRange(a_min=-1000, a_max=1000, b_min=0.0, b_max=1.0, clip=True)
    return torch.as_tensor(scale(torch.from_numpy(hu)[None]))[None].float()


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    """``maisi.data.encode.encode_dataset`` on one CT NIfTI, with the VAE loaded from the official files and a
    codec that encodes this volume whole (as the official script does for volumes up to 320 x 320 x 160)."""
    from maisi.data.encode import encode_dataset, load_latent
    from maisi.latents import LatentCodec

    weights, nets = official_weights(tmp_path_factory, "rflow")
    cfg = tiny_config("rflow")
    model_set = load_maisi_model_set(weights, cfg, components=["vae"])
    cfg.model = model_set.config  # as `maisi encode` does: the scale factor comes with the weights
    work = tmp_path_factory.mktemp("encode")
    hu = _ct_volume((64, 64, 32))
    nib.save(nib.Nifti1Image(hu, np.diag([*SPACING, 1.0])), str(work / "case_image.nii.gz"))
    (work / "datalist.json").write_text(
        json.dumps({"training": [{"image": "case_image.nii.gz", "modality": "ct"}]})
    )
    codec = LatentCodec.from_config(cfg, vae=model_set["vae"], encode_window=(64, 64, 64))
    (path,) = encode_dataset(
        datalist=work / "datalist.json", codec=codec, output_dir=work / "latents", progress=False
    )
    mean, logvar, meta = load_latent(path)
    x = _official_unit(np.asarray(nib.load(str(work / "case_image.nii.gz")).dataobj, dtype=np.float32))
    mu, sigma = nets.autoencoder.encode(x)
    return {
        "mean": mean[None],
        "logvar": logvar[None],
        "meta": meta,
        "path": Path(path),
        "x": x,
        "codec": codec,
        "mu": mu.detach(),
        "sigma": sigma.detach(),
        "nets": nets,
        "scale_factor": codec.scale_factor,
    }


def test_ct_intensity_mapping_equals_official():
    from maisi.data.intensity import ct_to_unit

    hu = _ct_volume((16, 16, 8))
    np.testing.assert_allclose(ct_to_unit(hu), _official_unit(hu)[0, 0].numpy(), rtol=0, atol=1e-7)


def test_posterior_mean_matches_official(encoded):
    assert encoded["mean"].shape == encoded["mu"].shape == (1, 4, 16, 16, 8)
    assert max_abs(encoded["mean"], encoded["mu"]) <= TOL_UNIT


def test_posterior_sigma_matches_official(encoded):
    assert max_abs(torch.exp(0.5 * encoded["logvar"]), encoded["sigma"]) <= TOL_UNIT


def test_posterior_sample_matches_official_latent(encoded):
    """The official training latent ``encode_stage_2_inputs(x)`` (noise from the global RNG seeded with S) equals
    ``mean + exp(logvar / 2) * eps`` from maisi's file with the same ``eps``, and the codec's own sample / scale."""
    official = ref.reference_encode(encoded["nets"].autoencoder, encoded["x"], seed=SAMPLE_SEED)
    eps = torch.randn(encoded["mean"].shape, generator=torch.Generator().manual_seed(SAMPLE_SEED))
    assert max_abs(encoded["mean"] + torch.exp(0.5 * encoded["logvar"]) * eps, official) <= TOL_UNIT
    sampled = encoded["codec"].encode(
        encoded["x"], sample=True, generator=torch.Generator().manual_seed(SAMPLE_SEED)
    )
    assert max_abs(sampled / encoded["scale_factor"], official) <= TOL_UNIT
    assert max_abs(official, encoded["mu"]) > 0.1  # the sample is not the mean: the noise was compared too


def test_latent_file_is_unscaled(encoded):
    assert encoded["meta"]["scaled"] == "false"
    scaled = encoded["codec"].encode(encoded["x"])
    assert max_abs(scaled, encoded["mu"] * encoded["scale_factor"]) <= TOL_UNIT


@pytest.mark.xfail(
    strict=True,
    reason="finding: maisi's default data.encode_window (64,64,64) / overlap 0.25 tiles volumes that the official "
    "data preparation encodes whole (up to 320x320x160); with a random tiny VAE the latents differ by ~1-3",
)
def test_default_encode_settings_match_official_whole_volume_encode(tmp_path_factory):
    from maisi.config import preset
    from maisi.latents import LatentCodec

    weights, nets = official_weights(tmp_path_factory, "rflow")
    cfg = tiny_config("rflow")
    cfg.data = preset("rflow-ct").data  # the official model's data settings
    model_set = load_maisi_model_set(weights, cfg, components=["vae"])
    x = _official_unit(_ct_volume((128, 96, 32)))  # more voxels than one 64^3 window: maisi tiles it
    mean, _ = LatentCodec.from_config(cfg, vae=model_set["vae"]).encode_posterior(x)
    official = ref.dynamic_infer(
        lambda t: nets.autoencoder.encode(t)[0],
        x,
        roi_size=ref.OFFICIAL_ENCODE_ROI,
        overlap=ref.OFFICIAL_ENCODE_OVERLAP,
    )
    assert max_abs(mean, official) <= TOL_UNIT


@pytest.mark.xfail(
    strict=True,
    reason="finding: LatentCodec.encode_posterior's tiling (windows planned and Gaussian-weighted on the latent "
    "grid) is not MONAI's SlidingWindowInferer over the encoder (planned and weighted on the image grid), which the "
    "official script uses for volumes larger than 320x320x160",
)
def test_tiled_encode_matches_official_sliding_window(tmp_path_factory):
    from maisi.latents import LatentCodec

    weights, nets = official_weights(tmp_path_factory, "rflow")
    cfg = tiny_config("rflow")
    model_set = load_maisi_model_set(weights, cfg, components=["vae"])
    x = _official_unit(_ct_volume((64, 32, 32)))
    window, overlap = (32, 32, 32), ref.OFFICIAL_ENCODE_OVERLAP  # 3 windows along x
    mean, _ = LatentCodec.from_config(
        cfg, vae=model_set["vae"], encode_window=window, encode_overlap=overlap
    ).encode_posterior(x)
    with torch.no_grad():
        official = ref.dynamic_infer(
            lambda t: nets.autoencoder.encode(t)[0], x, roi_size=window, overlap=overlap
        )
    assert max_abs(mean, official) <= 1e-3


def test_vae_only_load_of_official_weights_knows_the_scale_factor(tmp_path_factory):
    """``maisi encode`` loads only the VAE; the latent scale factor still comes from NVIDIA's diffusion file."""
    from test_equivalence_common import SCALE_FACTOR

    weights, _ = official_weights(tmp_path_factory, "rflow")
    model_set = load_maisi_model_set(weights, tiny_config("rflow"), components=["vae"])
    assert model_set.config.vae.scale_factor == pytest.approx(SCALE_FACTOR)


def test_official_encode_settings_equal_official_whole_volume_encode(tmp_path_factory):
    """With ``data.encode_window=[320, 320, 160]`` and ``data.encode_overlap=0.4`` (the official script's values)
    maisi encodes such a volume whole, as the official script does."""
    from maisi.latents import LatentCodec

    weights, nets = official_weights(tmp_path_factory, "rflow")
    cfg = tiny_config("rflow")
    cfg.data = dataclasses.replace(
        cfg.data, encode_window=ref.OFFICIAL_ENCODE_ROI, encode_overlap=ref.OFFICIAL_ENCODE_OVERLAP
    )
    model_set = load_maisi_model_set(weights, cfg, components=["vae"])
    x = _official_unit(_ct_volume((128, 96, 32)))
    mean, _ = LatentCodec.from_config(cfg, vae=model_set["vae"]).encode_posterior(x)
    with torch.no_grad():
        official = ref.dynamic_infer(
            lambda t: nets.autoencoder.encode(t)[0],
            x,
            roi_size=ref.OFFICIAL_ENCODE_ROI,
            overlap=ref.OFFICIAL_ENCODE_OVERLAP,
        )
    assert max_abs(mean, official) <= TOL_UNIT
