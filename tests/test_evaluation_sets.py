"""Set-level checks with known answers: memorisation, size control, organ median-HU QC, reconstruction."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import ndimage

from maisi.data.nifti import save_nifti
from maisi.errors import DataError
from maisi.evaluation.memorization import evaluate_memorization, volume_signature
from maisi.evaluation.qc import evaluate_qc
from maisi.evaluation.size import evaluate_size, spearman

AFFINE = np.diag([2.0, 2.0, 2.5, 1.0])  # voxel = 10 mm^3 = 0.01 mL


def ct(seed, shape=(24, 24, 20)):
    v = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), 2.0)
    return np.clip(v / v.std() * 400.0, -1000, 1000).astype(np.float32)


def test_memorization_flags_an_exact_copy(tmp_path):
    train, synth = tmp_path / "train", tmp_path / "synth"
    train.mkdir(), synth.mkdir()
    for i in range(3):
        save_nifti(train / f"t{i}_image.nii.gz", ct(i), AFFINE)
    save_nifti(synth / "copy_image.nii.gz", ct(1), AFFINE)  # exact copy of t1
    save_nifti(synth / "new_image.nii.gz", ct(7), AFFINE)  # a different volume
    r = evaluate_memorization(synth, train, grid=(12, 12, 10), out=tmp_path / "m.json")
    rows = {c["name"]: c for c in r["cases"]}
    assert rows["copy"]["nearest"] == "t1" and rows["copy"]["correlation"] == pytest.approx(1.0, abs=1e-9)
    assert rows["copy"]["flagged"] is True
    assert rows["new"]["flagged"] is False and rows["new"]["correlation"] < 0.5
    assert r["n_flagged"] == 1 and r["training_nearest"]["n"] == 3
    assert json.loads((tmp_path / "m.json").read_text())["n_flagged"] == 1


def test_signature_ignores_a_linear_intensity_change(tmp_path):
    # a normalised correlation: the same anatomy at another brightness is still an exact copy
    v = ct(3)
    save_nifti(tmp_path / "a.nii.gz", v * 0.5, AFFINE)
    save_nifti(tmp_path / "b.nii.gz", v * 0.5 + 100.0, AFFINE)
    a, b = (
        volume_signature(tmp_path / "a.nii.gz", grid=(8, 8, 8)),
        volume_signature(tmp_path / "b.nii.gz", grid=(8, 8, 8)),
    )
    assert float(a @ b) == pytest.approx(1.0, abs=1e-9) and float(a @ a) == pytest.approx(1.0)


def write_generated(folder, liver_voxels, requests):
    """Generated pairs whose liver holds ``liver_voxels[i]`` voxels, with sidecar size requests."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (n, req) in enumerate(zip(liver_voxels, requests)):
        label = np.zeros((20, 20, 20), np.uint8)
        label.reshape(-1)[:n] = 1
        label.reshape(-1)[-50:] = 3
        save_nifti(folder / f"sample_{i:05d}_image.nii.gz", np.zeros((20, 20, 20), np.float32), AFFINE)
        save_nifti(folder / f"sample_{i:05d}_label.nii.gz", label, AFFINE)
        sizes = {
            "liver": {"requested": req, "requested_ml": 20.0, "realised_ml": n * 0.01},
            "hepatic tumor": {"requested": 0.5, "requested_radius_mm": 10.0},
        }
        (folder / f"sample_{i:05d}.json").write_text(json.dumps({"index": i, "organ_sizes": sizes}))


def test_size_control_known_volumes(tmp_path):
    write_generated(tmp_path / "gen", [1800, 2000, 2500], [0.2, 0.5, 0.9])
    r = evaluate_size(tmp_path / "gen", out=tmp_path / "size.json")
    liver = r["anatomy"]["liver"]
    assert liver["n"] == 3
    assert liver["relative_error"]["mean"] == pytest.approx(np.mean([-0.1, 0.0, 0.25]))
    assert liver["abs_relative_error"]["mean"] == pytest.approx(np.mean([0.1, 0.0, 0.25]))
    assert liver["spearman"] == pytest.approx(1.0)
    tumor = r["anatomy"]["hepatic tumor"]  # absent from the labels: realised 0, target = ball of radius 10 mm
    assert tumor["relative_error"]["mean"] == pytest.approx(-1.0)
    assert r["cases"][1]["requested_ml"] == pytest.approx(4 / 3 * math.pi * 1000 / 1000)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0) and spearman([1, 1, 1], [1, 2, 3]) is None


def test_qc_pass_rate(tmp_path):
    folder = tmp_path / "pairs"
    folder.mkdir()
    for name, liver_hu in (("good", 60.0), ("bad", 500.0)):
        label = np.zeros((16, 16, 16), np.uint8)
        label[2:8, 2:8, 2:8] = 1  # liver
        label[9:14, 9:14, 9:14] = 3  # spleen
        image = np.full(label.shape, -1000.0, np.float32)
        image[label == 1], image[label == 3] = liver_hu, 100.0
        save_nifti(folder / f"{name}_image.nii.gz", image, AFFINE)
        save_nifti(folder / f"{name}_label.nii.gz", label, AFFINE)
    # no sidecars: the maps are a user's, whose vocabulary auto cannot tell from two cubes
    with pytest.raises(DataError, match=r"bad_label\.nii\.gz: cannot tell the label vocabulary"):
        evaluate_qc(folder)
    r = evaluate_qc(folder, label_set="maisi")
    assert r["pass_rate"] == 0.5 and r["n_checked"] == 2
    assert r["organs"]["liver"]["pass_rate"] == 0.5 and r["organs"]["spleen"]["pass_rate"] == 1.0
    assert {c["name"]: c["passed"] for c in r["cases"]} == {"bad": False, "good": True}
    assert r["organs"]["liver"]["median_hu"]["max"] == 500.0


def test_recon_through_a_tiny_vae(tmp_path, tiny_config):
    import torch

    from maisi.evaluation.recon import evaluate_recon
    from maisi.networks import build_vae
    from maisi.networks.checkpoint import save_component

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = build_vae(tiny_config.model.vae)
    save_component(tmp_path / "w" / "vae", vae, tiny_config.model.vae, component="vae")
    data = tmp_path / "data"
    data.mkdir()
    save_nifti(data / "a_image.nii.gz", ct(0, shape=(18, 16, 12)), AFFINE)  # not a multiple of 4: padded
    r = evaluate_recon(tmp_path / "w", data, out=tmp_path / "recon.json")
    row = r["cases"][0]
    assert row["shape"] == [18, 16, 12] and row["ms_ssim"] is None
    assert 0 < row["psnr"] < 60 and -1 <= row["ssim"] < 1 and row["mae_hu"] > 0
    assert r["summary"]["psnr"]["mean"] == pytest.approx(row["psnr"])
    assert (
        json.loads((tmp_path / "recon.json").read_text())["scale_factor"]
        == tiny_config.model.vae.scale_factor
    )
