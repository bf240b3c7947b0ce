"""One generated image/label pair as :func:`maisi.generation.stream` hands it on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Sample:
    """One generated image/label pair.

    Attributes:
        index: sample index (its seed derives from it).
        image: (X, Y, Z) int16 HU (CT; float32 in [0, 1] for other modalities); None once written by a stream
            that does not keep arrays.
        label: (X, Y, Z) uint8 MAISI ids as written (``keep_only`` applied).
        condition: (X, Y, Z) uint8 the full label map the image was generated from.
        affine: (4, 4) RAS voxel -> world (mm).
        spacing: voxel size (mm).
        metadata: the sidecar content (parameters, seeds, weights, timings, QC, organ sizes).
        paths: written files by kind (empty when not written).
        unit: (X, Y, Z) float32 image in [0, 1] before rounding to HU (when ``return_unit``).
    """

    index: int
    image: np.ndarray | None
    label: np.ndarray | None
    condition: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    metadata: dict[str, Any]
    paths: dict[str, str] = field(default_factory=dict)
    unit: np.ndarray | None = None


__all__ = ["Sample"]
