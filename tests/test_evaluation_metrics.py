"""PSNR / SSIM / MS-SSIM: known answers and equivalence with MONAI's metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.metrics import MultiScaleSSIMMetric, SSIMMetric
from scipy import ndimage

from maisi.evaluation.metrics import image_metrics, ms_ssim, ms_ssim_min_size, psnr, ssim


def smooth_volume(shape, seed=0, lo=0.2, hi=0.8):
    r = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(r.standard_normal(shape), 2.0)
    v = (v - v.min()) / (v.max() - v.min())
    return (lo + (hi - lo) * v).astype(np.float32)


def test_identical_volumes_give_inf_psnr_and_unit_ssim():
    x = smooth_volume((32, 28, 24))
    assert psnr(x, x) == math.inf
    assert ssim(x, x) == 1.0
    assert ms_ssim(x, x, kernel_size=3, weights=(0.3, 0.3, 0.4)) == pytest.approx(1.0, abs=1e-12)
    assert image_metrics(x, x.copy())["psnr"] == math.inf


@pytest.mark.parametrize("sigma", [0.01, 0.03, 0.1])
def test_psnr_of_known_gaussian_noise(sigma):
    x = smooth_volume((40, 40, 32), seed=1)
    noise = np.random.default_rng(2).standard_normal(x.shape).astype(np.float32) * sigma
    expected = 10 * math.log10(1 / sigma**2)
    assert psnr(x, x + noise) == pytest.approx(expected, abs=0.2)
    # data_range scales PSNR by 20 log10(range)
    assert psnr(2 * x, 2 * (x + noise), data_range=2.0) == pytest.approx(psnr(x, x + noise), abs=1e-6)


def test_ssim_decreases_with_noise():
    x = smooth_volume((32, 32, 32), seed=3)
    r = np.random.default_rng(4)
    values = [ssim(x, x + s * r.standard_normal(x.shape).astype(np.float32)) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > values[0] > values[1] > values[2] > 0.0


@pytest.mark.parametrize("shape", [(40, 36, 30), (48, 44)])
def test_ssim_equals_monai(shape):
    r = np.random.default_rng(5)
    x = r.random(shape).astype(np.float32)
    y = np.clip(x + 0.1 * r.standard_normal(shape), 0, 1).astype(np.float32)
    ref = SSIMMetric(spatial_dims=len(shape), data_range=1.0, win_size=11)(
        torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]
    )
    assert ssim(x, y) == pytest.approx(float(ref), abs=2e-6)


def test_ms_ssim_equals_monai_2d():
    r = np.random.default_rng(6)
    x = smooth_volume((128, 120), seed=7)
    y = np.clip(x + 0.05 * r.standard_normal(x.shape), 0, 1).astype(np.float32)
    ref = MultiScaleSSIMMetric(spatial_dims=2, data_range=1.0, kernel_size=7)(
        torch.from_numpy(x)[None, None], torch.from_numpy(y)[None, None]
    )
    assert ms_ssim(x, y, kernel_size=7) == pytest.approx(float(ref), abs=1e-5)


def test_ms_ssim_needs_enough_voxels():
    x = smooth_volume((32, 32, 32))
    assert ms_ssim_min_size(7) == 112
    with pytest.raises(ValueError, match="need every axis >= 112"):
        ms_ssim(x, x)
    assert image_metrics(x, x)["ms_ssim"] is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)))
