"""maisi's image-from-mask generation equals the official MAISI loop (same weights, mask and initial latent).

The reference (:mod:`reference_pipeline`) is the official sampling loop written on MONAI's networks and schedulers;
maisi runs through its public API (``maisi.generation.generate`` with the official checkpoint files as weights,
the mask as ``--mask`` file and ``initial_noise``). Bound: max |maisi - reference| <= 1e-4 in [0, 1] image units,
fp32 on the CPU, for rflow-ct and ddpm-ct models on two non-cubic volumes.
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

import reference_pipeline as ref
from test_equivalence_common import TOL_UNIT, max_abs, run_case

#: (model kind, output size, spacing): two non-cubic shapes per model, anisotropic spacing
CASES = [
    ("rflow", (64, 64, 32), (1.5, 1.5, 2.0)),
    ("rflow", (32, 32, 64), (2.0, 1.5, 1.0)),
    ("ddpm", (64, 64, 32), (1.5, 1.5, 2.0)),
    ("ddpm", (32, 32, 64), (2.0, 1.5, 1.0)),
]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1]))}")
def case(request, tmp_path_factory):
    return run_case(tmp_path_factory, *request.param)


def test_image_matches_official_loop(case):
    diff = max_abs(case.sample.unit, case.reference.unit)
    assert diff <= TOL_UNIT, (
        f"{case.kind} {case.label.shape}: max |maisi - reference| = {diff:.3g} in [0, 1] units"
    )


def test_reference_image_is_informative(case):
    """The comparison means something only if the image is not clipped flat: most body voxels lie inside (0, 1)
    and vary."""
    body = torch.from_numpy(case.label > 0)
    unit = case.reference.unit[body]
    inside = ((unit > 0.01) & (unit < 0.99)).float().mean().item()
    assert inside > 0.6
    assert unit.std().item() > 0.02


def test_written_label_equals_conditioning_mask(case):
    img = nib.load(case.sample.paths["label"])
    written = np.asarray(img.dataobj)
    assert written.dtype == np.uint8
    np.testing.assert_array_equal(written, case.label)
    np.testing.assert_array_equal(case.sample.label, case.label)
    np.testing.assert_allclose(np.linalg.norm(img.affine[:3, :3], axis=0), case.spacing)


def test_written_image_is_official_hu_rounded(case):
    """The written image is the official HU image (float32 in the official script) rounded to int16: within
    0.5 HU plus the [0, 1] bound times the 2000 HU window; -1000 HU outside the body, exactly."""
    img = nib.load(case.sample.paths["image"])
    hu = np.asarray(img.dataobj)
    assert hu.dtype == np.int16
    diff = np.abs(hu.astype(np.float64) - case.reference.hu.numpy()).max()
    assert diff <= 0.5 + 2000 * TOL_UNIT
    assert (hu[case.label == 0] == -1000).all()
    np.testing.assert_allclose(img.affine, nib.load(case.sample.paths["label"]).affine)


def test_ddpm_region_inputs_follow_official_rule():
    """The ddpm case masks hold lungs and liver/kidneys: thorax on top, abdomen at the bottom, by the official rule
    (maisi's image equals the reference only if it fed the UNet the same one-hots)."""
    from test_equivalence_common import make_label

    top, bottom = ref.official_body_regions(make_label((64, 64, 32)))
    assert (top, bottom) == ([0, 1, 0, 0], [0, 0, 1, 0])


def test_comparison_detects_a_different_mask(tmp_path_factory):
    """Negative control: the same loop on a mask with one organ relabelled (liver -> spleen) moves the image by far
    more than the bound, so the bound is tight enough to catch a conditioning mistake."""
    from test_equivalence_common import initial_noise as noise_for
    from test_equivalence_common import (
        official_scheduler_for,
        official_weights,
        step_generator,
        tiny_config,
    )

    shape, spacing = (64, 64, 32), (1.5, 1.5, 2.0)
    base = run_case(tmp_path_factory, "rflow", shape, spacing)
    _, nets = official_weights(tmp_path_factory, "rflow")
    label = base.label.copy()
    label[label == 1] = 3
    cfg = tiny_config("rflow")
    other = ref.reference_image(
        nets,
        official_scheduler_for(cfg),
        label,
        spacing,
        noise_for(shape),
        num_inference_steps=cfg.generate.steps,
        step_generator=step_generator(cfg),
    )
    assert max_abs(other.unit, base.reference.unit) > 100 * TOL_UNIT


def test_guidance_matches_official_loop(tmp_path_factory):
    """Tumour-presence classifier-free guidance (scale 2): the unconditional pass has modality 0 and the mask with
    the hepatic and lung tumours removed (official ``remove_tumors``)."""
    c = run_case(tmp_path_factory, "rflow", (64, 64, 32), (1.5, 1.5, 2.0), guidance=2.0)
    plain = run_case(tmp_path_factory, "rflow", (64, 64, 32), (1.5, 1.5, 2.0))
    assert max_abs(c.sample.unit, c.reference.unit) <= TOL_UNIT
    assert max_abs(c.reference.unit, plain.reference.unit) > 100 * TOL_UNIT  # guidance changed the image


def test_cli_with_official_weights_mask_and_initial_noise_file(tmp_path, tmp_path_factory):
    """The user's path: ``maisi generate --weights <NVIDIA layout> --mask FILE --initial-noise FILE`` writes the
    official image (rounded to int16 HU) and the mask unchanged."""
    from maisi.cli import main
    from test_equivalence_common import OFFICIAL_OVERLAP, OFFICIAL_WINDOW, RFLOW_STEPS, SEED, official_weights
    from test_equivalence_common import initial_noise as noise_for

    shape, spacing = (32, 32, 64), (2.0, 1.5, 1.0)
    case = run_case(tmp_path_factory, "rflow", shape, spacing)
    weights, _ = official_weights(tmp_path_factory, "rflow")
    noise_file = tmp_path / "noise.pt"
    torch.save(noise_for(shape)[0], noise_file)
    out = tmp_path / "out"
    rc = main(
        [
            "generate",
            "--preset",
            "tiny",
            "--weights",
            str(weights),
            "--mask",
            case.cfg.generate.mask,
            "--label-set",
            "maisi",
            "--initial-noise",
            str(noise_file),
            "--steps",
            str(RFLOW_STEPS),
            "--seed",
            str(SEED),
            "--decode-window",
            *map(str, OFFICIAL_WINDOW),
            "--decode-overlap",
            str(OFFICIAL_OVERLAP),
            "--no-qc",
            "--no-preview",
            "--output-dir",
            str(out),
        ]
    )
    assert rc in (0, None)
    hu = np.asarray(nib.load(str(out / "sample_00000_image.nii.gz")).dataobj)
    label = np.asarray(nib.load(str(out / "sample_00000_label.nii.gz")).dataobj)
    np.testing.assert_array_equal(label, case.label)
    assert np.abs(hu.astype(np.float64) - case.reference.hu.numpy()).max() <= 0.5 + 2000 * TOL_UNIT


@pytest.mark.slow
def test_ddpm_official_1000_step_chain(tmp_path_factory):
    """The official ddpm-ct chain itself: 1000 training steps, every one walked (tiny networks, 32^3)."""
    c = run_case(tmp_path_factory, "ddpm", (32, 32, 32), (1.5, 1.5, 1.5), ddpm_steps=1000)
    assert max_abs(c.sample.unit, c.reference.unit) <= TOL_UNIT
