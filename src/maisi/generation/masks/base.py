"""What every mask source shares: the :class:`MaskSample` it returns and the :class:`MaskSource` interface.

A mask source is a callable ``source(index, attempt=0) -> MaskSample`` giving a MAISI label map on a valid
generation grid; what it draws depends only on ``(seed, index, attempt)``. Image-only generation (no ControlNet,
no mask) has a source too, :class:`GridSource`, which gives the grid alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

#: spacing (mm) of the official mask-generation models' output (256^3 at 1.5 mm), v1 and v2
MASK_MODEL_SPACING = 1.5


@dataclass
class MaskSample:
    """A label map ready to condition generation (or, for image-only generation, just the grid).

    Attributes:
        label: (X, Y, Z) uint8 MAISI ids, each axis a multiple of 32; None for image-only generation.
        affine: (4, 4) RAS voxel -> world (mm).
        spacing: voxel size (mm).
        source: which source made it (``file``, ``database``, ``model``, ``phantom``).
        info: JSON-ready facts for the sidecar (file, seed, parameters).
        changes: what was changed to fit the grid, in words (also emitted as warnings).
        warnings: what the generator will see that the user may not expect (no body envelope, few organs).
        requested: requested organ/tumour sizes as the source understood them (name -> facts).
        grid: the output size when there is no label map.
    """

    label: np.ndarray | None
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    requested: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: tuple[int, int, int] | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        """The output grid ``(X, Y, Z)``."""
        return tuple(self.label.shape) if self.label is not None else tuple(self.grid or ())


class MaskSource(Protocol):
    """``source(index, attempt=0) -> MaskSample``; ``name`` says which kind it is."""

    name: str

    def __call__(self, index: int, attempt: int = 0) -> MaskSample: ...


def as_label(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.uint8)


class GridSource:
    """Image-only generation: every sample gets the requested grid and no label map."""

    name = "none"

    def __init__(self, *, size: tuple[int, int, int], spacing: tuple[float, float, float]) -> None:
        from maisi.generation.grid import spacing_affine

        self.size, self.spacing = tuple(int(n) for n in size), tuple(float(s) for s in spacing)
        self.affine = spacing_affine(self.spacing, self.size)

    def __call__(self, index: int, attempt: int = 0) -> MaskSample:
        return MaskSample(
            label=None, affine=self.affine.copy(), spacing=self.spacing, source=self.name, grid=self.size
        )
