from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from maisi.data.intensity import ct_to_unit, mri_to_unit, unit_to_ct, unit_to_mri
from maisi.data.nifti import load_nifti

DATA = Path(__file__).parent / "data"


def test_ct_window_endpoints_and_clipping():
    hu = np.array([-3000.0, -1000.0, 0.0, 500.0, 1000.0, 3000.0])
    np.testing.assert_allclose(ct_to_unit(hu), [0.0, 0.0, 0.5, 0.75, 1.0, 1.0])
    assert ct_to_unit(hu).dtype == np.float32
    np.testing.assert_allclose(unit_to_ct(np.array([0.0, 0.25, 1.0, 1.5])), [-1000.0, -500.0, 1000.0, 1000.0])


def test_ct_round_trip_on_real_volume():
    hu = load_nifti(DATA / "example_ct_sm.nii.gz").array
    back = unit_to_ct(ct_to_unit(hu))
    inside = (hu >= -1000) & (hu <= 1000)
    assert inside.mean() > 0.9
    np.testing.assert_allclose(back[inside], hu[inside], atol=1e-3)
    np.testing.assert_array_equal(back[hu < -1000], -1000.0)
    np.testing.assert_array_equal(back[hu > 1000], 1000.0)


def test_ct_torch_matches_numpy_and_keeps_dtype():
    hu = np.linspace(-1500, 1500, 101, dtype=np.float32)
    t = ct_to_unit(torch.from_numpy(hu).double())
    assert t.dtype == torch.float64
    np.testing.assert_allclose(t.numpy(), ct_to_unit(hu), atol=1e-6)
    np.testing.assert_allclose(unit_to_ct(t).numpy(), np.clip(hu, -1000, 1000), atol=1e-3)


def test_mri_percentiles_and_inverse():
    mr = load_nifti(DATA / "example_mr_sm.nii.gz").array
    clipped, (lo, hi) = mri_to_unit(mr, clip=True)
    assert lo == pytest.approx(float(mr.min()))
    assert hi == pytest.approx(float(np.percentile(mr, 99.5)))
    assert float(clipped.min()) == 0.0 and float(clipped.max()) == 1.0
    # 99.5 % of voxels are at or below the upper percentile and invert exactly even when clipped
    below = mr <= hi
    assert below.mean() >= 0.995
    np.testing.assert_allclose(unit_to_mri(clipped, lo, hi)[below], mr[below], rtol=1e-5, atol=1e-2)
    # the default is the official transform's: not clipped, the brightest voxels above 1, every voxel inverts
    raw, lohi = mri_to_unit(mr)
    assert lohi == (lo, hi)
    np.testing.assert_allclose(unit_to_mri(raw, lo, hi), mr, rtol=1e-5, atol=1e-2)
    assert float(raw.max()) == pytest.approx((float(mr.max()) - lo) / (hi - lo), rel=1e-5) and raw.max() > 1.0


def test_mri_torch_and_constant_image():
    x = torch.arange(1000, dtype=torch.float32)
    unit, (lo, hi) = mri_to_unit(x, upper_percentile=100.0)
    assert (lo, hi) == (0.0, 999.0)
    torch.testing.assert_close(unit, x / 999.0)
    const, (lo, hi) = mri_to_unit(np.full((3, 3), 7.0))
    assert (lo, hi) == (7.0, 8.0)
    np.testing.assert_array_equal(const, 0.0)
    with pytest.raises(ValueError, match="lower_percentile"):
        mri_to_unit(x, lower_percentile=50, upper_percentile=10)
