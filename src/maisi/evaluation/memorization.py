"""Memorisation: how close each synthetic volume is to its nearest training volume.

Every volume is scaled to [0, 1] (CT window), reduced by area averaging to a fixed grid (``grid``, default
32^3, whatever its size), and centred and normalised to unit length, so the dot product of two volumes is their
normalised (Pearson) correlation. Each synthetic volume's nearest training volume and that correlation are
reported; a volume at or above ``threshold`` is flagged as a likely copy. For reference the same nearest-neighbour
correlation is computed between the training volumes themselves (leave one out): synthetic volumes much closer to a
training volume than training volumes are to each other suggest memorisation.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from maisi.data.intensity import scale_intensity
from maisi.evaluation.volumes import Case, find_cases, summarize

DEFAULT_GRID = (32, 32, 32)
DEFAULT_THRESHOLD = 0.98


def volume_signature(
    path: str | os.PathLike, *, grid: Sequence[int] = DEFAULT_GRID, intensity: str = "ct"
) -> np.ndarray:
    """(prod(grid),) float64 vector: the volume scaled, area-averaged to ``grid``, centred, unit norm."""
    from maisi.data.nifti import load_nifti

    unit = scale_intensity(load_nifti(path, kind="image").array, intensity)
    small = F.adaptive_avg_pool3d(torch.from_numpy(np.ascontiguousarray(unit))[None, None], tuple(grid))
    v = small.double().flatten().numpy()
    v = v - v.mean()
    norm = np.linalg.norm(v)
    return v / norm if norm > 0 else v


def _signatures(cases: Sequence[Case], grid: Sequence[int], intensity: str) -> np.ndarray:
    return np.stack([volume_signature(c.image, grid=grid, intensity=intensity) for c in cases])


def evaluate_memorization(
    synthetic: str | os.PathLike,
    training: str | os.PathLike,
    *,
    grid: Sequence[int] = DEFAULT_GRID,
    threshold: float = DEFAULT_THRESHOLD,
    intensity: str = "ct",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Nearest training volume of every synthetic volume by normalised correlation.

    Returns:
        ``{"cases": [{"name", "nearest", "correlation", "flagged"}], "n_flagged", "synthetic_nearest": summary,
        "training_nearest": summary (leave-one-out, None for one training volume), "threshold", "grid"}``.
    """
    synth_cases, train_cases = find_cases(synthetic), find_cases(training)
    s = _signatures(synth_cases, grid, intensity)
    t = _signatures(train_cases, grid, intensity)
    corr = s @ t.T
    nearest = corr.argmax(axis=1)
    rows = [
        {
            "name": c.name,
            "nearest": train_cases[j].name,
            "correlation": float(corr[i, j]),
            "flagged": bool(corr[i, j] >= threshold),
        }
        for i, (c, j) in enumerate(zip(synth_cases, nearest))
    ]
    train_nn = None
    if len(train_cases) > 1:
        tt = t @ t.T
        np.fill_diagonal(tt, -np.inf)
        train_nn = tt.max(axis=1).tolist()
    result = {
        "synthetic": str(synthetic),
        "training": str(training),
        "grid": [int(g) for g in grid],
        "threshold": float(threshold),
        "n_flagged": sum(r["flagged"] for r in rows),
        "synthetic_nearest": summarize([r["correlation"] for r in rows]),
        "training_nearest": None if train_nn is None else summarize(train_nn),
        "training_nearest_values": train_nn,
        "cases": rows,
    }
    if out is not None:
        from maisi.io import write_json

        write_json(out, result, overwrite=overwrite)
    return result
