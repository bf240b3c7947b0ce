"""Fitting a label map onto a generation grid: nearest-neighbour resampling, centred pad/crop, affines.

Arrays are (X, Y, Z) in RAS. Resampling keeps voxel centres aligned with the volume's extent (voxel ``i`` of the
new grid samples the old continuous index ``(i + 0.5) * new / old - 0.5``), as MONAI's ``Spacing`` does for an
axis-aligned affine; pad/crop is centred, as MONAI's ``ResizeWithPadOrCrop``. Every function returns the new
affine so each voxel keeps its world position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from maisi.generation.request import SPACING_XY_MM, SPACING_Z_MM, nearest_size


def spacing_affine(spacing: Sequence[float], size: Sequence[int] | None = None) -> np.ndarray:
    """RAS affine of a generated volume: diagonal ``spacing``; with ``size`` the volume is centred on the origin."""
    affine = np.diag([*map(float, spacing), 1.0])
    if size is not None:
        affine[:3, 3] = [-(n - 1) / 2.0 * s for n, s in zip(size, spacing)]
    return affine


def resample_nearest(
    label: np.ndarray, affine: np.ndarray, spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour resampling of a label map from ``spacing`` to ``new_spacing`` (mm, per axis).

    The extent is kept: the new size per axis is ``round(n * spacing / new_spacing)`` (at least 1).

    Returns:
        The resampled map (same dtype) and its affine.
    """
    label = np.asarray(label)
    ratio = [float(n) / float(o) for n, o in zip(new_spacing, spacing)]
    if all(abs(r - 1.0) < 1e-9 for r in ratio):
        return label, np.asarray(affine, dtype=np.float64).copy()
    index = []
    for n, r in zip(label.shape, ratio):
        m = max(1, int(round(n / r)))
        src = np.floor((np.arange(m) + 0.5) * r).astype(np.int64)  # nearest old voxel to each new centre
        index.append(np.clip(src, 0, n - 1))
    out = label[np.ix_(*index)]
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    new_affine[:3, :3] = new_affine[:3, :3] * np.asarray(ratio)[None, :]
    # new voxel 0 sits at old continuous index 0.5 * r - 0.5
    new_affine[:3, 3] = affine[:3, 3] + np.asarray(affine)[:3, :3] @ (0.5 * np.asarray(ratio) - 0.5)
    return np.ascontiguousarray(out), new_affine


def pad_or_crop(
    label: np.ndarray, affine: np.ndarray, size: Sequence[int], *, fill: int = 0
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """Centred pad (with ``fill``) or crop of each axis to ``size``.

    Returns:
        The new map, its affine, and per axis the ``(offset, count)`` of old voxels kept: new index ``j`` holds old
        index ``j - pad_before`` (``offset`` < 0 means padding before).
    """
    label = np.asarray(label)
    out = np.full(tuple(int(s) for s in size), fill, dtype=label.dtype)
    src, dst, offsets = [], [], []
    for n, m in zip(label.shape, size):
        start = (n - m) // 2  # old index of new voxel 0; negative pads
        lo, hi = max(start, 0), min(start + m, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - start, hi - start))
        offsets.append((start, hi - lo))
    out[tuple(dst)] = label[tuple(src)]
    new_affine = np.asarray(affine, dtype=np.float64).copy()
    new_affine[:3, 3] = affine[:3, 3] + np.asarray(affine)[:3, :3] @ np.array(
        [o for o, _ in offsets], dtype=float
    )
    return out, new_affine, offsets


def clip_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    """Spacing clipped into the valid ranges of :mod:`maisi.generation.request`."""
    ranges = (SPACING_XY_MM, SPACING_XY_MM, SPACING_Z_MM)
    return tuple(float(min(max(s, lo), hi)) for s, (lo, hi) in zip(spacing, ranges))  # type: ignore[return-value]


@dataclass
class Fitted:
    """A label map on a generation grid, with what was changed to get there."""

    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    changes: list[str] = field(default_factory=list)


def fit_to_grid(
    label: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float],
    *,
    size: Sequence[int] | None = None,
    new_spacing: Sequence[float] | None = None,
) -> Fitted:
    """Resample and pad/crop a label map onto a valid grid.

    Args:
        label: (X, Y, Z) label map.
        affine: its (4, 4) RAS affine.
        spacing: its voxel size, mm.
        size: target size; default the nearest valid size (multiples of 32) of the resampled map.
        new_spacing: target spacing; default ``spacing`` clipped into the valid ranges.

    Returns:
        The fitted map; ``changes`` lists every change in words (empty when none was needed).
    """
    spacing = tuple(float(s) for s in spacing)
    target_spacing = clip_spacing(spacing) if new_spacing is None else tuple(float(s) for s in new_spacing)
    changes = []
    if any(abs(a - b) > 1e-6 for a, b in zip(spacing, target_spacing)):
        label, affine = resample_nearest(label, affine, spacing, target_spacing)
        changes.append(f"spacing {_fmt(spacing)} -> {_fmt(target_spacing)} mm (nearest neighbour)")
    target_size = tuple(nearest_size(n) for n in label.shape) if size is None else tuple(int(s) for s in size)
    if tuple(label.shape) != target_size:
        shape = list(label.shape)
        label, affine, _ = pad_or_crop(label, affine, target_size)
        changes.append(f"size {shape} -> {list(target_size)} (centred pad/crop)")
    return Fitted(label=label, affine=affine, spacing=target_spacing, changes=changes)  # type: ignore[arg-type]


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
