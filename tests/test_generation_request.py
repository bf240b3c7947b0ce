"""Generation building blocks without networks: request validation, grids, seeds, conditioning, QC, noise files,
previews, mask sources (file, phantom, database) and tumour augmentation."""

from __future__ import annotations

import dataclasses
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import torch

from maisi import conditioning
from maisi.config import GenerateConfig
from maisi.errors import DataError, RequestError
from maisi.generation import grid, qc, request, seeds
from maisi.generation.masks import FileMaskSource, PhantomMaskSource
from maisi.generation.masks.database import (
    DatabaseMaskSource,
    augment_tumors,
    closeness,
    index_masks,
    load_index,
)
from maisi.generation.masks.model import complete_size_vector
from maisi.generation.masks.phantom import phantom_region
from maisi.generation.noise import load_noise, noise_for
from maisi.generation.preview import preview_png
from test_generation_common import DATA

# -- request validation ------------------------------------------------------------------------------------------

BAD_REQUESTS = [
    (
        dict(output_size=(100, 128, 128)),
        "axis X = 100 is not a multiple of 32; nearest valid values 96 or 128",
    ),
    (dict(output_size=(128, 128, 16)), "axis Z = 16 is not a multiple of 32; nearest valid values 32"),
    (
        dict(spacing=(0.2, 1.0, 1.0)),
        "axis X = 0.2 mm is outside [0.5, 3] mm; nearest valid spacing [0.5, 1.0, 1.0]",
    ),
    (
        dict(spacing=(1.0, 1.0, 7.0)),
        "axis Z = 7 mm is outside [0.5, 5] mm; nearest valid spacing [1.0, 1.0, 5.0]",
    ),
    (dict(anatomy=("livr",)), "unknown anatomy name 'livr'; did you mean 'liver'"),
    (dict(keep_only=("spleeen",)), "keep_only: unknown anatomy name 'spleeen'; did you mean 'spleen'"),
    (dict(organ_sizes={"kidney": 0.5}), "'kidney' is not a controllable anatomy"),
    (dict(organ_sizes={"liver": 1.5}), "liver=1.5 must be in [0, 1] (relative size) or -1"),
    (dict(organ_sizes={"lung tumor": 0.5, "bone lesion": 0.2}), "only one tumour size can be controlled"),
    (dict(body_region=("legs",)), "unknown body region 'legs'"),
    (dict(modality="xray"), "unknown modality 'xray'"),
    (dict(steps=0), "steps must be >= 1"),
    (dict(guidance=-1.0), "guidance must be >= 0"),
    (dict(controlnet_scale=0.0), "controlnet_scale must be > 0, got 0.0"),
    (dict(controlnet_scale=float("nan")), "controlnet_scale must be > 0, got nan"),
]


@pytest.mark.parametrize("change, message", BAD_REQUESTS, ids=[m[:30] for _, m in BAD_REQUESTS])
def test_bad_requests_give_one_line_errors(change, message):
    """The request checks of a plan (before any loading): the request itself, then what its mask source can
    follow (organ sizes of the v1 size vector for phantoms and the v1 mask model)."""
    from maisi.generation.masks.choice import check_source

    gen = dataclasses.replace(GenerateConfig(output_size=(64, 64, 64), spacing=(3.0, 3.0, 3.0)), **change)
    with pytest.raises(RequestError) as e:
        request.validate_request(gen)
        check_source("phantom", gen, None)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_valid_request_warns_about_small_field_of_view_only():
    checked = request.validate_request(
        GenerateConfig(
            output_size=(64, 64, 64), spacing=(3.0, 3.0, 3.0), anatomy=("liver",), keep_only=("Spleen",)
        )
    )
    assert checked.anatomy_ids == [1] and checked.keep_ids == [3]
    assert len(checked.warnings) == 1 and "192 x 192 mm" in checked.warnings[0]
    assert request.validate_request(GenerateConfig()).warnings == []  # official 256^3 at 1.5 mm


@pytest.mark.parametrize(
    "n, expect", [(1, 32), (47, 32), (48, 64), (100, 96), (122, 128), (30, 32), (256, 256)]
)
def test_nearest_size(n, expect):
    assert request.nearest_size(n) == expect


# -- grids ---------------------------------------------------------------------------------------------------------


def test_resample_and_pad_keep_world_positions():
    rng = np.random.default_rng(0)
    label = rng.integers(0, 5, size=(10, 12, 6)).astype(np.uint8)
    affine = np.array([[2.0, 0, 0, -10], [0, 2.0, 0, 5], [0, 0, 4.0, 30], [0, 0, 0, 1]])
    out, aff = grid.resample_nearest(label, affine, (2, 2, 4), (1, 1, 2))
    assert out.shape == (20, 24, 12)
    # every new voxel centre lies inside the old voxel it copied
    for idx in [(0, 0, 0), (19, 23, 11), (7, 3, 5)]:
        world = aff @ np.array([*idx, 1.0])
        old = np.floor(np.linalg.solve(affine, world)[:3] + 0.5).astype(int)
        assert out[idx] == label[tuple(old)]
    padded, aff2, offsets = grid.pad_or_crop(label, affine, (16, 8, 6))
    assert padded.shape == (16, 8, 6) and offsets == [(-3, 10), (2, 8), (0, 6)]
    assert np.array_equal(padded[3:13], label[:, 2:10])
    assert np.allclose(aff2 @ [3, 0, 0, 1], affine @ [0, 2, 0, 1])


def test_fit_to_grid_reports_changes():
    label = np.ones((122, 101, 30), dtype=np.uint8)
    fitted = grid.fit_to_grid(label, np.diag([3.0, 3.0, 3.0, 1.0]), (3.0, 3.0, 3.0))
    assert fitted.label.shape == (128, 96, 32)
    assert fitted.changes == ["size [122, 101, 30] -> [128, 96, 32] (centred pad/crop)"]
    fine = grid.fit_to_grid(
        np.ones((40, 40, 20), np.uint8), np.diag([0.25, 0.25, 6.0, 1.0]), (0.25, 0.25, 6.0)
    )
    assert fine.spacing == (0.5, 0.5, 5.0) and fine.label.shape == (32, 32, 32)
    assert fine.changes[0] == "spacing [0.25, 0.25, 6] -> [0.5, 0.5, 5] mm (nearest neighbour)"


# -- seeds, conditioning ---------------------------------------------------------------------------------------------


def test_seeds_are_distinct_per_index_attempt_and_stream():
    values = {
        seeds.derive_seed(5, i, a, stream=s) for i in range(20) for a in range(3) for s in seeds.STREAMS
    }
    assert len(values) == 20 * 3 * len(seeds.STREAMS)
    assert seeds.derive_seed(5, 3) == seeds.derive_seed(5, 3) < 2**63
    parts = [seeds.shard(range(7), r, 3) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]


def test_binarize_labels_matches_the_official_bit_planes():
    label = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (2, 1, 5, 6, 7)))
    ref = label.unsqueeze(-1).bitwise_and(2 ** torch.arange(8)).ne(0).byte().squeeze(1).permute(0, 4, 1, 2, 3)
    assert torch.equal(conditioning.binarize_labels(label), ref.float())
    assert conditioning.spacing_input((1.5, 1.5, 2.0)).tolist() == [[150.0, 150.0, 200.0]]
    assert conditioning.region_input(2).tolist() == [[0.0, 0.0, 100.0, 0.0]]


def test_without_tumors_relabels_tumour_as_host():
    label = np.zeros((12, 12, 12), np.uint8)
    label[2:10, 2:10, 2:10] = 1  # liver
    label[5:7, 5:7, 5:7] = 26  # hepatic tumour
    out = conditioning.without_tumors(label)
    assert not np.any(out == 26) and np.all(out[5:7, 5:7, 5:7] == 1)


# -- quality check ---------------------------------------------------------------------------------------------------


def test_qc_uses_official_thresholds_and_all_lung_lobes():
    label = np.zeros((10, 10, 10), np.uint8)
    label[:5] = 1  # liver: range [min(sigma_6_low, p0.5), max(sigma_6_high, p99.5)] = [-21.6, 162.0]
    label[5:, :, :2] = 32  # right lower lobe, missing from the official table
    image = np.full(label.shape, 60, np.int16)
    image[label == 32] = -800
    result = qc.check_organ_medians(image, label)
    assert result["passed"] and set(result["organs"]) == {"liver", "lung"}
    assert result["organs"]["liver"]["low"] == -21.6 and result["organs"]["liver"]["high"] == 162.0
    image[label == 1] = 400
    failed = qc.check_organ_medians(image, label)
    assert (
        not failed["passed"]
        and not failed["organs"]["liver"]["passed"]
        and failed["organs"]["lung"]["passed"]
    )


# -- initial noise files ---------------------------------------------------------------------------------------------


def test_noise_files_round_trip(tmp_path):
    from safetensors.torch import save_file

    noise = torch.randn(2, 4, 4, 4, 2, generator=torch.Generator().manual_seed(0))
    torch.save({"noise": noise}, tmp_path / "n.pt")
    np.save(tmp_path / "n.npy", noise.numpy())
    save_file({"initial_noise": noise}, str(tmp_path / "n.safetensors"))
    for name in ("n.pt", "n.npy", "n.safetensors"):
        assert torch.equal(load_noise(tmp_path / name), noise)
    assert torch.equal(noise_for(noise, 1, (4, 4, 4, 2)), noise[1])
    with pytest.raises(RequestError, match="does not match the latent shape"):
        noise_for(noise, 0, (4, 8, 8, 4))
    with pytest.raises(RequestError, match="none for sample index 2"):
        noise_for(noise, 2, (4, 4, 4, 2))
    (tmp_path / "bad.npy").write_text("not numpy")
    with pytest.raises(DataError, match="bad.npy: not a readable tensor file"):
        load_noise(tmp_path / "bad.npy")


# -- preview ---------------------------------------------------------------------------------------------------------


def test_preview_is_a_deterministic_three_panel_png(tmp_path):
    from PIL import Image

    label = np.zeros((32, 32, 16), np.uint8)
    label[4:20, 8:24, 4:12] = 1
    image = np.where(label > 0, 60, -1000).astype(np.int16)
    png = preview_png(image, label, (3.0, 3.0, 6.0))
    assert png == preview_png(image, label, (3.0, 3.0, 6.0))
    (tmp_path / "p.png").write_bytes(png)
    img = Image.open(tmp_path / "p.png")
    assert img.size == (6 * 256 + 3 * 4 + 2 * 12, 256) and img.mode == "RGB"  # grey + overlay per view


# -- mask sources ----------------------------------------------------------------------------------------------------


def _write_label(path, array, spacing=(3.0, 3.0, 3.0)):
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))
    return path


def test_file_source_maps_totalsegmentator_and_adds_body():
    from maisi.data.body import add_body_from_label
    from maisi.data.label_mapping import LabelMapping
    from maisi.data.nifti import load_nifti

    src = FileMaskSource(DATA / "example_seg.nii.gz")
    s = src(0)
    assert s.label.shape == (128, 96, 32) and s.spacing == (3.0, 3.0, 3.0)
    assert s.info["vocabulary"] == "totalsegmentator-v2" and s.info["body_added"]
    assert s.info["label_mapping"]["vocabulary"] == "totalsegmentator-v2"
    vol = load_nifti(DATA / "example_seg.nii.gz", kind="label")
    expect = add_body_from_label(LabelMapping.from_totalsegmentator().apply(vol.array), vol.spacing)
    # 122 -> 128 pads 3 before, 101 -> 96 crops 2 before, 30 -> 32 pads 1 before
    assert np.array_equal(s.label[3:125, :, 1:31], expect[:, 2:98, :])
    assert not s.label[:3].any() and not s.label[:, :, 31].any()
    assert np.allclose(s.affine[:3, 3], vol.affine[:3, 3] + 3.0 * np.array([-3, 2, -1]))


def test_file_source_fitted_to_the_request():
    s = FileMaskSource(DATA / "example_seg.nii.gz", size=(64, 64, 32), spacing=(3.0, 3.0, 4.0))(0)
    assert s.label.shape == (64, 64, 32) and s.spacing == (3.0, 3.0, 4.0)
    assert s.changes == [
        "spacing [3, 3, 3] -> [3, 3, 4] mm (nearest neighbour)",
        "size [122, 101, 22] -> [64, 64, 32] (centred pad/crop)",
    ]
    assert np.allclose(np.linalg.norm(s.affine[:3, :3], axis=0), (3.0, 3.0, 4.0))


def test_file_source_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        FileMaskSource(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti file")
    with pytest.raises(DataError, match="junk.nii.gz: not a readable NIfTI"):
        FileMaskSource(tmp_path / "junk.nii.gz")
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:4] = 250
    label[5:7] = 1
    with pytest.raises(DataError, match=r"odd\.nii\.gz: .*\[250\]"):
        FileMaskSource(_write_label(tmp_path / "odd.nii.gz", label))


def test_phantom_source_maps_relative_size_to_volume():
    src = PhantomMaskSource(
        size=(32, 32, 32),
        spacing=(3.0, 3.0, 3.0),
        seed=0,
        body_region=("abdomen",),
        organ_sizes={"liver": 0.5, "hepatic tumor": 0.0},
    )
    assert (
        src.region == "abdomen" and src.volumes == {"liver": 1600.0} and src.radii == {"hepatic tumor": 6.0}
    )
    assert src.requested["liver"]["requested_ml"] == 1600.0
    a, b = src(0), src(0)
    assert np.array_equal(a.label, b.label) and not np.array_equal(a.label, src(1).label)
    assert phantom_region(("chest", "abdomen")) == "chest-abdomen" and phantom_region(("head",)) == "chest"


def test_size_vector_completion_takes_the_nearest_real_vector():
    real = np.array([[0.1] * 5 + [-1] * 5, [0.9] * 5 + [-1] * 5])
    vec, how = complete_size_vector({"liver": 0.8}, real)
    assert vec == [0.9, 0.8, 0.9, 0.9, 0.9, -1, -1, -1, -1, -1] and how == "nearest real size vector #1"
    vec, how = complete_size_vector({"hepatic tumor": 0.3})
    assert vec[7] == 0.3 and vec[1] == 0.5 and how.startswith("default")


# -- mask database -----------------------------------------------------------------------------------------------------


def test_database_index_retrieval_and_augmentation(tmp_path):
    from maisi.generation.masks import LabelReading

    ts = tmp_path / "ts"
    ts.mkdir()
    shutil.copy(DATA / "example_seg.nii.gz", ts / "ts.nii.gz")
    (ts / "broken.nii.gz").write_bytes(b"junk")
    path = index_masks(ts)  # auto: the TotalSegmentator map is told apart from evidence
    entries, root = load_index(ts)
    assert [e["pseudo_label_filename"] for e in entries] == ["ts.nii.gz"]
    assert json.loads(path.read_text())["skipped"][0]["file"] == "broken.nii.gz"
    assert entries[0]["vocabulary"] == "totalsegmentator-v2" and entries[0]["dim"] == [122, 101, 30]
    assert entries[0]["path"] == str((ts / "ts.nii.gz").resolve()) and root == ts.resolve()
    assert closeness(entries[0], (128, 96, 32), (3.0, 3.0, 3.0)) == pytest.approx(
        (18 + 15 + 6) / 10 + (6 + 5 + 2) / 100
    )
    with pytest.raises(FileExistsError):
        index_masks(ts)
    # MAISI masks (too small for auto-detection to have evidence: indexed as maisi)
    folder = tmp_path / "masks"
    folder.mkdir()
    liver = np.zeros((40, 40, 40), np.uint8)
    liver[5:35, 5:35, 5:35] = 1
    _write_label(folder / "liver.nii.gz", liver)
    liver[15:20, 15:20, 15:20] = 26
    _write_label(folder / "tumor.nii.gz", liver)
    index_masks(folder, reading=LabelReading("maisi"))
    # a tumour mask is retrieved only when the tumour is requested
    src = DatabaseMaskSource(
        folder, size=(64, 64, 64), spacing=(3.0, 3.0, 3.0), anatomy=("liver",), body_region=()
    )
    assert [c["pseudo_label_filename"] for c in src.candidates] == ["liver.nii.gz"]
    src = DatabaseMaskSource(folder, size=(64, 64, 64), spacing=(3.0, 3.0, 3.0), anatomy=("hepatic tumor",))
    s = src(0)
    record = s.info["tumor_augmentation"][0]
    assert s.label.shape == (64, 64, 64) and record["tumor"] == "hepatic tumor" and record["accepted"]
    assert record["survival"] >= 0.8 and np.count_nonzero(s.label == 26) == record["voxels_after"]
    with pytest.raises(RequestError, match="none of 2 indexed masks holds anatomy"):
        DatabaseMaskSource(folder, size=(64, 64, 64), spacing=(3.0, 3.0, 3.0), anatomy=("brain",))


def test_database_entries_must_stay_inside_the_database_folder(tmp_path):
    """An index naming a file outside its folder (``../``, an absolute path) is refused before any file is read."""
    secret = tmp_path / "secret.nii.gz"
    _write_label(secret, np.ones((8, 8, 8), np.uint8))
    db = tmp_path / "db"
    db.mkdir()
    for name in ("../secret.nii.gz", str(secret)):
        index = {
            "format": "maisi-mask-index",
            "version": 1,
            "root": ".",
            "masks": [{"pseudo_label_filename": name}],
        }
        (db / "masks_index.json").write_text(json.dumps(index))
        with pytest.raises(
            DataError, match=r"masks_index\.json: entry 0: .* lies outside the database folder"
        ):
            load_index(db)


def test_tumour_augmentation_keeps_the_tumour_inside_its_host():
    label = np.zeros((30, 30, 30), np.uint8)
    label[3:27, 3:27, 3:27] = 1
    label[10:14, 10:14, 10:14] = 26
    out, records = augment_tumors(label, np.random.default_rng(3))
    assert records[0]["accepted"]
    tumour = out == 26
    assert tumour.any() and np.all(label[tumour] > 0)  # inside the old liver
    assert set(np.unique(out).tolist()) == {0, 1, 26}
    assert np.count_nonzero(out > 0) == np.count_nonzero(label > 0)
