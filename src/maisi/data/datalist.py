"""MAISI-format datalist JSON files.

A datalist is ``{"training": [entry, ...]}``; each entry has an ``"image"`` path (required) and optionally
``"label"``, ``"dim"`` [X, Y, Z], ``"spacing"`` [sx, sy, sz] (mm), ``"top_region_index"`` and
``"bottom_region_index"`` (4-value one-hot: head, chest, abdomen, lower body), ``"modality"`` and ``"fold"``.
On disk, paths are relative to the datalist file's folder; in memory (:func:`read_datalist`) they are absolute.
Other keys are kept as they are.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maisi import resources
from maisi.errors import DataError
from maisi.io import read_json, write_json

PATH_KEYS = ("image", "label")
SECTION = "training"


def _check_entry(entry: Any, *, where: str) -> None:
    """Raise a DataError naming ``where`` (file and entry index) and the bad key."""
    if not isinstance(entry, dict):
        raise DataError(f"{where}: entry must be a JSON object, got {type(entry).__name__}")
    if "image" not in entry:
        raise DataError(f"{where}: missing required key 'image'")
    for key in PATH_KEYS:
        if key in entry and not (isinstance(entry[key], str | os.PathLike) and str(entry[key])):
            raise DataError(f"{where}: key {key!r} must be a non-empty path string, got {entry[key]!r}")
    if "dim" in entry:
        dim = entry["dim"]
        if not (
            _is_list(dim, 3) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in dim)
        ):
            raise DataError(f"{where}: key 'dim' must be 3 positive integers, got {dim!r}")
    if "spacing" in entry:
        sp = entry["spacing"]
        if not (_is_list(sp, 3) and all(_is_number(s) and s > 0 for s in sp)):
            raise DataError(f"{where}: key 'spacing' must be 3 positive numbers (mm), got {sp!r}")
    for key in ("top_region_index", "bottom_region_index"):
        if key in entry:
            v = entry[key]
            if not (_is_list(v, 4) and all(_is_number(x) for x in v) and sorted(v) == [0, 0, 0, 1]):
                raise DataError(f"{where}: key {key!r} must be a 4-value one-hot list, got {v!r}")
    if "fold" in entry:
        f = entry["fold"]
        if not (isinstance(f, int) and not isinstance(f, bool) and f >= 0):
            raise DataError(f"{where}: key 'fold' must be a non-negative integer, got {f!r}")
    if "modality" in entry:
        m = entry["modality"]
        known = resources.load_json("modality_mapping.json")
        if not (isinstance(m, str) and m in known):
            raise DataError(f"{where}: key 'modality' is {m!r}; expected one of {sorted(known)}")


def _is_list(v: Any, n: int) -> bool:
    return isinstance(v, list | tuple) and len(v) == n


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def read_datalist(
    path: str | os.PathLike, *, section: str = SECTION, check_files: bool = True
) -> list[dict[str, Any]]:
    """Read a datalist and resolve its paths against the datalist's folder.

    Args:
        path: datalist JSON file.
        section: top-level key holding the entry list.
        check_files: raise when an ``image``/``label`` file does not exist.

    Returns:
        The entries, with ``image`` and ``label`` as absolute path strings.

    Raises:
        DataError: naming the file, the entry index and the key for every kind of problem.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: datalist file not found")
    raw = read_json(p, what="datalist")
    if not isinstance(raw, dict) or section not in raw:
        raise DataError(f"{p}: expected a JSON object with a {section!r} list")
    items = raw[section]
    if not isinstance(items, list):
        raise DataError(f"{p}: {section!r} must be a list, got {type(items).__name__}")
    base = p.resolve().parent
    entries = []
    for i, item in enumerate(items):
        where = f"{p}: {section}[{i}]"
        _check_entry(item, where=where)
        entry = dict(item)
        for key in PATH_KEYS:
            if key in entry:
                resolved = (base / entry[key]).resolve()
                if check_files and not resolved.is_file():
                    raise DataError(f"{where}: {key} file {resolved} not found")
                entry[key] = str(resolved)
        entries.append(entry)
    return entries


def write_datalist(
    path: str | os.PathLike,
    entries: Sequence[dict[str, Any]],
    *,
    overwrite: bool = False,
    section: str = SECTION,
) -> Path:
    """Write entries as a MAISI datalist, storing ``image``/``label`` relative to the datalist's folder.

    Raises:
        DataError: naming the entry index and key when an entry is invalid.
        OutputExistsError: when ``path`` exists and ``overwrite`` is False.
    """
    p = Path(path)
    base = p.resolve().parent
    out = []
    for i, entry in enumerate(entries):
        entry = {k: _plain(v) for k, v in entry.items()}
        _check_entry(entry, where=f"{p}: {section}[{i}]")
        for key in PATH_KEYS:
            if key in entry:
                target = Path(entry[key])
                target = target if target.is_absolute() else Path.cwd() / target
                entry[key] = Path(os.path.relpath(target.resolve(), base)).as_posix()
        out.append(entry)
    return write_json(p, {section: out}, overwrite=overwrite)


def _plain(v: Any) -> Any:
    """numpy scalars/arrays and tuples to plain JSON types (so the checks see lists and ints)."""
    if hasattr(v, "tolist"):
        return v.tolist()
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    return v
