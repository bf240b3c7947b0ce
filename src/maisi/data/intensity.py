"""Intensity normalisation between scanner units and the [0, 1] range the MAISI autoencoder works in.

CT: Hounsfield units clipped to [-1000, 1000] and scaled linearly to [0, 1]. MRI: the 0th to 99.5th
percentile of each volume scaled to [0, 1], not clipped (the official transform's ``clip=False``: the brightest
0.5 % of voxels stay above 1); the percentile values are returned so the scaling can be undone.
Functions accept numpy arrays (returning float32) or torch tensors (keeping their dtype and device).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Hounsfield window mapped to [0, 1] for CT.
CT_MIN_HU = -1000.0
CT_MAX_HU = 1000.0
#: Percentiles mapped to 0 and 1 for MRI.
MRI_LOWER_PERCENTILE = 0.0
MRI_UPPER_PERCENTILE = 99.5
#: Whether MR values outside the percentile range are clipped: not in the official VAE / latent transform.
MRI_CLIP = False


def _is_torch(x: Any) -> bool:
    return hasattr(x, "detach") and hasattr(x, "clamp")


def _as_float(x: Any) -> Any:
    if _is_torch(x):
        return x if x.is_floating_point() else x.float()
    return np.asarray(x, dtype=np.float32)


def _clip(x: Any, lo: float, hi: float) -> Any:
    return x.clamp(lo, hi) if _is_torch(x) else np.clip(x, lo, hi)


def ct_to_unit(hu: Any, *, min_hu: float = CT_MIN_HU, max_hu: float = CT_MAX_HU) -> Any:
    """Clip CT values to [min_hu, max_hu] HU and scale them linearly to [0, 1].

    Args:
        hu: CT volume in Hounsfield units, any shape (numpy array or torch tensor).

    Returns:
        Same shape, in [0, 1] (float32 for numpy input).
    """
    if not max_hu > min_hu:
        raise ValueError(f"max_hu must exceed min_hu, got min_hu={min_hu}, max_hu={max_hu}")
    x = _as_float(hu)
    return _clip((x - min_hu) / (max_hu - min_hu), 0.0, 1.0)


def unit_to_ct(unit: Any, *, min_hu: float = CT_MIN_HU, max_hu: float = CT_MAX_HU) -> Any:
    """Inverse of :func:`ct_to_unit`: values in [0, 1] (clipped first) back to HU."""
    if not max_hu > min_hu:
        raise ValueError(f"max_hu must exceed min_hu, got min_hu={min_hu}, max_hu={max_hu}")
    x = _clip(_as_float(unit), 0.0, 1.0)
    return x * (max_hu - min_hu) + min_hu


def mri_to_unit(
    image: Any,
    *,
    lower_percentile: float = MRI_LOWER_PERCENTILE,
    upper_percentile: float = MRI_UPPER_PERCENTILE,
    clip: bool = MRI_CLIP,
) -> tuple[Any, tuple[float, float]]:
    """Scale an MR volume so its ``lower_percentile`` maps to 0 and ``upper_percentile`` to 1.

    Args:
        image: MR volume, any shape (numpy array or torch tensor).
        clip: clip the result to [0, 1] (values above the upper percentile then saturate and do not invert);
            off by default, as in the official transform.

    Returns:
        The scaled volume (same shape) and the ``(low, high)`` intensity values used, to pass to
        :func:`unit_to_mri`. A constant image gives ``high = low + 1`` (all zeros out).
    """
    if not 0.0 <= lower_percentile < upper_percentile <= 100.0:
        raise ValueError(
            f"need 0 <= lower_percentile < upper_percentile <= 100, got {lower_percentile}, {upper_percentile}"
        )
    x = _as_float(image)
    values = x.detach().cpu().double().numpy() if _is_torch(x) else x
    lo, hi = (float(v) for v in np.percentile(values, [lower_percentile, upper_percentile]))
    if hi <= lo:  # constant image: avoid dividing by zero
        hi = lo + 1.0
    out = (x - lo) / (hi - lo)
    return (_clip(out, 0.0, 1.0) if clip else out), (lo, hi)


def unit_to_mri(unit: Any, low: float, high: float) -> Any:
    """Inverse of :func:`mri_to_unit` given its returned ``(low, high)`` values."""
    return _as_float(unit) * (high - low) + low


#: modality ids (``modality_mapping.json``) from this one on are MR; below it CT (0 = unknown is written as CT)
FIRST_MR_MODALITY = 8
#: what the official samplers write for MR: the VAE's [0, 1] as [0, 1000]
MR_OUTPUT_MAX = 1000.0


def is_mr(modality_id: int) -> bool:
    """Whether a modality class id is an MR one (the official rule: ids >= 8)."""
    return int(modality_id) >= FIRST_MR_MODALITY


def unit_to_output(unit: np.ndarray, modality_id: int) -> tuple[np.ndarray, str]:
    """A generated ``[0, 1]`` image in the units the official samplers write, rounded to int16, and the
    convention in words (for the sidecar).

    CT: clipped to [0, 1], mapped to [-1000, 1000] HU. MR: ``[0, 1] -> [0, 1000]``, clipped below at 0 only.
    (The official scripts truncate towards zero when casting; maisi rounds to the nearest integer.)
    """
    unit = np.asarray(unit, dtype=np.float32)
    if is_mr(modality_id):
        out = np.rint(np.clip(unit, 0.0, None) * MR_OUTPUT_MAX)
        return out.clip(0, np.iinfo(np.int16).max).astype(np.int16), "MR: [0, 1] -> [0, 1000], clipped at 0"
    hu = np.rint(unit_to_ct(unit)).astype(np.int16)
    return hu, f"CT: [0, 1] -> [{CT_MIN_HU:g}, {CT_MAX_HU:g}] HU"


def scale_intensity(array: np.ndarray, mode: str) -> np.ndarray:
    """Scale a volume to network input units: ``ct`` ([-1000, 1000] HU -> [0, 1]), ``mri`` (percentiles) or
    ``unit`` (clipped to [0, 1])."""
    from maisi.errors import ConfigError

    if mode == "ct":
        return ct_to_unit(array)
    if mode == "mri":
        return mri_to_unit(array)[0]
    if mode == "unit":
        return np.clip(np.asarray(array, dtype=np.float32), 0.0, 1.0)
    raise ConfigError(f"intensity must be 'ct', 'mri' or 'unit', got {mode!r}")
