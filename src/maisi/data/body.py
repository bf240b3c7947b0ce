"""The body envelope (MAISI label 200): every voxel inside the patient's skin, lungs and bowel gas included.

MAISI label maps mark the body outline with id 200 wherever no organ label is set. :func:`body_mask_from_ct`
derives it from a CT by thresholding away air, keeping the largest component, removing the scanner table by a
morphological opening and filling internal air (lungs, bowel gas) slice by slice and in 3D.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from maisi import labels

#: Voxels above this value (HU) count as tissue; air is about -1000 HU, fat about -100 HU.
AIR_THRESHOLD_HU = -500.0
#: Radius (mm) of the opening that detaches the scanner table and thin cushions from the body.
TABLE_RADIUS_MM = 6.0
#: Radius (mm) of the closing that joins organ labels into an envelope when no image is available.
LABEL_CLOSING_RADIUS_MM = 15.0
#: Morphology with large balls runs on blocks of about this size (mm): exact on coarse scans, ~10x faster on
#: sub-millimetre ones, at the cost of block-sized steps where the envelope is cut from a touching table.
COARSE_GRID_MM = 2.0


def _spacing(spacing: Sequence[float]) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64)
    if sp.shape != (3,) or np.any(sp <= 0):
        raise ValueError(f"spacing must be three positive numbers, got {sp.tolist()}")
    return sp


def erode(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Erosion by a ball of physical radius ``radius_mm``: voxels farther than the radius from any False voxel.

    Computed with a Euclidean distance transform; the array edge is not background, so a scan that cuts
    through the body is not eroded from its borders.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(mask, sampling=_spacing(spacing)) > radius_mm


def dilate(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Dilation by a ball of physical radius ``radius_mm``: voxels within the radius of a True voxel."""
    mask = np.asarray(mask, dtype=bool)
    if mask.all() or not mask.any():
        return mask.copy()
    return ndi.distance_transform_edt(~mask, sampling=_spacing(spacing)) <= radius_mm


def _padded(op, mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Run ``op`` on the mask padded by one radius with its edge values, then crop back: the scan continues
    past its borders for both steps of an opening or closing."""
    pad = [(h, h) for h in np.ceil(radius_mm / _spacing(spacing)).astype(int).tolist()]
    out = op(np.pad(np.asarray(mask, dtype=bool), pad, mode="edge"))
    return out[tuple(slice(h, h + n) for (h, _), n in zip(pad, mask.shape))]


def opening(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Erosion then dilation by a ball: removes structures thinner than its diameter."""
    return _padded(
        lambda m: dilate(erode(m, radius_mm, spacing), radius_mm, spacing), mask, radius_mm, spacing
    )


def closing(mask: np.ndarray, radius_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Dilation then erosion by a ball: bridges gaps narrower than its diameter."""
    return _padded(
        lambda m: erode(dilate(m, radius_mm, spacing), radius_mm, spacing), mask, radius_mm, spacing
    )


def coarse_factors(spacing: Sequence[float], *, grid_mm: float = COARSE_GRID_MM) -> tuple[int, int, int]:
    """Integer block size per axis so that blocks are about ``grid_mm`` (at least one voxel)."""
    return tuple(max(1, int(grid_mm / s + 1e-9)) for s in _spacing(spacing))


def block_any(mask: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Downsample by ``factors``: a block is True when any of its voxels is (keeps thin structures)."""
    if all(f == 1 for f in factors):
        return np.asarray(mask, dtype=bool)
    pad = [(0, -n % f) for n, f in zip(mask.shape, factors)]
    m = np.pad(np.asarray(mask, dtype=bool), pad)
    (a, b, c), (fa, fb, fc) = m.shape, factors
    return m.reshape(a // fa, fa, b // fb, fb, c // fc, fc).any(axis=(1, 3, 5))


def block_expand(mask: np.ndarray, factors: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`block_any`'s grid: repeat each block ``factors`` times and crop to ``shape``."""
    out = mask
    for axis, f in enumerate(factors):
        if f > 1:
            out = np.repeat(out, f, axis=axis)
    return out[: shape[0], : shape[1], : shape[2]]


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 6-connected component of a boolean mask (all False when the mask is empty)."""
    lab, n = ndi.label(mask)
    if n <= 1:
        return lab > 0
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


def _fill(mask: np.ndarray, structure: np.ndarray, faces: tuple[int, ...]) -> np.ndarray:
    """Set background components (connected by ``structure``) that touch none of the ``faces`` axes' ends."""
    lab, n = ndi.label(~mask, structure=structure)
    if n == 0:
        return mask.copy()
    outside = np.zeros(n + 1, dtype=bool)
    for axis in faces:
        outside[np.take(lab, 0, axis=axis)] = True
        outside[np.take(lab, -1, axis=axis)] = True
    outside[0] = True  # label 0 is the mask itself
    return mask | ~outside[lab]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill holes in each axial (X, Y) slice, then in 3D (background not connected to the volume border)."""
    mask = np.asarray(mask, dtype=bool)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndi.generate_binary_structure(2, 1)
    out = _fill(mask, in_plane, faces=(0, 1))
    return _fill(out, ndi.generate_binary_structure(3, 1), faces=(0, 1, 2))


def body_mask_from_ct(
    hu: np.ndarray,
    spacing: Sequence[float],
    *,
    threshold_hu: float = AIR_THRESHOLD_HU,
    table_radius_mm: float = TABLE_RADIUS_MM,
) -> np.ndarray:
    """Body envelope of a CT volume.

    Steps: tissue = ``hu > threshold_hu`` and its largest component (drops a table lying on a cushion); an
    opening with a ball of radius ``table_radius_mm`` and the largest component again (cuts off a table that
    touches the patient); the component's voxels within one radius of that core are kept, which gives back
    the skin the opening shaved off; holes are filled per axial slice and in 3D, which puts the lungs, airways
    and bowel gas inside. The opening and its dilation run on ~2 mm blocks (:data:`COARSE_GRID_MM`).
    Internal air behind a wall thinner than the ball's diameter (~12 mm) may stay outside.

    Args:
        hu: (X, Y, Z) CT values in Hounsfield units, RAS (Z axial).
        spacing: (3,) voxel size in mm.

    Returns:
        (X, Y, Z) bool mask.
    """
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"hu must be 3D (X, Y, Z), got shape {hu.shape}")
    tissue = hu > threshold_hu
    if not tissue.any():
        return tissue
    # the table usually lies on a cushion (air at this threshold): keeping one component drops it
    comp = largest_component(tissue)
    # a table touching the back is cut off by an opening, which erases structures thinner than the ball; it
    # runs before hole filling, which would otherwise close the air between the back and the table
    factors = coarse_factors(spacing)
    coarse = block_any(comp, factors)
    coarse_spacing = np.asarray(spacing, dtype=np.float64) * factors
    opened = opening(coarse, table_radius_mm, coarse_spacing)
    core = largest_component(opened) if opened.any() else coarse
    # the component's voxels within one radius of the opened core: gives back the skin the opening shaved off
    near = block_expand(dilate(core, table_radius_mm, coarse_spacing), factors, comp.shape)
    return fill_holes(comp & near)


def body_mask_from_label(label: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Rough body envelope from organ labels alone (when no image exists): closing of the labelled voxels
    with a ball of :data:`LABEL_CLOSING_RADIUS_MM`, then hole filling. It underestimates the true body
    (no subcutaneous fat) and is a fallback only.

    Args:
        label: (X, Y, Z) label map.
        spacing: (3,) voxel size in mm (1 mm assumed when None).
    """
    mask = np.asarray(label) > 0
    if not mask.any():
        return mask
    spacing = (1.0, 1.0, 1.0) if spacing is None else spacing
    factors = coarse_factors(spacing)
    coarse_spacing = np.asarray(spacing, dtype=np.float64) * factors
    closed = closing(block_any(mask, factors), LABEL_CLOSING_RADIUS_MM, coarse_spacing)
    return fill_holes(block_expand(closed, factors, mask.shape) | mask)


def add_body_label(label: np.ndarray, hu: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Set :data:`maisi.labels.BODY` (200) where the CT body envelope has no organ label.

    A label map that already contains 200 is returned unchanged (as a copy).

    Args:
        label: (X, Y, Z) MAISI label map.
        hu: (X, Y, Z) CT in HU on the same grid.
        spacing: (3,) voxel size in mm.
    """
    label = np.array(label, copy=True)
    if label.shape != np.shape(hu):
        raise ValueError(f"label shape {label.shape} differs from image shape {np.shape(hu)}")
    if np.any(label == labels.BODY):
        return label
    body = body_mask_from_ct(hu, spacing)
    label[body & (label == labels.BACKGROUND)] = labels.BODY
    return label


def add_body_from_label(label: np.ndarray, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Like :func:`add_body_label` but with the label-only envelope of :func:`body_mask_from_label`."""
    label = np.array(label, copy=True)
    if np.any(label == labels.BODY):
        return label
    body = body_mask_from_label(label, spacing)
    label[body & (label == labels.BACKGROUND)] = labels.BODY
    return label
