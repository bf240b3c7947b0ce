"""Translating label maps from other vocabularies (TotalSegmentator "total") to MAISI ids.

The TotalSegmentator table is built by name translation (``kidney_right`` -> ``right kidney``,
``rib_left_1`` -> ``left rib 1``, ``vertebrae_L5`` -> ``vertebrae L5``) plus :data:`TOTALSEGMENTATOR_EXCEPTIONS`;
every TotalSegmentator id is either mapped or listed in :data:`UNMAPPED` with a reason. Unknown ids in a label
map are never dropped silently.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from maisi import labels, resources
from maisi.errors import DataError

TOTALSEGMENTATOR_MAP = "totalsegmentator_total_class_map.json"
SIDES = ("left", "right")

#: TotalSegmentator names whose MAISI name does not follow the translation rule.
TOTALSEGMENTATOR_EXCEPTIONS: dict[str, str] = {
    "urinary_bladder": "bladder",
}
#: TotalSegmentator names with no MAISI counterpart, with the reason. Every "total" class has a MAISI
#: counterpart in MAISI's 132-class vocabulary, so this is empty; a name added here maps to background.
UNMAPPED: dict[str, str] = {}
#: MAISI placeholder classes never used in real label maps (their presence suggests another vocabulary).
MAISI_DUMMY_IDS: frozenset[int] = frozenset(i for n, i in labels.LABELS.items() if n.startswith("dummy"))

Unknown = Literal["error", "background"]


def translate_totalsegmentator_name(name: str) -> str:
    """MAISI name for a TotalSegmentator class name by rule (exceptions applied first).

    ``a_b_left`` -> ``left a b``; ``rib_left_1`` -> ``left rib 1``; other underscores become spaces.
    """
    if name in TOTALSEGMENTATOR_EXCEPTIONS:
        return TOTALSEGMENTATOR_EXCEPTIONS[name]
    parts = name.split("_")
    sides = [p for p in parts if p in SIDES]
    if len(sides) == 1:
        parts.remove(sides[0])
        parts.insert(0, sides[0])
    return " ".join(parts)


def _totalsegmentator_table() -> tuple[dict[int, int], dict[int, str]]:
    class_map = {int(k): v for k, v in resources.load_json(TOTALSEGMENTATOR_MAP).items()}
    lower = {n.lower(): i for n, i in labels.LABELS.items()}
    table: dict[int, int] = {}
    for ts_id, name in class_map.items():
        if name in UNMAPPED:
            table[ts_id] = labels.BACKGROUND
            continue
        maisi_name = translate_totalsegmentator_name(name)
        if maisi_name.lower() not in lower:
            # a resource/table inconsistency, not user input: fail loudly at import-time use
            raise RuntimeError(
                f"TotalSegmentator class {ts_id} {name!r} translates to {maisi_name!r}, which is not a MAISI "
                "label; add it to TOTALSEGMENTATOR_EXCEPTIONS or UNMAPPED"
            )
        table[ts_id] = lower[maisi_name.lower()]
    return table, class_map


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
    def from_totalsegmentator(cls) -> LabelMapping:
        """Mapping for TotalSegmentator "total" task ids (117 classes)."""
        table, _ = _totalsegmentator_table()
        return cls(table=table, name="totalsegmentator")

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
        """``"maisi"``, ``"totalsegmentator"`` or a path to a mapping JSON file."""
        if str(label_set) == "maisi":
            return cls.identity()
        if str(label_set) == "totalsegmentator":
            return cls.from_totalsegmentator()
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
    _, ts_names = _totalsegmentator_table()
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
