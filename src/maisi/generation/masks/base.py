"""What every mask source shares: the :class:`MaskSample` it returns and the :class:`MaskSource` interface.

A mask source is a callable ``source(index, attempt=0) -> MaskSample`` giving a MAISI label map on a valid
generation grid; what it draws depends only on ``(seed, index, attempt)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass
class MaskSample:
    """A label map ready to condition generation.

    Attributes:
        label: (X, Y, Z) uint8 MAISI ids, each axis a multiple of 32.
        affine: (4, 4) RAS voxel -> world (mm).
        spacing: voxel size (mm).
        source: which source made it (``file``, ``database``, ``model``, ``phantom``).
        info: JSON-ready facts for the sidecar (file, seed, parameters).
        changes: what was changed to fit the grid, in words (also emitted as warnings).
        requested: requested organ/tumour sizes as the source understood them (name -> facts).
    """

    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    requested: dict[str, dict[str, Any]] = field(default_factory=dict)


class MaskSource(Protocol):
    """``source(index, attempt=0) -> MaskSample``; ``name`` says which kind it is."""

    name: str

    def __call__(self, index: int, attempt: int = 0) -> MaskSample: ...


def as_label(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.uint8)
