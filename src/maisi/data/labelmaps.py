"""Reading a user's label map into MAISI ids: the one entry point for ``prepare``, ``generate --mask``,
``masks index`` and the evaluation commands.

:func:`read_label_map` loads the file (RAS), refuses what is not a label map (non-integer values, negative ids,
4-D stacks unless ``one_hot``), decides the vocabulary (``auto``: from evidence, :mod:`maisi.data.detection`;
otherwise the named or file vocabulary, whose plausibility is still checked and warned about), applies the
``unknown_labels`` policy to ids without a single MAISI id, and records per source id what it became in a
JSON-ready report. Errors are one-line :class:`~maisi.errors.DataError` messages naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from maisi import labels
from maisi.data.detection import detect_vocabulary, read_as
from maisi.data.label_stats import MAX_ID, LabelStats, label_stats
from maisi.data.nifti import load_nifti, to_ras
from maisi.data.plausibility import Assessment
from maisi.data.vocabularies import Vocabulary, resolve
from maisi.errors import DataError

UnknownLabels = Literal["error", "background", "body"]
UNKNOWN_LABELS: tuple[str, ...] = ("error", "background", "body")
#: fewer MAISI structures than this (body and tumours not counted) earn a warning
FEW_STRUCTURES = 10
_TUMOURS = frozenset(labels.TUMORS.values())


@dataclass(frozen=True, eq=False)
class LabelMapRead:
    """A label map read into MAISI ids.

    Attributes:
        label: (X, Y, Z) uint8 MAISI ids, RAS voxel order.
        affine: (4, 4) voxel -> world (RAS, mm).
        vocabulary: name of the vocabulary it was read in (``maisi``, ``totalsegmentator-v2``, a file path...).
        report: JSON-ready mapping report (see :func:`mapping_report`).
        warnings: sentences about what was dropped, doubtful or missing.
    """

    label: np.ndarray
    affine: np.ndarray
    vocabulary: str
    report: dict
    warnings: list[str]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along X, Y, Z."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))


def read_label_map(
    path: str | os.PathLike,
    *,
    label_set: str | os.PathLike | Vocabulary = "auto",
    unknown_labels: UnknownLabels = "error",
    one_hot: bool = False,
) -> LabelMapRead:
    """Read a NIfTI label map into MAISI ids, with a report of what each source id became.

    Args:
        path: ``.nii``/``.nii.gz`` label map (3-D ids, or a 4-D one-hot stack with ``one_hot``).
        label_set: ``"auto"`` (decided from evidence), a built-in vocabulary name (``maisi``,
            ``totalsegmentator-v1``, ``totalsegmentator-v2`` = ``totalsegmentator``, ``totalsegmentator-<task>``),
            a names file (nnU-Net ``dataset.json``, id -> name or id -> MAISI id JSON, ITK-SNAP label description,
            3D Slicer color table or ``.seg.nrrd``) or a :class:`Vocabulary`.
        unknown_labels: what becomes of ids with no single MAISI id (not in the vocabulary, no MAISI counterpart,
            or a whole that MAISI splits): ``"error"`` refuses, ``"background"`` drops them, ``"body"`` makes
            them body envelope (200). Each is listed in the report.
        one_hot: accept a 4-D stack of binary channels: channel k becomes id k when channel 0 is the background
            (the channels cover every voxel once), else id k + 1.

    Returns:
        The :class:`LabelMapRead`.

    Raises:
        DataError: one line naming the file: unreadable, not a label map, vocabulary undecided or implausible
            under ``auto``, or ids without a MAISI id under ``unknown_labels="error"``.
    """
    if unknown_labels not in UNKNOWN_LABELS:
        raise ValueError(f"unknown_labels must be one of {UNKNOWN_LABELS}, got {unknown_labels!r}")
    source = str(path)
    array, affine, notes = _load(path, one_hot=one_hot)
    top = int(array.max()) if array.size else 0
    if top > MAX_ID:
        raise DataError(f"{source}: label id {top} is larger than any label vocabulary allows ({MAX_ID})")
    stats = label_stats(array, affine)
    warnings: list[dict] = [{"code": "one-hot", "text": n} for n in notes]
    if not isinstance(label_set, Vocabulary) and os.fspath(label_set) == "auto":
        detection = detect_vocabulary(stats, source=source)
        vocabulary, evidence = detection.vocabulary, detection.summary()
    else:
        vocabulary = resolve(label_set)
        evidence = {"decided_by": "given"}
        assessment = read_as(stats, vocabulary).assessment
        evidence["checks"] = assessment.summary()
        warnings += _doubts_about_given(assessment, vocabulary)
    lut, notes, dropped = _policy(stats, vocabulary, unknown_labels, source=source)
    if dropped:
        warnings.append({"code": "unmapped", "text": dropped})
    # every MAISI id (<= 200) fits in uint8; -1 marks ids absent from the map, never looked up
    label = np.where(lut < 0, 0, lut).astype(np.uint8)[array]
    report = mapping_report(stats, vocabulary, lut, notes, source=source, evidence=evidence)
    report["unknown_labels"] = unknown_labels
    warnings += _coverage_warnings(lut, stats)
    report["warnings"] = warnings
    return LabelMapRead(
        label=label,
        affine=affine,
        vocabulary=vocabulary.name,
        report=report,
        warnings=[w["text"] for w in warnings],
    )


# ------------------------------------------------------------------------------------------------------ loading


def _load(path: str | os.PathLike, *, one_hot: bool) -> tuple[np.ndarray, np.ndarray, list[str]]:
    p = Path(path)
    shape = _header_shape(p)
    if shape is not None and len(shape) >= 4 and int(np.prod(shape[3:])) > 1:
        channels = int(np.prod(shape[3:]))
        if not one_hot:
            raise DataError(
                f"{p}: a 4-D stack of {channels} volumes {tuple(shape)}, not a label map; if it is one-hot "
                "(one binary channel per structure) pass --one-hot, else give a 3-D map of integer ids"
            )
        return _from_one_hot(p)
    vol = load_nifti(p, kind="label")
    return vol.array, vol.affine, []


def _header_shape(p: Path) -> tuple[int, ...] | None:
    try:
        return tuple(int(n) for n in nib.load(str(p)).shape)
    except Exception:  # load_nifti gives the one-line reason
        return None


def _from_one_hot(p: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    img = nib.load(str(p))
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:
        raise DataError(f"{p}: corrupt or truncated voxel data ({type(e).__name__})") from None
    data = data.reshape(data.shape[:3] + (-1,))
    binary = data.astype(bool)
    if not np.array_equal(binary, data):
        raise DataError(f"{p}: --one-hot needs binary channels (0/1); this stack holds other values")
    data, affine = to_ras(binary, img.affine)
    cover = data.sum(axis=3, dtype=np.int32)
    if int(cover.max()) > 1:
        raise DataError(
            f"{p}: {int((cover > 1).sum())} voxels are set in more than one channel; one-hot channels must not "
            "overlap"
        )
    if bool(np.all(cover == 1)):  # channel 0 is the background
        ids, note = np.argmax(data, axis=3), "one-hot: channel k became id k (channel 0 is the background)"
    else:
        ids, note = np.where(cover == 1, np.argmax(data, axis=3) + 1, 0), "one-hot: channel k became id k + 1"
    if not ids.any():
        raise DataError(f"{p}: label map is empty (every voxel is 0)")
    return np.ascontiguousarray(ids.astype(np.uint16 if ids.max() > 255 else np.uint8)), affine, [note]


# ------------------------------------------------------------------------------------------------------ mapping


def _policy(
    stats: LabelStats, vocabulary: Vocabulary, unknown: UnknownLabels, *, source: str
) -> tuple[np.ndarray, dict[int, str], str]:
    """Lookup table (max id + 1,) to MAISI ids after the unknown-labels policy; status notes; a warning."""
    lut = vocabulary.lookup(int(stats.ids.max()) if len(stats.ids) else 0)
    unmapped = [int(i) for i in stats.ids if lut[i] < 0]
    notes: dict[int, str] = {}
    if not unmapped:
        return lut, notes, ""
    reasons = {i: vocabulary.meaning(i) for i in unmapped}
    described = [f"{vocabulary.describe(i)} ({reasons[i]})" for i in unmapped]
    if unknown == "error":
        shown = "; ".join(described[:4]) + (f"; +{len(described) - 4} more" if len(described) > 4 else "")
        raise DataError(
            f"{source}: {len(unmapped)} label{'s' if len(unmapped) > 1 else ''} without a MAISI id under "
            f"{vocabulary.name}: {shown}; pass --unknown-labels background or body, or a mapping JSON that "
            "names their MAISI ids"
        )
    target = labels.BACKGROUND if unknown == "background" else labels.BODY
    for i in unmapped:
        lut[i] = target
        notes[i] = reasons[i]
    where = "background" if unknown == "background" else f"body ({labels.BODY})"
    count = f"{len(unmapped)} label{'s' if len(unmapped) > 1 else ''}"
    return lut, notes, f"{count} set to {where}: " + "; ".join(described[:6])


def mapping_report(
    stats: LabelStats,
    vocabulary: Vocabulary,
    lut: np.ndarray,
    notes: dict[int, str],
    *,
    source: str,
    evidence: dict,
) -> dict:
    """JSON-ready report: per source id its name, voxels, mL, the MAISI id and name it became, and its status
    (``mapped``, ``merged`` with other source ids, ``dropped`` to background, ``body``)."""
    targets: dict[int, list[int]] = {}
    for i in stats.ids.tolist():
        targets.setdefault(int(lut[i]), []).append(i)
    rows = []
    for k, i in enumerate(stats.ids.tolist()):
        dst = int(lut[i])
        entry = vocabulary.entries.get(i)
        row = {
            "source_id": i,
            "source_name": entry.source_name if entry else None,
            "voxels": int(stats.voxels[k]),
            "ml": round(float(stats.voxels[k]) * stats.voxel_ml, 3),
            "maisi_id": dst,
            "maisi_name": labels.name_of(dst),
        }
        if i in notes:
            row["status"] = "dropped" if dst == labels.BACKGROUND else "body"
            row["note"] = notes[i]
        elif len(targets[dst]) > 1:
            row["status"] = "merged"
            others = [s for s in targets[dst] if s != i]
            row["note"] = f"with {', '.join(map(str, others))} into {labels.name_of(dst)}"
        else:
            row["status"] = "mapped"
        rows.append(row)
    return {
        "file": source,
        "vocabulary": vocabulary.name,
        "evidence": evidence,
        "voxel_ml": round(stats.voxel_ml, 6),
        "labels": rows,
    }


def _doubts_about_given(a: Assessment, vocabulary: Vocabulary) -> list[dict]:
    if a.plausible:
        return []
    if a.mirrored:
        text = (
            f"left and right look swapped under {vocabulary.name} ({a.count('laterality')} left/right checks "
            f"fail, e.g. {a.failed[0].text}): is the map mirrored or its affine wrong?"
        )
        return [{"code": "mirrored", "text": text}]
    shown = "; ".join(f.text for f in a.failed[:3])
    return [{"code": "implausible", "text": f"doubtful under {vocabulary.name}: {shown}"}]


def _coverage_warnings(lut: np.ndarray, stats: LabelStats) -> list[dict]:
    out = lut[stats.ids] if len(stats.ids) else np.zeros(0, dtype=lut.dtype)
    present = set(out.tolist()) - {labels.BACKGROUND}
    warnings = []
    if labels.BODY not in present:
        warnings.append(
            {
                "code": "no-body",
                "text": f"no body envelope (id {labels.BODY}): as a generation mask the ControlNet sees a body "
                "derived from the organs' outline, not the patient's contour",
            }
        )
    structures = present - {labels.BODY} - _TUMOURS
    if len(structures) < FEW_STRUCTURES:
        names = ", ".join(labels.name_of(i) for i in sorted(structures)[:5])
        warnings.append(
            {
                "code": "few-structures",
                "text": f"only {len(structures)} MAISI structure{'s' if len(structures) != 1 else ''} ({names}"
                f"{', ...' if len(structures) > 5 else ''}): the ControlNet was trained on maps with every "
                "structure in view labelled, so it sees the rest as unlabelled body and invents it",
            }
        )
    return warnings


def format_report(report: dict) -> str:
    """The mapping report as a short text table (for ``--verbose``)."""
    lines = [f"{report['file']}: read as {report['vocabulary']} ({_evidence_line(report['evidence'])})"]
    lines.append(f"  {'id':>5}  {'source name':<28} {'voxels':>10} {'mL':>9}  {'-> MAISI':<32} status")
    for row in report["labels"]:
        target = f"{row['maisi_id']} {row['maisi_name']}"
        status = row["status"] + (f" ({row['note']})" if "note" in row else "")
        lines.append(
            f"  {row['source_id']:>5}  {str(row['source_name'] or '?')[:28]:<28} {row['voxels']:>10} "
            f"{row['ml']:>9.1f}  {target[:32]:<32} {status}"
        )
    for w in report.get("warnings", []):
        lines.append(f"  warning: {w['text']}")
    return "\n".join(lines)


def _evidence_line(evidence: dict) -> str:
    checks = evidence.get("checks", {})
    facts = ", ".join(f"{k} {v}" for k, v in checks.items())
    return f"{evidence.get('decided_by', '?')}" + (f"; {facts}" if facts else "")
