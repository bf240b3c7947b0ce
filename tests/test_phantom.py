"""Tests of the procedural CT phantom (maisi.data.phantom)."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest

from maisi import labels as L
from maisi import resources
from maisi.data.phantom import CONTROLLABLE_ORGANS, make_phantom, write_phantoms
from maisi.errors import RequestError

# 384 x 320 x 480 mm: the whole trunk cross-section and most of the chest-abdomen range, in < 0.2 s
SMALL = dict(size=(96, 80, 96), spacing=(4.0, 4.0, 5.0))
STATS = resources.load_json("image_median_statistics_ct.json")
MEDIAN_GROUPS = {
    "liver": (1,),
    "spleen": (3,),
    "pancreas": (4,),
    "kidney": (5, 14),
    "lung": L.LUNG_LOBES,
    "bone": L.VERTEBRAE + L.RIBS,
}


@functools.lru_cache(maxsize=8)
def _small(seed):
    """Default-option phantom at the SMALL grid, shared by the tests that only read it."""
    return make_phantom(seed=seed, **SMALL)


def test_same_seed_same_bytes_and_different_seed_differs():
    a = _small(1)
    b = make_phantom(seed=1, **SMALL)
    c = _small(2)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.label.tobytes() == b.label.tobytes()
    assert json.dumps(a.params) == json.dumps(b.params)
    assert a.volumes_ml == b.volumes_ml
    assert np.count_nonzero(a.label != c.label) > 1000
    assert np.count_nonzero(a.image != c.image) > 100_000
    assert a.params["body"] != c.params["body"]


def test_arrays_dtypes_affine_and_label_ids():
    ph = _small(1)
    assert ph.image.shape == ph.label.shape == (96, 80, 96)
    assert ph.image.dtype == np.int16 and ph.label.dtype == np.uint8
    assert ph.spacing == (4.0, 4.0, 5.0)
    np.testing.assert_allclose(np.diag(ph.affine), [4.0, 4.0, 5.0, 1.0])
    centre = ph.affine @ np.array([95 / 2, 79 / 2, 95 / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)  # the volume is centred on world (0, 0, 0)
    ids = set(np.unique(ph.label).tolist())
    assert ids <= L.VALID_IDS
    L.check_ids(ids)
    assert {0, L.BODY, 1, 3, 4, 5, 6, 7, 10, 12, 14, 25, 62, 115, 121, 132} <= ids
    assert set(L.LUNG_LOBES) <= ids
    assert len(ids & set(L.RIBS)) >= 20 and len(ids & set(L.VERTEBRAE)) >= 15
    assert np.all(ph.image[ph.label == 0] == -1000)  # air outside the body
    vox = 4 * 4 * 5 / 1000.0
    assert ph.volumes_ml["liver"] == pytest.approx(np.count_nonzero(ph.label == 1) * vox, abs=1e-3)
    json.dumps(ph.params)  # JSON-serialisable


def test_body_has_fat_and_muscle_layers():
    ph = _small(2)
    body = ph.image[ph.label == L.BODY].astype(np.float64)
    fat = np.count_nonzero((body > -150) & (body < -60))
    muscle = np.count_nonzero((body > 20) & (body < 90))
    assert fat > 0.1 * body.size and muscle > 0.1 * body.size
    # the skin line: first body voxel along +Y (posterior to anterior) at mid-slice is fat, not muscle
    x, z = 48, 48
    column = ph.label[x, :, z]
    first = int(np.argmax(column == L.BODY))
    assert -160 < ph.image[x, first + 1, z] < -40


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_organ_medians_inside_reference_statistics(seed):
    ph = _small(seed)
    for group, ids in MEDIAN_GROUPS.items():
        values = ph.image[np.isin(ph.label, ids)]
        assert values.size > 50, group
        median = float(np.median(values))
        assert STATS[group]["sigma_6_low"] <= median <= STATS[group]["sigma_6_high"], (group, median)
    lung = float(np.median(ph.image[np.isin(ph.label, L.LUNG_LOBES)]))
    assert -900 <= lung <= -800
    bone = float(np.median(ph.image[np.isin(ph.label, L.VERTEBRAE + L.RIBS)]))
    assert 150 <= bone <= 470


def test_requested_volume_is_realised():
    request = {"liver": 1500.0, "spleen": 260.0, "right kidney": 175.0, "stomach": 420.0}
    ph = make_phantom(seed=3, organ_volumes_ml=request, **SMALL)
    voxel = 4 * 4 * 5 / 1000.0
    for name, ml in request.items():
        assert abs(ph.volumes_ml[name] - ml) <= 0.05 * ml
        assert abs(ph.volumes_ml[name] - ml) <= 2 * voxel  # exact to the voxel when the organ is in view
        assert ph.params["organs"][name]["volume_ml"] == ml


def test_organ_scale_scales_volume():
    base = _small(3)
    big = make_phantom(seed=3, organ_scale={"liver": 1.2, "gallbladder": 0.5}, **SMALL)
    assert big.volumes_ml["liver"] / base.volumes_ml["liver"] == pytest.approx(1.2, rel=0.01)
    assert big.volumes_ml["gallbladder"] / base.volumes_ml["gallbladder"] == pytest.approx(0.5, rel=0.05)
    assert big.params["organs"]["liver"]["volume_ml"] == pytest.approx(
        1.2 * base.params["organs"]["liver"]["volume_ml"], rel=1e-4
    )


def test_same_seed_same_anatomy_at_other_spacing():
    fine = make_phantom(seed=0, size=(128, 107, 128), spacing=(3.0, 3.0, 3.75))
    coarse = _small(0)
    assert fine.params["organs"] == coarse.params["organs"]
    for name in ("liver", "spleen", "heart", "right kidney"):
        assert fine.volumes_ml[name] == pytest.approx(coarse.volumes_ml[name], rel=0.02), name
        c_fine = _centroid_mm(fine, L.id_of(name))
        c_coarse = _centroid_mm(coarse, L.id_of(name))
        assert np.linalg.norm(c_fine - c_coarse) < 3.0, name


def test_cropped_field_of_view_shows_the_same_anatomy():
    # 192 mm cube cut from a full-body field of view on the same lattice (centres differ by whole voxels):
    # organs truncated by the small field of view keep their shape instead of regrowing inside it
    crop = make_phantom(seed=2, size=(48, 48, 48), spacing=(4.0, 4.0, 4.0), noise_hu=0.0)
    full = make_phantom(seed=2, size=(100, 82, 150), spacing=(4.0, 4.0, 4.0), noise_hu=0.0)
    window = full.label[26:74, 17:65, 51:99]
    assert np.mean(crop.label == window) > 0.99
    for name in ("liver", "stomach", "colon"):
        a, b = crop.label == L.id_of(name), window == L.id_of(name)
        assert a.sum() > 0 and 2 * np.sum(a & b) / (a.sum() + b.sum()) > 0.97, name
    # the texture is fixed in body millimetres: identical HU wherever both show the same body soft tissue
    same = (crop.label == window) & (window == L.BODY)
    assert same.sum() > 10_000
    np.testing.assert_array_equal(crop.image[same], full.image[26:74, 17:65, 51:99][same])


def _centroid_mm(ph, label_id):
    idx = np.argwhere(ph.label == label_id).mean(axis=0)
    return ph.affine[:3, :3] @ idx + ph.affine[:3, 3]


def test_tumors_lie_inside_their_hosts():
    radii = {
        "lung tumor": 10.0,
        "hepatic tumor": 14.0,
        "pancreatic tumor": 9.0,
        "colon cancer primaries": 10.0,
        "bone lesion": 7.0,
    }
    ph = make_phantom(seed=11, tumors=radii, **SMALL)
    # host-tumour pairs whose host volume is held fixed: enlarge the tumour-free host by more than the tumour,
    # so its envelope contains the tumour phantom's envelope ("tumour voxels were host voxels before")
    hosts = {"hepatic tumor": "liver", "pancreatic tumor": "pancreas", "colon cancer primaries": "colon"}
    scale = {h: 1.0 + 3.0 * ph.volumes_ml[t] / ph.volumes_ml[h] for t, h in hosts.items()}
    ref = make_phantom(seed=11, tumors={}, organ_scale=scale, **SMALL)
    assert not set(L.TUMORS.values()) & set(np.unique(ref.label).tolist())
    for name, r in radii.items():
        tid = L.TUMORS[name]
        mask = ph.label == tid
        sphere_ml = 4.0 / 3.0 * np.pi * r**3 / 1000.0
        assert 0.2 * sphere_ml < ph.volumes_ml[name] < 1.3 * sphere_ml, name
        host_ids = L.TUMOR_HOSTS[tid] + ((25,) if tid == 26 else ())  # hepatic vessels lie inside the liver
        assert np.isin(ref.label[mask], host_ids).mean() >= 0.95, name


def test_random_and_disabled_tumors():
    tiny = dict(size=(12, 10, 12), spacing=(32.0, 32.0, 40.0))  # the draw does not depend on the grid
    assert not any(k in L.TUMORS for k in make_phantom(seed=0, tumors={}, **tiny).volumes_ml)
    drawn = [set(make_phantom(seed=s, **tiny).params["tumors"]) for s in range(8)]
    assert any(drawn) and not all(d == drawn[0] for d in drawn)
    assert set(_small(1).params["tumors"]) == drawn[1]


@pytest.mark.parametrize(
    ("region", "present", "absent"),
    [
        ("chest", {28, 30, 115}, {5, 14, 4, 62}),
        ("abdomen", {1, 5, 14, 4}, {49}),
        ("chest-abdomen", {28, 30, 115, 1, 5, 14}, set()),
    ],
)
def test_region_coverage(region, present, absent):
    ph = make_phantom(seed=1, region=region, size=(64, 56, 96), spacing=(6.0, 6.0, 7.0))
    ids = set(np.unique(ph.label).tolist())
    assert present <= ids and not (absent & ids)
    lo, hi = ph.params["scan_z_mm"]
    z = (np.arange(96) - 95 / 2) * 7.0 + ph.params["fov_center_mm"][2]
    outside = (z < lo) | (z > hi)
    assert outside.any()  # 672 mm of z: longer than any region, the rest is air
    assert np.all(ph.label[:, :, outside] == 0) and np.all(ph.image[:, :, outside] == -1000)
    assert ph.label[:, :, ~outside].any(axis=(0, 1)).all()


def test_non_cubic_size_and_anisotropic_spacing():
    ph = make_phantom(seed=2, size=(70, 52, 33), spacing=(3.2, 4.1, 7.5), region="abdomen", noise_hu=0.0)
    assert ph.image.shape == (70, 52, 33)
    np.testing.assert_allclose(np.diag(ph.affine)[:3], [3.2, 4.1, 7.5])
    assert {1, 5, 14} <= set(np.unique(ph.label).tolist())
    liver = ph.image[ph.label == 1]
    assert abs(float(np.median(liver)) - ph.params["hu"]["liver"]) < 25


def test_write_phantoms(tmp_path):
    from maisi.data.datalist import read_datalist
    from maisi.data.nifti import load_nifti
    from maisi.io import OutputExistsError

    kw = dict(size=(40, 32, 36), spacing=(10.0, 10.0, 14.0), region="chest-abdomen")
    entries = write_phantoms(num=2, output_dir=tmp_path, seed=7, **kw)
    assert [e["image"] for e in entries] == ["phantom_0000_image.nii.gz", "phantom_0001_image.nii.gz"]
    listed = read_datalist(tmp_path / "datalist.json")
    assert len(listed) == 2
    for i, e in enumerate(listed):
        assert e["dim"] == [40, 32, 36] and e["spacing"] == [10.0, 10.0, 14.0]
        assert e["modality"] == "ct" and e["fold"] == 0
        assert e["top_region_index"] == [0, 1, 0, 0] and e["bottom_region_index"] == [0, 0, 1, 0]
        image, label = load_nifti(e["image"]), load_nifti(e["label"], kind="label")
        ref = make_phantom(seed=[7, i], **kw)
        np.testing.assert_array_equal(image.array, ref.image)
        np.testing.assert_array_equal(label.array, ref.label)
        np.testing.assert_allclose(image.affine, ref.affine)
        meta = json.loads((tmp_path / f"phantom_{i:04d}_meta.json").read_text())
        assert meta["volumes_ml"] == ref.volumes_ml and meta["params"]["seed"] == [7, i]
    with pytest.raises(OutputExistsError, match="phantom_0000_image"):
        write_phantoms(num=2, output_dir=tmp_path, seed=7, **kw)
    assert len(write_phantoms(num=1, output_dir=tmp_path, seed=8, overwrite=True, **kw)) == 1


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"region": "head"}, "region"),
        ({"size": (64, 64)}, "size"),
        ({"spacing": (1.0, 0.0, 1.0)}, "spacing"),
        ({"seed": -1}, "seed"),
        ({"organ_volumes_ml": {"brain": 1200.0}}, "organ_volumes_ml: unknown name 'brain'"),
        ({"organ_volumes_ml": {"liver": -5.0}}, "liver"),
        ({"organ_scale": {"liver": 1.1}, "organ_volumes_ml": {"liver": 1500.0}}, "both set"),
        ({"tumors": {"brain tumor": 5.0}}, "tumors: unknown name"),
        ({"noise_hu": -1.0}, "noise_hu"),
        ({"supersample": 0}, "supersample"),
        ({"supersample": 2.0}, "supersample"),
    ],
)
def test_invalid_requests(kwargs, match):
    with pytest.raises(RequestError, match=match):
        make_phantom(**{**SMALL, **kwargs})


def test_controllable_organs_cover_the_size_slots():
    assert {"liver", "gallbladder", "stomach", "pancreas", "colon"} <= set(CONTROLLABLE_ORGANS)


def test_supersampled_phantom_has_partial_volume_edges():
    """``supersample=3`` averages sub-voxels: same labels and organ intensities, ramps instead of steps at edges."""
    sharp = _small(1)
    soft = make_phantom(seed=1, supersample=3, **SMALL)
    assert soft.label.tobytes() == sharp.label.tobytes()  # labels stay on the requested lattice
    assert soft.volumes_ml == sharp.volumes_ml and soft.params["supersample"] == 3
    air = sharp.label == 0
    far_air = air.copy()
    for axis in range(3):  # air at least two voxels away from the body on every axis
        far_air &= np.roll(air, 2, axis) & np.roll(air, -2, axis)
    assert (soft.image[far_air] == -1000).all()
    for group in ("liver", "spleen", "kidney"):
        mask = np.isin(sharp.label, MEDIAN_GROUPS[group])
        assert abs(np.median(soft.image[mask]) - np.median(sharp.image[mask])) < 15, group
    # the skin: the body's outermost voxels are mixed with air in the supersampled image only
    body = sharp.label != 0
    skin = body & ~(np.roll(body, 1, 0) & np.roll(body, -1, 0) & np.roll(body, 1, 1) & np.roll(body, -1, 1))
    outside = ~body & (
        np.roll(body, 1, 0) | np.roll(body, -1, 0) | np.roll(body, 1, 1) | np.roll(body, -1, 1)
    )
    assert (sharp.image[outside] == -1000).all()
    assert np.mean(soft.image[outside] > -950) > 0.3  # air voxels the body partly fills
    assert np.median(soft.image[skin]) < np.median(sharp.image[skin]) - 30  # skin voxels partly air
    a = make_phantom(seed=1, supersample=2, size=(32, 32, 32), spacing=(6.0, 6.0, 6.0))
    b = make_phantom(seed=1, supersample=2, size=(32, 32, 32), spacing=(6.0, 6.0, 6.0))
    assert a.image.tobytes() == b.image.tobytes()
