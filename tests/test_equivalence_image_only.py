"""Image-only generation (``--mask-source none``, the official ``diff_model_infer`` flow: the diffusion UNet and the
VAE, no ControlNet, no mask) equals the official loop written on MONAI's classes (:func:`reference_pipeline.
reference_image_only`), with and without classifier-free guidance. Bound: max |maisi - reference| <= 1e-4 in
[0, 1] image units, fp32 on the CPU, two non-cubic shapes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import reference_pipeline as ref
from maisi import labels
from test_equivalence_common import (
    TOL_UNIT,
    initial_noise,
    max_abs,
    official_scheduler_for,
    official_weights,
    step_generator,
    tiny_config,
)

CASES = [
    ("rflow", (64, 64, 32), (1.5, 1.5, 2.0), 0.0),
    ("rflow", (32, 32, 64), (2.0, 1.5, 1.0), 0.0),
    ("rflow", (64, 64, 32), (1.5, 1.5, 2.0), 2.5),
    ("rflow", (32, 32, 64), (2.0, 1.5, 1.0), 2.5),
    ("ddpm", (32, 32, 64), (2.0, 1.5, 1.0), 0.0),
]


def _run(tmp_path_factory, kind, shape, spacing, guidance):
    from maisi.generation import generate

    weights, nets = official_weights(tmp_path_factory, kind)
    cfg = tiny_config(kind)
    out = tmp_path_factory.mktemp(f"image-only-{kind}")
    cfg.generate = dataclasses.replace(
        cfg.generate,
        weights=str(weights),
        mask_source="none",
        output_dir=str(out),
        output_size=shape,
        spacing=spacing,
        guidance=guidance,
        body_region=("chest", "abdomen"),
        decode_window=(48, 48, 48),
        decode_overlap=0.6666,
        preview=True,
    )
    noise = initial_noise(shape)
    decoded = ref.reference_image_only(
        nets,
        official_scheduler_for(cfg),
        spacing,
        noise,
        num_inference_steps=cfg.generate.steps,
        top_region=labels.region_one_hot(1),
        bottom_region=labels.region_one_hot(2),
        guidance_scale=guidance,
        step_generator=step_generator(cfg),
    )
    (sample,) = generate(cfg, initial_noise=noise, return_unit=True)
    return decoded, sample, out


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}-g{c[3]:g}")
def test_image_only_matches_the_official_loop(tmp_path_factory, case):
    kind, shape, spacing, guidance = case
    decoded, sample, out = _run(tmp_path_factory, *case)
    reference_unit = torch.clip(decoded, 0.0, 1.0)
    diff = max_abs(sample.unit, reference_unit)
    assert diff <= TOL_UNIT, f"{case}: max |maisi - reference| = {diff:.3g}"
    inside = ((reference_unit > 0.01) & (reference_unit < 0.99)).float().mean().item()
    assert inside > 0.6  # not clipped flat: the comparison is informative
    # written: the image, its sidecar and preview, no label map; HU as the official script maps it
    assert sample.label is None and "label" not in sample.paths
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "sample_00000.json",
        "sample_00000_image.nii.gz",
        "sample_00000_preview.png",
    ]
    hu = np.rint(reference_unit.numpy() * 2000.0 - 1000.0)
    assert np.abs(sample.image.astype(np.float64) - hu).max() <= 1.0
    meta = json.loads(Path(sample.paths["sidecar"]).read_text())
    assert meta["mask"]["source"] == "none" and meta["output"]["label_ids"] is None
    assert meta["qc"]["enabled"] is False and meta["qc"]["reason"].startswith("image-only generation")
    assert meta["weights"]["components"].keys() == {"vae", "unet"}  # the ControlNet is never loaded


def test_guidance_changes_the_image_only_sample(tmp_path_factory):
    """Guidance is applied (the two guided cases differ from the unguided ones by far more than the bound)."""
    plain = _run(tmp_path_factory, *CASES[0])[1]
    guided = _run(tmp_path_factory, *CASES[2])[1]
    assert max_abs(plain.unit, guided.unit) > 100 * TOL_UNIT
