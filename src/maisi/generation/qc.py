"""Quality check of a generated CT: each organ's median HU inside its mask against real-CT statistics.

Thresholds follow the official MAISI check on ``image_median_statistics_ct.json``: low = min(sigma_6_low,
percentile_0_5), high = max(sigma_6_high, percentile_99_5), bone high = 1000 HU. The lung uses all five lobes
(the official table lists lobe 31 twice and misses 32). An organ absent from the label map is not checked.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from maisi import labels, resources

STATISTICS = "image_median_statistics_ct.json"
#: MAISI ids whose voxels make up each organ of the statistics table
ORGAN_IDS: dict[str, tuple[int, ...]] = {
    "liver": (1,),
    "spleen": (3,),
    "pancreas": (4,),
    "kidney": (5, 14),
    "lung": labels.LUNG_LOBES,
    "brain": (22,),
    "bone": labels.BONES,
}


def thresholds(stats: dict[str, Any], organ: str) -> tuple[float, float]:
    """``(low, high)`` median-HU range of one organ."""
    low = min(stats["sigma_6_low"], stats["percentile_0_5"])
    high = max(stats["sigma_6_high"], stats["percentile_99_5"])
    if organ == "bone":
        high = 1000.0
    return float(low), float(high)


def check_organ_medians(image_hu: np.ndarray, label: np.ndarray) -> dict[str, Any]:
    """Median HU of every organ of the statistics table present in ``label``, and whether it is in range.

    Args:
        image_hu: (X, Y, Z) CT in HU.
        label: (X, Y, Z) MAISI ids on the same grid.

    Returns:
        ``{"passed": bool, "organs": {name: {"median_hu", "low", "high", "passed", "voxels"}}}``.
    """
    if image_hu.shape != label.shape:
        raise ValueError(f"image shape {image_hu.shape} differs from label shape {label.shape}")
    table = resources.load_json(STATISTICS)
    organs: dict[str, Any] = {}
    for organ, stats in table.items():
        ids = ORGAN_IDS.get(organ)
        if not ids:
            continue
        values = image_hu[np.isin(label, ids)]
        if values.size == 0:
            continue
        low, high = thresholds(stats, organ)
        median = float(np.median(values))
        organs[organ] = {
            "median_hu": round(median, 2),
            "low": round(low, 2),
            "high": round(high, 2),
            "passed": bool(low <= median <= high),
            "voxels": int(values.size),
        }
    return {"passed": all(o["passed"] for o in organs.values()), "organs": organs}


def qc_reason(plan: Any) -> str | None:
    """Why the quality check of a run's samples does not run (None when it does): it needs CT, a label map to
    find the organs in, and not to be turned off."""
    from maisi.data.intensity import is_mr

    if is_mr(plan.modality):
        return "MR: the organ median-HU check is defined for CT"
    if plan.mask_source == "none":
        return "image-only generation: no label map to find the organs in"
    if not plan.request.qc:
        return "turned off (--no-qc)"
    return None
