"""MR image-only generation with classifier-free guidance equals the official ``diff_model_infer`` loop written on
MONAI's classes (:func:`reference_pipeline.reference_image_only`), for both official MR variants.

The weights are the official MR structure at reduced width with random weights, fetched from a fake hub in NVIDIA's
layout (:mod:`test_mr_common`). The official MR inference: modality class of the request and, for the unconditional
half of the guided batch, class 0 with every other input repeated; decode by an 80^3-latent sliding window with
overlap 0.4; MR intensities ``[0, 1] -> [0, 1000]`` clipped below at 0 only. Bound: max |maisi - reference| <= 1e-4
in [0, 1] units, fp32 on the CPU. Shapes: 128^3 through ``maisi.generation.generate`` (the smallest MR request), a
small non-cubic grid through :func:`maisi.generation.synthesis.synthesise` (the MR size rules allow no non-cubic
request under 128 x 256 x 256; that one runs in the slow selection).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import reference_pipeline as ref
from test_mr_common import SMALL, mr_config, mr_weights

TOL_UNIT = 1e-4
#: official image-only decode (scripts/diff_model_infer.py)
WINDOW, OVERLAP = (80, 80, 80), 0.4
#: (variant, modality name, its id in modality_mapping.json, spacing)
CASES = [
    ("rflow-mr", "mri_t1", 9, (1.5, 1.5, 1.2)),
    ("rflow-mr-brain", "mri_t2_skull_stripped", 30, (1.9, 1.9, 1.4)),
]


def _noise(shape, seed=5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((1, 4, *(n // 4 for n in shape)), generator=g)


def _reference(nets, cfg, shape, modality_id, noise) -> torch.Tensor:
    return ref.reference_image_only(
        nets,
        ref.official_scheduler("config_network_rflow.json"),
        cfg.generate.spacing,
        noise,
        num_inference_steps=cfg.generate.steps,
        modality=modality_id,
        guidance_scale=cfg.generate.guidance,
        decode_window=WINDOW,
        decode_overlap=OVERLAP,
    )


def _max_abs(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())


def _generate_and_compare(tmp_path_factory, variant, modality, modality_id, spacing, shape):
    from maisi.generation import generate

    weights, nets = mr_weights(tmp_path_factory, variant)
    out = tmp_path_factory.mktemp(f"mr-{variant}")
    cfg = mr_config(variant, weights, out, modality=modality, spacing=spacing, output_size=shape)
    # the preset leaves the decode to the memory plan: one pass here, as the official 80^3 window on this latent
    assert cfg.generate.guidance > 0 and cfg.generate.decode_window is None
    assert all(s // 4 <= w for s, w in zip(shape, WINDOW))
    noise = _noise(shape)
    reference = _reference(nets, cfg, shape, modality_id, noise).clamp_min(0.0).numpy()
    (sample,) = generate(cfg, initial_noise=noise, return_unit=True)
    return cfg, reference, sample, out


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mr_generation_matches_the_official_loop(tmp_path_factory, case):
    variant, modality, modality_id, spacing = case
    cfg, reference, sample, out = _generate_and_compare(tmp_path_factory, *case, SMALL)
    diff = _max_abs(sample.unit, reference)
    assert diff <= TOL_UNIT, f"{variant}: max |maisi - reference| = {diff:.3g}"
    assert 0.3 < reference.mean() < 0.8 and reference.std() > 0.02  # not flat: the comparison is informative
    if reference.max() > 1.001:  # MR is not clipped above 1 (the official MR output only clips below at 0)
        assert sample.unit.max() > 1.0
    # the file as the official script writes MR: [0, 1] -> [0, 1000], int16 (maisi rounds, it truncates)
    assert sample.image.dtype == np.int16
    assert np.abs(sample.image - np.rint(reference * 1000.0)).max() <= 1
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "sample_00000.json",
        "sample_00000_image.nii.gz",
        "sample_00000_preview.png",
    ]
    meta = json.loads(Path(sample.paths["sidecar"]).read_text())
    assert meta["output"]["modality"] == {"name": modality, "id": modality_id}
    assert meta["output"]["intensity"] == "MR: [0, 1] -> [0, 1000], clipped at 0"
    assert (
        meta["request"]["guidance"]
        == cfg.generate.guidance
        == {"rflow-mr": 15, "rflow-mr-brain": 10}[variant]
    )
    assert meta["qc"]["enabled"] is False and meta["qc"]["reason"]
    assert meta["mask"]["source"] == "none" and meta["output"]["label_ids"] is None
    assert meta["weights"]["layout"] == "official" and meta["weights"]["components"].keys() == {"vae", "unet"}


def _synthesise(tmp_path_factory, variant, modality_id, *, guidance=None, shape=(64, 64, 32)):
    """maisi's sampling + decode of one small grid (below the MR size rules, so through ``synthesise``, the
    function ``generate`` samples and decodes with), and the reference on the same inputs."""
    from maisi.diffusion import scheduler_from_config
    from maisi.generation.masks.base import GridSource
    from maisi.generation.synthesis import synthesise
    from maisi.latents import LatentCodec
    from maisi.networks.model_set import load_model_set

    spacing = (1.2, 2.0, 1.5)
    weights, nets = mr_weights(tmp_path_factory, variant)
    cfg = mr_config(variant, weights, tmp_path_factory.mktemp("unused"), spacing=spacing)
    if guidance is not None:
        cfg.generate.guidance = guidance
    ms = load_model_set(weights, base=cfg.model, components=["vae", "unet"])
    codec = LatentCodec.from_model_set(ms, decode_window=WINDOW, decode_overlap=OVERLAP)
    noise = _noise(shape, seed=9)
    unit, _ = synthesise(
        ms,
        scheduler_from_config(ms.config.scheduler),
        codec,
        [GridSource(size=shape, spacing=spacing)(0)],
        noise,
        steps=cfg.generate.steps,
        modality=modality_id,
        guidance=cfg.generate.guidance,
    )
    return unit, _reference(nets, cfg, shape, modality_id, noise).clamp_min(0.0)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mr_sampling_on_a_non_cubic_grid_matches_the_official_loop(tmp_path_factory, case):
    variant, _, modality_id, _ = case
    unit, reference = _synthesise(tmp_path_factory, variant, modality_id)
    assert unit.shape == (1, 1, 64, 64, 32)
    assert _max_abs(unit[0, 0], reference) <= TOL_UNIT


def test_guidance_changes_the_mr_sample(tmp_path_factory):
    """Guidance on the modality class is applied: the guided and unguided samples differ far beyond the bound."""
    guided, _ = _synthesise(tmp_path_factory, "rflow-mr-brain", 30)
    plain, reference = _synthesise(tmp_path_factory, "rflow-mr-brain", 30, guidance=0.0)
    assert _max_abs(plain[0, 0], reference) <= TOL_UNIT
    assert _max_abs(guided, plain) > 100 * TOL_UNIT


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_mr_generation_non_cubic_request_matches_the_official_loop(tmp_path_factory, case):
    """The smallest non-cubic MR request, 128 x 256 x 256, through ``generate`` (about a minute per variant)."""
    _, reference, sample, _ = _generate_and_compare(tmp_path_factory, *case, (128, 256, 256))
    assert _max_abs(sample.unit, reference) <= TOL_UNIT
