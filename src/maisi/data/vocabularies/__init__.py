"""Label vocabularies: what each id of a label map means, and which MAISI id it becomes.

A :class:`Vocabulary` is a table ``source id -> (source name, meaning in MAISI)``. Built-in vocabularies are named
(:data:`BUILTIN`): ``maisi``, ``totalsegmentator-v1`` (104 classes), ``totalsegmentator-v2`` (117; also accepted as
``totalsegmentator``) and TotalSegmentator sub-tasks (``totalsegmentator-<task>``). Any other vocabulary comes
from a names file (:func:`read_names_file`: nnU-Net ``dataset.json``, id -> name or id -> MAISI id JSON, ITK-SNAP
label description, 3D Slicer color table or ``.seg.nrrd``). Names are matched to MAISI by
:func:`maisi.data.vocabularies.names.match_name`; structures MAISI splits or lacks are listed, never guessed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from maisi import labels, resources
from maisi.data.vocabularies.files import read_names_file
from maisi.data.vocabularies.names import NameMatch, match_name
from maisi.errors import DataError

TOTALSEGMENTATOR_MAPS = "totalsegmentator_class_maps.json"
#: built-in name -> (TotalSegmentator task or "maisi"); aliases share a task
BUILTIN: dict[str, str] = {
    "maisi": "maisi",
    "totalsegmentator-v1": "total_v1",
    "totalsegmentator-v2": "total",
    "totalsegmentator": "total",
    "totalsegmentator-total": "total",
    "totalsegmentator-total_v1": "total_v1",
}
#: vocabularies that ``auto`` decides between (whole-body maps whose ids users meet without a names file)
AUTO_CANDIDATES: tuple[str, ...] = ("maisi", "totalsegmentator-v2", "totalsegmentator-v1")
#: what users may pass besides a file (for messages)
SUGGESTED = ("maisi", "totalsegmentator-v1", "totalsegmentator-v2")


def _register_subtasks() -> None:
    for task in resources.load_json(TOTALSEGMENTATOR_MAPS):
        BUILTIN.setdefault(f"totalsegmentator-{task}", task)


_register_subtasks()
#: TotalSegmentator sub-tasks whose names mean a part of one organ that the task makes plain (its ``ventricle``
#: is a brain ventricle, not a heart's): their names are matched with this word before them
TASK_CONTEXT: dict[str, str] = {"brain_structures": "brain", "ventricle_parts": "brain"}
_CANONICAL = {"total": "totalsegmentator-v2", "total_v1": "totalsegmentator-v1", "maisi": "maisi"}


@dataclass(frozen=True)
class Entry:
    """One source id: its name in the source vocabulary and its meaning in MAISI."""

    source_id: int
    source_name: str
    match: NameMatch

    @property
    def maisi_id(self) -> int | None:
        """The MAISI id it becomes, or None when MAISI has no single id for it (split, lacking, unknown)."""
        return self.match.maisi_id


@dataclass(frozen=True)
class Vocabulary:
    """A source-id table.

    Attributes:
        name: a built-in name or the names file's path.
        entries: source id -> :class:`Entry` (background 0 is implicit).
        builtin: True for the named built-in vocabularies.
    """

    name: str
    entries: Mapping[int, Entry]
    builtin: bool = False

    @classmethod
    def from_names(
        cls, name: str, names: Mapping[int, str | int], *, builtin: bool = False, context: str = ""
    ) -> Vocabulary:
        """Build from ``source id -> structure name`` (matched to MAISI) or ``-> MAISI id`` (taken as is).

        ``context`` is a word the names are matched with when their vocabulary makes it plain (``brain`` for a brain
        sub-task's ``ventricle``); the names reported stay as given.

        Raises:
            DataError: naming ``name`` and the id, for negative ids or integer targets that are not MAISI ids.
        """
        entries: dict[int, Entry] = {}
        for src, target in names.items():
            src = int(src)
            if src < 0:
                raise DataError(f"{name}: negative label id {src}")
            if src == labels.BACKGROUND:  # 0 is background in every label map format
                continue
            if isinstance(target, bool) or not isinstance(target, int | str):
                raise DataError(f"{name}: id {src}: {target!r} is not a structure name or MAISI id")
            if isinstance(target, int):
                if target not in labels.VALID_IDS:
                    raise DataError(f"{name}: id {src} maps to {target}, which is not a MAISI label id")
                kind = "background" if target == labels.BACKGROUND else "exact"
                entries[src] = Entry(src, labels.name_of(target), NameMatch(kind, target))
            else:
                entries[src] = Entry(src, target, match_name(f"{context} {target}" if context else target))
        return cls(name=name, entries=entries, builtin=builtin)

    @property
    def ids(self) -> frozenset[int]:
        """Every id this vocabulary defines, background included."""
        return frozenset(self.entries) | {labels.BACKGROUND}

    def describe(self, source_id: int) -> str:
        """``'5 liver'``: the id with its source name, for messages."""
        entry = self.entries.get(source_id)
        return f"{source_id} {entry.source_name}" if entry else str(source_id)

    def meaning(self, source_id: int) -> str:
        """MAISI name an id becomes, or why it has none."""
        entry = self.entries.get(source_id)
        if entry is None:
            return "not in the vocabulary"
        if entry.maisi_id is not None:
            return labels.name_of(entry.maisi_id)
        return entry.match.reason

    def lookup(self, max_id: int) -> np.ndarray:
        """(max_id + 1,) int32 table: MAISI id of each source id; -1 where MAISI has no single id or the id is
        not in the vocabulary."""
        lut = np.full(max_id + 1, -1, dtype=np.int32)
        lut[0] = labels.BACKGROUND
        for src, entry in self.entries.items():
            if src <= max_id and entry.maisi_id is not None:
                lut[src] = entry.maisi_id
        return lut


def builtin(name: str) -> Vocabulary:
    """A built-in vocabulary by name (see :data:`BUILTIN`); aliases return the same object.

    Raises:
        DataError: for an unknown name, listing the known ones.
    """
    if name not in BUILTIN:
        raise DataError(f"{name!r} is not a built-in label vocabulary; known: {', '.join(sorted(BUILTIN))}")
    return _builtin_task(BUILTIN[name])


@cache
def _builtin_task(task: str) -> Vocabulary:
    canonical = _CANONICAL.get(task, f"totalsegmentator-{task}")
    if task == "maisi":
        names = {i: n for n, i in labels.LABELS.items() if not n.startswith("dummy")}  # body 200 included
        return Vocabulary(
            name=canonical,
            entries={i: Entry(i, n, NameMatch("exact", i)) for i, n in names.items()},
            builtin=True,
        )
    class_map = resources.load_json(TOTALSEGMENTATOR_MAPS)[task]
    names = {int(k): v for k, v in class_map.items()}
    return Vocabulary.from_names(canonical, names, builtin=True, context=TASK_CONTEXT.get(task, ""))


def resolve(label_set: str | os.PathLike | Vocabulary) -> Vocabulary:
    """The vocabulary named by ``label_set``: a :class:`Vocabulary`, a built-in name or a names file.

    Raises:
        DataError: when the name is neither built in nor an existing file, or the file cannot be read.
    """
    if isinstance(label_set, Vocabulary):
        return label_set
    text = os.fspath(label_set)
    if text in BUILTIN:
        return builtin(text)
    path = Path(text)
    if not path.is_file():
        raise DataError(
            f"label set {text!r}: neither a built-in vocabulary ({', '.join(SUGGESTED)}, "
            "totalsegmentator-<task>) nor an existing names/mapping file"
        )
    return Vocabulary.from_names(str(path), read_names_file(path))


__all__ = [
    "AUTO_CANDIDATES",
    "BUILTIN",
    "Entry",
    "NameMatch",
    "Vocabulary",
    "builtin",
    "match_name",
    "read_names_file",
    "resolve",
]
