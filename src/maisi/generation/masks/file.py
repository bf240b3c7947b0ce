"""The user's own mask as a mask source: read, translated to MAISI ids, body 200 added when missing, fitted onto a
valid generation grid."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from maisi import labels
from maisi.errors import DataError
from maisi.generation.grid import fit_to_grid
from maisi.generation.masks.base import MaskSample, as_label


def read_user_mask(path: str | os.PathLike, *, label_set: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """Read a mask file and translate it to MAISI ids.

    Args:
        path: NIfTI label map.
        label_set: ``"auto"`` (detect MAISI vs TotalSegmentator), ``"maisi"``, ``"totalsegmentator"`` or a mapping
            JSON file (see :class:`maisi.data.label_mapping.LabelMapping`).

    Returns:
        ``(label in MAISI ids, affine, vocabulary used)``.

    Raises:
        DataError: unreadable file, or ids that belong to no known vocabulary (listed).
    """
    from maisi.data.label_mapping import LabelMapping, detect_label_set
    from maisi.data.nifti import load_nifti

    vol = load_nifti(path, kind="label")
    array = vol.array
    vocab = str(label_set)
    if vocab == "auto":
        vocab = detect_label_set(array, vol.affine)
        if vocab == "unknown":
            present = set(np.unique(array).tolist()) - {0}
            unknown = sorted(present - labels.VALID_IDS)
            if not unknown:
                vocab = "maisi"  # valid MAISI ids whose laterality test was undecided
            else:
                raise DataError(
                    f"{path}: label ids {unknown[:12]}{' ...' if len(unknown) > 12 else ''} are neither MAISI nor "
                    "TotalSegmentator ids; give a mapping file (data.label_set=FILE)"
                )
    if vocab == "maisi":
        labels.check_ids(np.unique(array).tolist(), source=str(path))
        mapped = array
    else:
        mapped = LabelMapping.for_label_set(vocab).apply(array, source=str(path))
        vocab = "totalsegmentator" if vocab == "totalsegmentator" else f"mapping {vocab}"
    return as_label(mapped), vol.affine, vocab


class FileMaskSource:
    """The user's mask, translated to MAISI ids, with body 200 added when missing, fitted onto a valid grid.

    Args:
        path: the mask file.
        size: target size; None fits to the nearest valid size at the mask's own (range-clipped) spacing.
        spacing: target spacing; None keeps the mask's spacing clipped into the valid ranges.
        label_set: vocabulary of the file (see :func:`read_user_mask`).
    """

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        label_set: str = "auto",
    ) -> None:
        from maisi.data.body import add_body_from_label

        label, affine, vocab = read_user_mask(path, label_set=label_set)
        native_spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
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
                "vocabulary": vocab,
                "input_shape": list(label.shape),
                "input_spacing": list(native_spacing),
                "body_added": added_body,
            },
            changes=fitted.changes,
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
        )
