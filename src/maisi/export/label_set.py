"""The labels an exported dataset holds: MAISI ids, their names, and the consecutive numbering nnU-Net needs.

nnU-Net requires labels 0, 1, 2, ... without gaps; MAISI ids have gaps (unused ``dummy`` ids, body = 200). A
label set lists the MAISI ids a dataset keeps, in id order, and numbers them 1..K; every other id becomes
background. The default set is the whole vocabulary (dummies left out), so every sample, written by any process,
maps the same way without knowing the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from maisi import labels
from maisi.errors import DataError, RequestError


@dataclass(frozen=True)
class LabelSet:
    """MAISI ids kept by an export, in increasing order (background 0 not listed)."""

    ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.ids:
            raise RequestError("the label set is empty: keep at least one label")
        if list(self.ids) != sorted(set(self.ids)) or self.ids[0] <= labels.BACKGROUND:
            raise ValueError(f"ids must be increasing MAISI ids > 0, got {self.ids}")
        labels.check_ids(self.ids, source="label set")

    @classmethod
    def from_names(cls, names: Sequence[str] = ()) -> LabelSet:
        """The named labels (MAISI names, case-insensitive), or the whole vocabulary when ``names`` is empty."""
        if not names:
            return cls(tuple(sorted(i for n, i in labels.LABELS.items() if not n.startswith("dummy"))))
        from maisi.generation.request import check_anatomy

        return cls(tuple(sorted(set(check_anatomy(names, source="keep_only")))))

    @property
    def is_whole_vocabulary(self) -> bool:
        return self == LabelSet.from_names(())

    def names(self) -> list[str]:
        return [labels.name_of(i) for i in self.ids]

    def consecutive(self) -> dict[str, int]:
        """nnU-Net's ``labels``: name -> 0..K, background first."""
        return {"background": 0, **{name: k for k, name in enumerate(self.names(), start=1)}}

    def maisi_ids(self) -> dict[str, int]:
        """name -> MAISI id, background first (recorded beside ``labels`` to map predictions back)."""
        return {"background": 0, **dict(zip(self.names(), self.ids))}

    def renumber(self, label: np.ndarray) -> np.ndarray:
        """(X, Y, Z) MAISI ids -> uint8/uint16 consecutive numbers of this set (other ids -> 0)."""
        top = max(int(label.max(initial=0)), self.ids[-1])
        lut = np.zeros(top + 1, dtype=np.uint8 if len(self.ids) < 256 else np.uint16)
        lut[list(self.ids)] = np.arange(1, len(self.ids) + 1)
        return lut[label]

    @staticmethod
    def from_record(record: Mapping[str, int]) -> LabelSet:
        """The set recorded by :meth:`maisi_ids` in an existing dataset."""
        try:
            return LabelSet(tuple(sorted(int(i) for n, i in record.items() if n != "background")))
        except (TypeError, ValueError) as e:
            raise DataError(f"recorded MAISI label ids are invalid ({e})") from None


def present_ids(label: np.ndarray) -> list[int]:
    """MAISI ids present in a label map, background excluded, increasing."""
    return [int(i) for i in np.unique(label) if i != labels.BACKGROUND]


def describe_difference(have: Iterable[int], want: Iterable[int]) -> str:
    """A short text naming the ids one set has and the other lacks (for one-line errors)."""
    have, want = set(have), set(want)
    parts = []
    if want - have:
        parts.append("requested but absent: " + _few(want - have))
    if have - want:
        parts.append("present but not requested: " + _few(have - want))
    return "; ".join(parts)


def _few(ids: set[int], limit: int = 5) -> str:
    names = [labels.name_of(i) for i in sorted(ids)]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
