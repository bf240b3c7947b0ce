"""Reading ``label id -> structure name`` tables from the files segmentation tools write.

Formats, told apart by name and content:

- nnU-Net ``dataset.json``: ``"labels": {"background": 0, "liver": 1, ...}`` (v2) or ``{"0": "background", ...}``
  (v1). Region-based labels (a name -> list of ids) are refused: they name unions, not the ids on disk.
- JSON ``{"<id>": "<name>" | <MAISI id>}`` (TotalSegmentator's class maps, maisi's mapping files).
- ITK-SNAP label description (``.txt``): ``IDX R G B A VIS MSH "LABEL"`` lines.
- 3D Slicer color table (``.ctbl``/``.txt``: ``id name R G B A`` lines; ``.csv`` with ``LabelValue`` and ``Name``
  columns) and ``.seg.nrrd`` headers (``SegmentN_Name``/``SegmentN_LabelValue``; one layer only).

Every error is a :class:`~maisi.errors.DataError` naming the file and the line or key.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

from maisi.errors import DataError

_ITKSNAP = re.compile(r'^\s*(\d+)\s+\d+\s+\d+\s+\d+\s+[\d.eE+-]+\s+\d+\s+\d+\s+"(.*)"\s*$')
_NRRD_SEGMENT = re.compile(r"^Segment(\d+)_(Name|LabelValue|Layer):=(.*)$")
#: a names file larger than this is not a names file
MAX_BYTES = 4_000_000


def read_names_file(path: str | Path) -> dict[int, str | int]:
    """``source id -> name`` (or ``-> MAISI id`` for integer JSON values) from a names file.

    Raises:
        DataError: naming the file, when it is unreadable, of no known format, or has a bad entry.
    """
    p = Path(path)
    lower = p.name.lower()
    if lower.endswith(".nrrd"):
        return _read_seg_nrrd(p)
    if p.stat().st_size > MAX_BYTES:
        raise DataError(f"{p}: too large for a label names file ({p.stat().st_size} bytes)")
    try:
        text = p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(
            f"{p}: not a text file (expected a JSON, .txt, .ctbl or .csv label names file)"
        ) from None
    if lower.endswith(".json"):
        return _read_json(p, text)
    if lower.endswith(".csv"):
        return _read_slicer_csv(p, text)
    lines = [
        (n, line)
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not lines:
        raise DataError(f"{p}: no label entries")
    if all(_ITKSNAP.match(line) for _, line in lines):
        return {int(m.group(1)): m.group(2) for m in (_ITKSNAP.match(line) for _, line in lines)}
    return _read_slicer_table(p, lines)


def _read_json(p: Path, text: str) -> dict[int, str | int]:
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{p}: expected a JSON object (id -> name, or an nnU-Net dataset.json)")
    if "labels" in raw:
        return _read_nnunet(p, raw["labels"])
    if all(isinstance(v, int) and not isinstance(v, bool) for v in raw.values()) and not any(
        _is_id(k) for k in raw
    ):
        return _invert(p, raw, where="")  # {"liver": 1, ...}
    out: dict[int, str | int] = {}
    for key, value in raw.items():
        if not _is_id(key):
            raise DataError(f"{p}: key {key!r} is not a non-negative integer label id")
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise DataError(f"{p}: key {key!r}: value {value!r} is not a structure name or MAISI id")
        out[int(key)] = value
    return out


def _read_nnunet(p: Path, labels: object) -> dict[int, str | int]:
    if not isinstance(labels, dict) or not labels:
        raise DataError(f"{p}: 'labels' must be a non-empty object")
    if all(_is_id(k) for k in labels):  # nnU-Net v1: {"0": "background", "1": "liver"}
        bad = [k for k, v in labels.items() if not isinstance(v, str)]
        if bad:
            raise DataError(f"{p}: labels[{bad[0]!r}] must be a name")
        return {int(k): str(v) for k, v in labels.items()}
    regions = [k for k, v in labels.items() if isinstance(v, list)]
    if regions:
        raise DataError(
            f"{p}: labels {regions[:3]} are nnU-Net regions (unions of ids), not the ids stored in the label "
            "maps; give a file that names each stored id"
        )
    return _invert(p, labels, where="labels")


def _invert(p: Path, name_to_id: dict, *, where: str) -> dict[int, str | int]:
    out: dict[int, str | int] = {}
    for name, value in name_to_id.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise DataError(f"{p}: {where + '.' if where else ''}{name}: {value!r} is not a label id")
        if value in out:
            raise DataError(f"{p}: id {value} is named twice ({out[value]!r} and {name!r})")
        out[value] = name
    return out


def _read_slicer_table(p: Path, lines: list[tuple[int, str]]) -> dict[int, str | int]:
    out: dict[int, str | int] = {}
    for number, line in lines:
        parts = line.split()
        if len(parts) < 2 or not _is_id(parts[0]):
            raise DataError(
                f"{p}: line {number} is neither a 3D Slicer color table entry ('id name R G B A') nor an "
                f"ITK-SNAP label description ('IDX R G B A VIS MSH \"LABEL\"'): {line.strip()[:60]!r}"
            )
        out[int(parts[0])] = parts[1]
    return out


def _read_slicer_csv(p: Path, text: str) -> dict[int, str | int]:
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "LabelValue" not in rows[0] or "Name" not in rows[0]:
        raise DataError(f"{p}: expected a 3D Slicer color table CSV with 'LabelValue' and 'Name' columns")
    out: dict[int, str | int] = {}
    for n, row in enumerate(rows, 2):
        if not _is_id(row["LabelValue"] or ""):
            raise DataError(f"{p}: line {n}: LabelValue {row['LabelValue']!r} is not a label id")
        out[int(row["LabelValue"])] = row["Name"] or ""
    return out


def _read_seg_nrrd(p: Path) -> dict[int, str | int]:
    """Segment names and label values from a ``.seg.nrrd`` header (the voxel data is not read)."""
    header: list[str] = []
    with p.open("rb") as f:
        if not f.readline().startswith(b"NRRD"):
            raise DataError(f"{p}: not a NRRD file")
        for raw in f:
            line = raw.decode("latin-1").rstrip("\r\n")
            if not line:
                break
            header.append(line)
    segments: dict[int, dict[str, str]] = {}
    for line in header:
        m = _NRRD_SEGMENT.match(line)
        if m:
            segments.setdefault(int(m.group(1)), {})[m.group(2)] = m.group(3)
    if not segments:
        raise DataError(f"{p}: no segments in the NRRD header (SegmentN_Name keys)")
    layers = {s.get("Layer", "0") for s in segments.values()}
    if len(layers) > 1:
        raise DataError(
            f"{p}: segments lie in {len(layers)} layers (they overlap), so one label id per voxel cannot hold "
            "them; export a labelmap from Slicer"
        )
    out: dict[int, str | int] = {}
    for index, seg in sorted(segments.items()):
        value = seg.get("LabelValue", "")
        if not _is_id(value):
            raise DataError(f"{p}: Segment{index}_LabelValue {value!r} is not a label id")
        out[int(value)] = seg.get("Name", f"Segment_{index}")
    return out


def _is_id(text: object) -> bool:
    return isinstance(text, str) and text.strip().isdigit() and str(int(text)) == text.strip()
