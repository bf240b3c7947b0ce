"""Full-reference image metrics on whole volumes: PSNR, SSIM and multi-scale SSIM (2D or 3D).

SSIM follows Wang et al. 2004 with a Gaussian window evaluated as separable 1D convolutions over the valid region
(no padding), i.e. exactly MONAI's ``SSIMMetric`` (dense ``kernel_size^d`` window) at ``d * kernel_size`` instead of
``kernel_size^d`` multiply-adds per voxel. MS-SSIM (Wang et al. 2003) multiplies the mean contrast-structure term of
the first ``M - 1`` scales and the SSIM of the last, each raised to its weight; the volume is halved (2x average
pooling) between scales, so it needs ``size >> (M - 1) >= kernel_size`` on every axis.

Inputs are numpy arrays or torch tensors of shape (X, Y[, Z]) — or (B, C, *spatial) tensors — in the same units as
``data_range`` (maisi evaluates CT in [0, 1]: :func:`maisi.data.intensity.ct_to_unit`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

#: Standard MS-SSIM scale weights (Wang et al. 2003).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_KERNEL_SIZE = 11
MS_SSIM_KERNEL_SIZE = 7
KERNEL_SIGMA = 1.5


def _as_batch(x: Any, spatial_dims: int | None) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x)
    t = t.detach().to("cpu", torch.float32) if t.device.type == "cpu" else t.detach().float()
    if spatial_dims is None:
        if t.ndim not in (2, 3):
            raise ValueError(
                f"expected a 2D or 3D array (or pass spatial_dims for a batch), got shape {tuple(t.shape)}"
            )
        return t[None, None]
    if t.ndim == spatial_dims:
        return t[None, None]
    if t.ndim != spatial_dims + 2:
        raise ValueError(
            f"expected (B, C, *{spatial_dims} spatial) or {spatial_dims}D input, got {tuple(t.shape)}"
        )
    return t


def _pair(x: Any, y: Any, spatial_dims: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_batch(x, spatial_dims), _as_batch(y, spatial_dims)
    if a.shape != b.shape:
        raise ValueError(f"volumes must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b.to(a.device)


def mse(x: Any, y: Any) -> float:
    """Mean squared error over all voxels (float64 accumulation)."""
    a, b = _pair(x, y, None if np.ndim(x) in (2, 3) else np.ndim(x) - 2)
    return float(((a.double() - b.double()) ** 2).mean())


def psnr(x: Any, y: Any, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio ``10 log10(data_range^2 / MSE)`` in dB; ``inf`` for identical inputs."""
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    err = mse(x, y)
    return math.inf if err == 0 else 10.0 * math.log10(data_range**2 / err)


def gaussian_kernel_1d(kernel_size: int, sigma: float, *, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised 1D Gaussian of ``kernel_size`` taps centred on the middle tap, shape (kernel_size,)."""
    if kernel_size < 1 or sigma <= 0:
        raise ValueError(f"kernel_size must be >= 1 and sigma > 0, got {kernel_size}, {sigma}")
    dist = torch.arange(kernel_size, dtype=torch.float64, device=device) - (kernel_size - 1) / 2
    g = torch.exp(-0.5 * (dist / sigma) ** 2)
    return (g / g.sum()).float()


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Valid separable filtering of (N, C, *spatial) along each spatial axis (shift-and-add: faster on CPU than
    convolutions with a 1D kernel)."""
    taps = kernel.tolist()
    k = len(taps)
    for axis in range(2, x.ndim):
        n = x.shape[axis] - k + 1
        acc = x.narrow(axis, 0, n) * taps[0]
        for i in range(1, k):
            acc.add_(x.narrow(axis, i, n), alpha=taps[i])
        x = acc
    return x


def _ssim_cs_maps(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    data_range: float,
    kernel_size: int,
    sigma: float,
    k1: float,
    k2: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-voxel SSIM and contrast-structure maps of (B, C, *spatial) inputs (valid region)."""
    bsz, ch = a.shape[:2]
    kernel = gaussian_kernel_1d(kernel_size, sigma, device=a.device)
    # filter the five moments in one batch: (5 * B * C, 1, *spatial)
    stack = torch.stack([a, b, a * a, b * b, a * b]).reshape(5 * bsz * ch, 1, *a.shape[2:])
    filtered = _filter(stack, kernel)
    mu_x, mu_y, m_xx, m_yy, m_xy = filtered.reshape(5, bsz, ch, *filtered.shape[2:])
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    var_x, var_y, cov = m_xx - mu_x * mu_x, m_yy - mu_y * mu_y, m_xy - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    ssim = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1) * cs
    return ssim, cs


def _check_size(shape: Sequence[int], kernel_size: int, what: str) -> None:
    if min(shape) < kernel_size:
        raise ValueError(
            f"{what}: every axis must be >= kernel_size {kernel_size}, got spatial shape {tuple(shape)}"
        )


def ssim(
    x: Any,
    y: Any,
    *,
    data_range: float = 1.0,
    kernel_size: int = SSIM_KERNEL_SIZE,
    kernel_sigma: float = KERNEL_SIGMA,
    k1: float = 0.01,
    k2: float = 0.03,
    spatial_dims: int | None = None,
) -> float:
    """Structural similarity of two volumes, mean over the valid region (and the batch).

    Args:
        x, y: (X, Y[, Z]) arrays, or (B, C, *spatial) tensors with ``spatial_dims`` given.
        data_range: value range (1.0 for CT scaled by ``ct_to_unit``).
        kernel_size, kernel_sigma: Gaussian window.

    Returns:
        SSIM in [-1, 1]; exactly 1.0 for identical inputs.
    """
    a, b = _pair(x, y, spatial_dims)
    _check_size(a.shape[2:], kernel_size, "ssim")
    s, _ = _ssim_cs_maps(
        a, b, data_range=data_range, kernel_size=kernel_size, sigma=kernel_sigma, k1=k1, k2=k2
    )
    return float(s.double().mean())


def ms_ssim_min_size(kernel_size: int = MS_SSIM_KERNEL_SIZE, scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """Smallest axis length MS-SSIM accepts: the coarsest scale must still hold one window."""
    return kernel_size * 2 ** (scales - 1)


def ms_ssim(
    x: Any,
    y: Any,
    *,
    data_range: float = 1.0,
    kernel_size: int = MS_SSIM_KERNEL_SIZE,
    kernel_sigma: float = KERNEL_SIGMA,
    weights: Sequence[float] = MS_SSIM_WEIGHTS,
    k1: float = 0.01,
    k2: float = 0.03,
    spatial_dims: int | None = None,
) -> float:
    """Multi-scale SSIM; raises ValueError when an axis is shorter than :func:`ms_ssim_min_size`.

    Negative contrast-structure means are clamped to 0 before the weighted product (as MONAI does).
    """
    a, b = _pair(x, y, spatial_dims)
    need = ms_ssim_min_size(kernel_size, len(weights))
    if min(a.shape[2:]) < need:
        raise ValueError(
            f"ms_ssim: {len(weights)} scales with kernel_size {kernel_size} need every axis >= {need}, "
            f"got spatial shape {tuple(a.shape[2:])}"
        )
    pool = (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d)[a.ndim - 3]
    values = []
    for i in range(len(weights)):
        s, cs = _ssim_cs_maps(
            a, b, data_range=data_range, kernel_size=kernel_size, sigma=kernel_sigma, k1=k1, k2=k2
        )
        values.append((s if i == len(weights) - 1 else cs).double().mean().clamp_min(0))
        if i < len(weights) - 1:
            a, b = pool(a, 2), pool(b, 2)
    w = torch.tensor(list(weights), dtype=torch.float64)
    return float(torch.prod(torch.stack(values) ** w))


def image_metrics(
    x: Any,
    y: Any,
    *,
    data_range: float = 1.0,
    ssim_kernel: int = SSIM_KERNEL_SIZE,
    ms_kernel: int = MS_SSIM_KERNEL_SIZE,
) -> dict[str, float | None]:
    """PSNR, SSIM and MS-SSIM (None where the volume is too small for it) of two (X, Y, Z) volumes."""
    shape = np.shape(x)
    out: dict[str, float | None] = {"psnr": psnr(x, y, data_range=data_range)}
    out["ssim"] = ssim(x, y, data_range=data_range, kernel_size=min(ssim_kernel, min(shape)))
    out["ms_ssim"] = (
        ms_ssim(x, y, data_range=data_range, kernel_size=ms_kernel)
        if min(shape) >= ms_ssim_min_size(ms_kernel)
        else None
    )
    return out
