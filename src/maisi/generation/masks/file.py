"""The user's own mask as a mask source: read into MAISI ids (:func:`maisi.data.labelmaps.read_label_map`: the
vocabulary decided from evidence or named, refused when doubtful, every source id reported), body 200 added when
missing, fitted onto a valid generation grid."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from maisi import labels
from maisi.generation.grid import fit_to_grid
from maisi.generation.masks.base import MaskSample, as_label


@dataclass(frozen=True)
class LabelReading:
    """How user label maps are read (``data.label_set``, ``data.unknown_labels``, ``data.one_hot``)."""

    label_set: str = "auto"
    unknown_labels: str = "error"
    one_hot: bool = False

    def check(self) -> None:
        """Refuse a label set that is neither built in nor a readable names file (before any work)."""
        if self.label_set != "auto":
            from maisi.data.vocabularies import resolve

            resolve(self.label_set)

    def read(self, path: str | os.PathLike, *, label_set: str | None = None):
        """:func:`maisi.data.labelmaps.read_label_map` with these options (``label_set`` overrides)."""
        from maisi.data.labelmaps import read_label_map

        return read_label_map(
            path,
            label_set=label_set or self.label_set,
            unknown_labels=self.unknown_labels,  # type: ignore[arg-type]
            one_hot=self.one_hot,
        )


class FileMaskSource:
    """The user's mask, translated to MAISI ids, with body 200 added when missing, fitted onto a valid grid.

    Args:
        path: the mask file.
        size: target size; None fits to the nearest valid size at the mask's own (range-clipped) spacing.
        spacing: target spacing; None keeps the mask's spacing clipped into the valid ranges.
        reading: how the file's ids are read (vocabulary, unknown ids, one-hot stacks).
    """

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        reading: LabelReading = LabelReading(),
    ) -> None:
        from maisi.data.body import add_body_from_label

        read = reading.read(path)
        label, affine, native_spacing = read.label, read.affine, read.spacing
        added_body = not bool(np.any(label == labels.BODY))
        if added_body:
            label = add_body_from_label(label, native_spacing)
        fitted = fit_to_grid(label, affine, native_spacing, size=size, new_spacing=spacing)
        self.path = str(path)
        self.sample = MaskSample(
            label=as_label(fitted.label),
            affine=fitted.affine,
            spacing=fitted.spacing,
            source=self.name,
            info={
                "file": self.path,
                "vocabulary": read.vocabulary,
                "label_mapping": read.report,
                "input_shape": list(label.shape),
                "input_spacing": list(native_spacing),
                "body_added": added_body,
            },
            changes=fitted.changes,
            warnings=[f"{path}: {w}" if not w.startswith(str(path)) else w for w in read.warnings],
        )

    def __call__(self, index: int, attempt: int = 0) -> MaskSample:
        """The same fitted mask for every sample (copies, so callers may modify them)."""
        s = self.sample
        return MaskSample(
            label=s.label.copy(),
            affine=s.affine.copy(),
            spacing=s.spacing,
            source=s.source,
            info=dict(s.info),
            changes=list(s.changes),
            warnings=list(s.warnings),
        )
