from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from maisi import labels
from maisi.data.body import (
    add_body_from_label,
    add_body_label,
    block_any,
    block_expand,
    body_mask_from_ct,
    body_mask_from_label,
    coarse_factors,
    dilate,
    erode,
    opening,
)
from maisi.data.label_mapping import LabelMapping
from maisi.data.nifti import load_pair
from maisi.data.prepare import resample

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def ct_pair():
    image, seg = load_pair(DATA / "example_ct_sm.nii.gz", DATA / "example_seg.nii.gz")
    return image, seg, body_mask_from_ct(image.array, image.spacing)


def _outside_air(hu: np.ndarray) -> np.ndarray:
    """Air (< -900 HU) connected to the in-plane border of its axial slice (air reached through the top or
    bottom slice may be lung or bowel gas, so 3D connectivity to the border is not used)."""
    out = np.zeros(hu.shape, dtype=bool)
    for k in range(hu.shape[2]):
        lab, _ = ndi.label(hu[:, :, k] < -900)
        edge = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
        out[:, :, k] = np.isin(lab, edge[edge > 0])
    return out


def test_body_contains_labelled_voxels_and_lungs(ct_pair):
    image, seg, body = ct_pair
    labelled = seg.array > 0
    coverage = (body & labelled).sum() / labelled.sum()
    assert coverage >= 0.99
    lungs = np.isin(seg.array, [10, 11, 12, 13, 14])  # TotalSegmentator lung lobes: air inside the body
    assert lungs.sum() > 4000
    assert body[lungs].all()
    assert 0.3 < body.mean() < 0.8


def test_body_excludes_outside_air_and_corners(ct_pair):
    image, _, body = ct_pair
    outside = _outside_air(image.array)
    assert outside.sum() > 100_000
    assert not (body & outside).any()
    for corner in np.ndindex(2, 2, 2):
        idx = tuple(c * (n - 1) for c, n in zip(corner, body.shape))
        assert not body[idx]


def test_body_drops_the_scanner_table(ct_pair):
    image, _, body = ct_pair
    # the table shell and gantry arcs lie behind the patient: tissue in the 4 most posterior rows (y grows
    # towards anterior in RAS), and in every slice tissue that is not body
    table = image.array[:, :4, :] > -500
    assert table.sum() > 1000
    assert not body[:, :4, :].any()
    assert ((image.array > -500) & ~body).sum() > 3000


def test_synthetic_phantom_with_touching_table():
    spacing = (2.0, 2.0, 4.0)
    x, y = np.meshgrid(np.arange(64), np.arange(64), indexing="ij")
    trunk = ((x - 32) / 24) ** 2 + ((y - 34) / 16) ** 2 <= 1  # 96 x 64 mm ellipse, back at y = 18
    lungs = (((x - 23) / 5) ** 2 + ((y - 36) / 6) ** 2 <= 1) | (
        ((x - 41) / 5) ** 2 + ((y - 36) / 6) ** 2 <= 1
    )
    hu = np.full((64, 64, 8), -1000.0)
    hu[trunk] = 40.0
    hu[lungs] = -850.0
    hu[4:60, 14:16, :] = 200.0  # a 4 mm table plate 2 voxels behind the back...
    hu[30:33, 16:18, :] = 200.0  # ...touching it through a 6 mm wide strut
    assert lungs.sum() > 150
    body = body_mask_from_ct(hu, spacing)
    assert body[trunk].all()  # lungs included
    # the plate is dropped except within one opening radius (6 mm = 3 voxels) of the body, at the strut
    assert not body[:28, 14:16, :].any() and not body[35:, 14:16, :].any()
    plate_and_strut = (hu > -500) & ~trunk[..., None]
    assert plate_and_strut.sum() == (56 * 2 + 3 * 2) * 8
    assert (body & plate_and_strut).sum() <= 10 * 8


def test_add_body_label_and_label_fallback(ct_pair):
    image, seg, body = ct_pair
    maisi = LabelMapping.from_totalsegmentator().apply(seg.array)
    out = add_body_label(maisi, image.array, image.spacing)
    np.testing.assert_array_equal(out[maisi > 0], maisi[maisi > 0])
    np.testing.assert_array_equal(out == labels.BODY, body & (maisi == 0))
    again = add_body_label(out, np.full(image.shape, -1000.0), image.spacing)  # 200 present: unchanged
    np.testing.assert_array_equal(again, out)

    rough = body_mask_from_label(maisi, image.spacing)
    assert rough[maisi > 0].all()
    assert (rough & body).sum() / rough.sum() > 0.9  # mostly inside the true body
    assert rough.sum() > 1.3 * (maisi > 0).sum()  # gaps between organs are filled
    fallback = add_body_from_label(maisi, image.spacing)
    np.testing.assert_array_equal(fallback == labels.BODY, rough & (maisi == 0))


def test_erode_dilate_use_a_physical_ball():
    mask = np.zeros((21, 21, 11), bool)
    mask[10, 10, 5] = True
    grown = dilate(mask, 6.0, (3.0, 3.0, 1.5))
    # lattice points with (3i)^2 + (3j)^2 + (1.5k)^2 <= 36: 9 + 4*7 + 4*5 + 4*1
    assert grown.sum() == 61
    xs, ys, zs = np.nonzero(grown)
    assert (xs.min(), xs.max(), zs.min(), zs.max()) == (8, 12, 1, 9)  # +-2 voxels of 3 mm, +-4 of 1.5 mm
    assert not grown[8, 8, 5]  # (6, 6) mm from the centre is outside a 6 mm ball
    shrunk = erode(grown, 6.0, (3.0, 3.0, 1.5))
    assert shrunk.sum() == 1 and shrunk[10, 10, 5]
    assert erode(np.ones((4, 4, 4), bool), 100.0, (1, 1, 1)).all()
    slab = np.zeros((9, 9, 9), bool)
    slab[:, 3:6, :] = True  # 3 voxels = 6 mm thick: gone after an opening of radius 4 mm
    assert not opening(slab, 4.0, (2.0, 2.0, 2.0)).any()
    assert opening(slab, 2.0, (2.0, 2.0, 2.0)).sum() == slab.sum()


def test_fine_scan_uses_blocks_and_agrees_with_coarse(ct_pair):
    image, _, body = ct_pair
    fine = resample(image, (1.0, 1.0, 3.0), order=1)
    assert coarse_factors(fine.spacing) == (2, 2, 1)
    fine_body = body_mask_from_ct(fine.array, fine.spacing)
    back = fine_body[1::3, 1::3, :]  # fine voxel 3i+1 has the centre of coarse voxel i
    assert back.shape == body.shape
    assert (back == body).mean() > 0.99
    mask = np.zeros((5, 4, 3), bool)
    mask[4, 3, 2] = True
    blocks = block_any(mask, (2, 2, 1))
    assert blocks.shape == (3, 2, 3) and blocks.sum() == 1 and blocks[2, 1, 2]
    expanded = block_expand(blocks, (2, 2, 1), mask.shape)
    assert expanded.shape == mask.shape and expanded.sum() == 2 and expanded[4, 2:4, 2].all()  # cropped block
