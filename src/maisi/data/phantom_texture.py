"""CT intensities of the phantom: tissue HU, smooth texture fixed in body millimetres, scanner-like noise."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from maisi.data.phantom_anatomy import TISSUE_IDS, TISSUES
from maisi.data.phantom_raster import Canvas

#: Body-frame box (mm) of the texture lattice; its values depend only on the seed, never on the voxel grid.
TEXTURE_BOX = ((-264.0, -280.0, -480.0), (264.0, 240.0, 560.0))
CELL_MM = 8.0
#: The coarse octave is the lattice smoothed by a Gaussian of this many cells.
COARSE_SIGMA_CELLS = 2.0
AIR_HU = -1000.0
HU_RANGE = (-1024.0, 3071.0)


def texture(seq: np.random.SeedSequence, canvas: Canvas, fine_mask: np.ndarray | None = None):
    """Smooth random fields of about unit variance on the canvas voxels.

    Gaussian values sit on a fixed body-frame lattice of pitch :data:`CELL_MM`, one generator per lattice
    plane (so only the planes in view are drawn); a Gaussian-smoothed copy adds a coarse octave. The lattice
    is interpolated with cubic B-splines one axis at a time (three matrix products), so the field is the
    same physical pattern at any spacing or field of view.

    Args:
        seq: seed sequence of the texture.
        canvas: the painted canvas (its coordinates are used).
        fine_mask: optional (X, Y, Z) bool mask where the fine octave alone is wanted too.

    Returns:
        The (X, Y, Z) float32 two-octave field and the fine-only values at ``fine_mask`` (1D, or None).
    """
    lo, hi = TEXTURE_BOX
    counts = [int(math.ceil((h - lo_) / CELL_MM)) + 1 for lo_, h in zip(lo, hi)]
    mats, ranges = [], []
    for coords, lo_, n in zip((canvas.xs, canvas.ys, canvas.zs), lo, counts):
        w, j0, j1 = _bspline_matrix(coords, lo_, CELL_MM, n)
        mats.append(w)
        ranges.append((j0, j1))
    pad = int(math.ceil(4 * COARSE_SIGMA_CELLS))
    k0, k1 = max(0, ranges[2][0] - pad), min(counts[2], ranges[2][1] + pad)
    planes = seq.spawn(counts[2])
    g = np.stack(
        [
            np.random.default_rng(planes[k]).standard_normal(counts[:2], dtype=np.float32)
            for k in range(k0, k1)
        ],
        axis=2,
    )
    coarse = ndimage.gaussian_filter(g, COARSE_SIGMA_CELLS, mode="nearest", truncate=4.0)
    coarse /= np.float32(_gaussian_std(COARSE_SIGMA_CELLS))
    (x0, x1), (y0, y1), (z0, z1) = ranges
    g = g[x0:x1, y0:y1, z0 - k0 : z1 - k0]
    mixed = _interpolate(0.6 * g + 0.8 * coarse[x0:x1, y0:y1, z0 - k0 : z1 - k0], mats)
    fine = None
    if fine_mask is not None and fine_mask.any():
        box = tuple(_extent(fine_mask.any(axis=tuple(b for b in range(3) if b != a))) for a in range(3))
        sub = _interpolate(g, [m[s] for m, s in zip(mats, box)])
        fine = sub[fine_mask[box]]
    return mixed, fine


def _extent(flags: np.ndarray) -> slice:
    idx = np.flatnonzero(flags)
    return slice(int(idx[0]), int(idx[-1]) + 1)


def _interpolate(g: np.ndarray, mats) -> np.ndarray:
    """Apply the per-axis weight matrices to lattice values: (Lx, Ly, Lz) -> (nx, ny, nz)."""
    wx, wy, wz = mats
    (nx, lx), (ny, ly), (nz, lz) = wx.shape, wy.shape, wz.shape
    # 2D BLAS products only (a stacked matmul on a strided view falls back to a slow loop)
    h = np.ascontiguousarray(g, dtype=np.float32).reshape(lx * ly, lz) @ wz.T  # (Lx Ly, nz)
    h = h.reshape(lx, ly, nz).transpose(1, 0, 2).reshape(ly, lx * nz)
    h = (wy @ h).reshape(ny, lx, nz).transpose(1, 0, 2).reshape(lx, ny * nz)
    return (wx @ h).reshape(nx, ny, nz)


def _gaussian_std(sigma: float) -> float:
    """Standard deviation of white unit noise after a 3D Gaussian filter (truncated at 4 sigma)."""
    r = int(4.0 * sigma + 0.5)
    w = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    w /= w.sum()
    return float(np.sum(w * w) ** 1.5)


def _bspline_matrix(coords: np.ndarray, lo: float, cell: float, n: int) -> tuple[np.ndarray, int, int]:
    """Rows of cubic B-spline weights (unit L2 norm, so white lattice noise stays unit variance) and the knot
    range they use."""
    u = (coords.astype(np.float64) - lo) / cell
    i = np.floor(u)
    f = u - i
    w = (
        np.stack([(1 - f) ** 3, 3 * f**3 - 6 * f**2 + 4, -3 * f**3 + 3 * f**2 + 3 * f + 1, f**3], axis=1)
        / 6.0
    )
    idx = np.clip(i[:, None].astype(np.int64) + np.arange(-1, 3)[None, :], 0, n - 1)
    j0, j1 = int(idx.min()), int(idx.max()) + 1
    mat = np.zeros((len(coords), j1 - j0))
    np.add.at(mat, (np.repeat(np.arange(len(coords)), 4), (idx - j0).ravel()), w.ravel())
    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    return mat.astype(np.float32), j0, j1


def render_hu(
    canvas: Canvas,
    hu: dict[str, float],
    *,
    texture_seq: np.random.SeedSequence,
    noise_rng: np.random.Generator,
    noise_hu: float,
    fine: Canvas | None = None,
) -> np.ndarray:
    """CT image (int16 HU, (X, Y, Z)) of a painted canvas.

    Each voxel gets its tissue's HU plus the smooth texture scaled by the tissue's amplitude; lung gets bright
    vessel-like blobs where the texture peaks. Scanner noise is Gaussian, ``noise_hu`` standard deviation per
    voxel, correlated in-plane by a [1, 2, 1] kernel along X and Y (rescaled to keep its standard deviation).
    Air (outside the body, and slices outside the scan range) is exactly -1000 HU.

    With ``fine`` (the same anatomy painted on a lattice ``k`` times finer along each axis, covering the same
    voxels), the noise-free image is rendered on it and averaged over each voxel's ``k^3`` sub-voxels: the partial
    volume effect of a real scanner's voxel, so edges are ramps rather than steps. Noise is then added per voxel.
    """
    if fine is None:
        img = _tissue_hu(canvas, hu, texture_seq)
    else:
        k = fine.tissue.shape[0] // canvas.tissue.shape[0]
        if tuple(n * k for n in canvas.tissue.shape) != fine.tissue.shape:
            raise ValueError(f"fine canvas {fine.tissue.shape} is not {k}x the canvas {canvas.tissue.shape}")
        sub = _tissue_hu(fine, hu, texture_seq)
        x, y, z = canvas.tissue.shape
        img = sub.reshape(x, k, y, k, z, k).mean(axis=(1, 3, 5), dtype=np.float32)
    if noise_hu > 0:
        names = list(TISSUES)
        noise = _correlated_noise(noise_rng, canvas.tissue.shape)
        level = np.full(len(names), noise_hu, dtype=np.float32)
        level[TISSUE_IDS["air"]] = 0.0  # air stays exactly -1000 HU
        noise *= level[canvas.tissue]
        img += noise
    np.clip(img, *HU_RANGE, out=img)
    return np.rint(img, out=img).astype(np.int16)


def _tissue_hu(canvas: Canvas, hu: dict[str, float], texture_seq: np.random.SeedSequence) -> np.ndarray:
    """Noise-free float32 HU of a canvas: tissue HU, texture and lung vessels."""
    names = list(TISSUES)
    base = np.array([hu[n] for n in names], dtype=np.float32)
    amp = np.array([TISSUES[n][2] for n in names], dtype=np.float32)
    tissue = canvas.tissue
    lung = tissue == TISSUE_IDS["lung"]
    tex, fine = texture(texture_seq, canvas, fine_mask=lung)
    tex *= amp[tissue]
    tex += base[tissue]
    if fine is not None:  # vessel-like dots where the fine octave peaks (about 5% of lung)
        tex[lung] += np.clip((fine - 1.7) * 2.0, 0.0, 1.0) * np.float32(600.0)
    return tex


def _correlated_noise(rng: np.random.Generator, shape) -> np.ndarray:
    """White Gaussian noise smoothed in-plane by [1, 2, 1] / 4 along X and Y, rescaled to unit variance."""
    n = rng.standard_normal(shape, dtype=np.float32)
    gain = 1.0
    q, h = np.float32(0.25), np.float32(0.5)
    for axis in (0, 1):
        if shape[axis] < 3:
            continue
        a = np.moveaxis(n, axis, 0)
        m = a * h
        m[1:] += a[:-1] * q
        m[:-1] += a[1:] * q
        m[0] += a[0] * q  # edges repeat the border voxel
        m[-1] += a[-1] * q
        n = np.moveaxis(m, 0, axis)
        gain *= 4.0 / math.sqrt(6.0)  # a [1, 2, 1] / 4 pass scales the standard deviation by sqrt(6) / 4
    n *= np.float32(gain)
    return n
