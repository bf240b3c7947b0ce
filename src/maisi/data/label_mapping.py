"""Source-id -> MAISI-id tables (:class:`LabelMapping`) and the old MAISI-or-TotalSegmentator guess.

New code reads user label maps with :func:`maisi.data.labelmaps.read_label_map`, which decides the vocabulary
from evidence (or refuses) and reports what each id became. :class:`LabelMapping` remains the plain table for
callers that know their vocabulary (e.g. TotalSegmentator output inside the evaluation). :func:`detect_label_set`
is the former guess, kept only until its last callers move to :func:`read_label_map`: it rules vocabularies out
by ids alone and can misread a map (a TotalSegmentator v1 map is taken for v2).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from maisi import labels
from maisi.data import vocabularies
from maisi.errors import DataError

#: MAISI placeholder classes never used in real label maps (their presence suggests another vocabulary).
MAISI_DUMMY_IDS: frozenset[int] = frozenset(i for n, i in labels.LABELS.items() if n.startswith("dummy"))

Unknown = Literal["error", "background"]


@dataclass(frozen=True)
class LabelMapping:
    """A source-id -> MAISI-id table; background 0 always maps to 0.

    Attributes:
        table: source id -> MAISI id (0 drops a class to background on purpose).
        name: what the source vocabulary is, for messages.
    """

    table: dict[int, int] = field(default_factory=dict)
    name: str = "custom"

    def __post_init__(self) -> None:
        for src, dst in self.table.items():
            if src < 0:
                raise ValueError(f"{self.name}: negative source id {src}")
            if dst not in labels.VALID_IDS:
                raise ValueError(f"{self.name}: source id {src} maps to {dst}, not a MAISI id")

    @classmethod
    def identity(cls) -> LabelMapping:
        """Mapping for label maps already in MAISI ids (every valid MAISI id to itself)."""
        return cls(table={i: i for i in labels.VALID_IDS}, name="maisi")

    @classmethod
    def from_vocabulary(cls, vocabulary: vocabularies.Vocabulary, *, name: str | None = None) -> LabelMapping:
        """The table of a vocabulary: ids with a single MAISI id (structures and their parts); ids MAISI splits
        or lacks are left out, so :meth:`apply` reports them."""
        table = {i: e.maisi_id for i, e in vocabulary.entries.items() if e.maisi_id is not None}
        return cls(table=table, name=name or vocabulary.name)

    @classmethod
    def from_totalsegmentator(cls) -> LabelMapping:
        """Mapping for TotalSegmentator v2 "total" task ids (117 classes)."""
        return cls.from_vocabulary(vocabularies.builtin("totalsegmentator-v2"), name="totalsegmentator")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> LabelMapping:
        """Read a JSON object ``{"<source id>": <MAISI id> | "<MAISI name>"}``.

        Ids not listed are unknown (reported by :meth:`apply`); map a class to ``0`` or ``"background"`` to drop
        it deliberately.

        Raises:
            DataError: naming the file (and the key) when the file is missing, not JSON, or has a bad entry.
        """
        p = Path(path)
        if not p.is_file():
            raise DataError(f"{p}: label mapping file not found")
        try:
            raw = json.loads(p.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{p}: not valid JSON ({e})") from None
        if not isinstance(raw, dict) or not raw:
            raise DataError(f"{p}: expected a non-empty JSON object {{source id: MAISI id or name}}")
        table: dict[int, int] = {}
        for key, value in raw.items():
            try:
                src = int(key)
            except ValueError:
                src = -1
            if src < 0 or str(src) != key.strip():
                raise DataError(f"{p}: key {key!r} is not a non-negative integer label id")
            table[src] = _parse_target(value, where=f"{p}: key {key!r}")
        return cls(table=table, name=str(p))

    @classmethod
    def for_label_set(cls, label_set: str | os.PathLike) -> LabelMapping:
        """``"maisi"``, a built-in vocabulary name (``"totalsegmentator"``, ``"totalsegmentator-v1"``...) or a
        path to a mapping JSON file."""
        if str(label_set) == "maisi":
            return cls.identity()
        if str(label_set) == "totalsegmentator":
            return cls.from_totalsegmentator()
        if str(label_set) in vocabularies.BUILTIN:
            return cls.from_vocabulary(vocabularies.builtin(str(label_set)))
        return cls.from_file(label_set)

    def lookup(self, max_id: int) -> np.ndarray:
        """Dense (max_id + 1,) lookup array: MAISI id for each source id, -1 where unknown."""
        lut = np.full(max_id + 1, -1, dtype=np.int32)
        lut[0] = labels.BACKGROUND
        for src, dst in self.table.items():
            if src <= max_id:
                lut[src] = dst
        return lut

    def apply(
        self, label: np.ndarray, *, source: str = "label map", unknown: Unknown = "error"
    ) -> np.ndarray:
        """Translate a label map to MAISI ids.

        Args:
            label: (X, Y, Z) non-negative integer ids in the source vocabulary.
            source: name of the input (a file path) for messages.
            unknown: ``"error"`` raises on ids missing from the table; ``"background"`` sets them to 0 and
                warns, listing them.

        Returns:
            (X, Y, Z) uint8 MAISI ids.

        Raises:
            DataError: naming ``source`` and every unknown id (with ``unknown="error"``).
        """
        if unknown not in ("error", "background"):
            raise ValueError(f"unknown must be 'error' or 'background', got {unknown!r}")
        arr = np.asarray(label)
        if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
            raise DataError(f"{source}: label map must hold integers, got {arr.dtype}")
        if arr.size and int(arr.min()) < 0:
            raise DataError(f"{source}: label map has negative ids (min {int(arr.min())})")
        present, inverse = np.unique(arr, return_inverse=True)
        lut = self.lookup(int(present.max()) if present.size else 0)
        mapped = lut[present]
        missing = present[mapped < 0].tolist()
        if missing:
            message = f"{source}: label ids not in the {self.name} mapping: {missing}"
            if unknown == "error":
                raise DataError(message + "; pass a mapping file or unknown='background'")
            warnings.warn(message + "; set to background", stacklevel=2)
            mapped = np.where(mapped < 0, labels.BACKGROUND, mapped)
        # every MAISI id (<= 200) fits in uint8
        return mapped.astype(np.uint8)[inverse].reshape(arr.shape)


def _parse_target(value: object, *, where: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: value {value!r} is not a MAISI id or name")
    if isinstance(value, int):
        if value not in labels.VALID_IDS:
            raise DataError(f"{where}: value {value} is not a MAISI label id")
        return value
    if isinstance(value, str):
        if value.strip().lower() == "background":
            return labels.BACKGROUND
        try:
            return labels.id_of(value)
        except DataError:
            raise DataError(f"{where}: value {value!r} is not a MAISI label name") from None
    raise DataError(f"{where}: value {value!r} is not a MAISI id or name")


def _lateral_pairs(names: dict[int, str]) -> list[tuple[int, int]]:
    """(right id, left id) pairs of classes whose names differ only in the side word."""
    by_name = {n.lower(): i for i, n in names.items()}
    pairs = []
    for n, i in by_name.items():
        if "right" in n.replace("_", " ").split():
            other = n.replace("right", "left")
            if other in by_name:
                pairs.append((i, by_name[other]))
    return pairs


def _lateral_score(label: np.ndarray, affine: np.ndarray, pairs: list[tuple[int, int]]) -> int:
    """Pairs (both present) whose 'right' class has the larger world x, minus those where it has not.

    RAS+ world x grows towards the patient's right (the liver lies at larger x than the spleen).
    """
    score = 0
    present = set(np.unique(label).tolist())
    for right, left in pairs:
        if right in present and left in present:
            xr = (affine[0, :3] @ np.mean(np.nonzero(label == right), axis=1)) + affine[0, 3]
            xl = (affine[0, :3] @ np.mean(np.nonzero(label == left), axis=1)) + affine[0, 3]
            score += 1 if xr > xl else -1
    return score


def detect_label_set(label: np.ndarray, affine: np.ndarray | None = None) -> str:
    """Guess the vocabulary of a label map: ``"maisi"``, ``"totalsegmentator"`` or ``"unknown"``.

    Deprecated: it can misread (see the module docstring); use :func:`maisi.data.labelmaps.read_label_map`.
    Ids outside one vocabulary rule it out; MAISI's placeholder ``dummy`` ids rule out MAISI. When both
    remain and ``affine`` is given, left/right organ pairs decide: the vocabulary whose "right" classes lie
    on the patient's right wins.

    Args:
        label: (X, Y, Z) integer label map.
        affine: (4, 4) voxel -> RAS world matrix, used for the left/right test.
    """
    ids = set(np.unique(label).tolist()) - {0}
    if not ids:
        return "unknown"
    ts_names = {i: e.source_name for i, e in vocabularies.builtin("totalsegmentator-v2").entries.items()}
    maisi_ok = ids <= labels.VALID_IDS and not ids & MAISI_DUMMY_IDS
    ts_ok = ids <= set(ts_names)
    if maisi_ok != ts_ok:
        return "maisi" if maisi_ok else "totalsegmentator"
    if not maisi_ok or affine is None:
        return "unknown"
    affine = np.asarray(affine, dtype=np.float64)
    s_maisi = _lateral_score(label, affine, _lateral_pairs(labels.NAMES))
    s_ts = _lateral_score(label, affine, _lateral_pairs(ts_names))
    if s_maisi > 0 >= s_ts:
        return "maisi"
    if s_ts > 0 >= s_maisi:
        return "totalsegmentator"
    return "unknown"
