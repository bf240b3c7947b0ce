"""Turning user volumes into a MAISI training set: RAS, common spacing, padded size, MAISI label ids, body 200.

:func:`prepare` writes ``<name>_image.nii.gz`` / ``<name>_label.nii.gz`` and ``datalist.json`` into an output
folder. Every step keeps the voxel-to-world mapping exact: resampling and padding update the affine so that a
world point keeps its value.

Choices: sizes are padded (never cropped) up to a multiple of ``divisor``, centred, with -1000 HU (CT) or the
image minimum (MRI) and label 0. A label map without any organ that marks a body region is an error (naming
the file) unless ``require_regions=False``, in which case its entry has no region indices.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from maisi import labels as maisi_labels
from maisi import resources
from maisi.data.body import add_body_from_label, add_body_label
from maisi.data.datalist import write_datalist
from maisi.data.labelmaps import UNKNOWN_LABELS, UnknownLabels, read_label_map
from maisi.data.nifti import (
    Volume,
    check_same_grid,
    is_nifti_path,
    load_nifti,
    nifti_stem,
    save_nifti,
    to_ras,
)
from maisi.data.vocabularies import Vocabulary, resolve
from maisi.errors import DataError
from maisi.io import OutputExistsError, refuse_overwriting_inputs

PathLike = str | os.PathLike
#: File-name endings removed when pairing images with labels by name (``case1_0000`` ~ ``case1_seg``).
NAME_SUFFIXES = ("_0000", "_image", "_img", "_ct", "_mr", "_mri", "_label", "_labels", "_seg", "_mask")
DATALIST_NAME = "datalist.json"
CT_PAD_HU = -1000.0


def resample(volume: Volume, spacing: Sequence[float], *, order: Literal[0, 1]) -> Volume:
    """Resample to voxel size ``spacing`` keeping the field of view's outer edges and the axis directions.

    New shape ``round(shape * old / new)``; voxel ``i`` of the new grid sits at old voxel coordinate
    ``(i + 0.5) * r - 0.5`` with ``r = new / old``, and the affine is updated to match. Linear interpolation
    (``order=1``) for images, nearest neighbour (``order=0``) for label maps; separable, so exact trilinear.

    Args:
        volume: (X, Y, Z) volume.
        spacing: (3,) target voxel size in mm.
    """
    new = np.asarray(spacing, dtype=np.float64)
    if new.shape != (3,) or np.any(new <= 0):
        raise ValueError(f"spacing must be three positive numbers, got {list(spacing)}")
    old = np.asarray(volume.spacing)
    if np.allclose(old, new, rtol=0, atol=1e-6):
        return volume
    ratio = new / old
    shape = np.maximum(1, np.round(np.asarray(volume.shape) * old / new)).astype(int)
    offset = 0.5 * ratio - 0.5
    array = volume.array
    for axis in range(3):
        coords = np.arange(shape[axis]) * ratio[axis] + offset[axis]
        array = _resample_axis(array, coords, axis=axis, order=order)
    step = np.eye(4)
    step[:3, :3] = np.diag(ratio)
    step[:3, 3] = offset
    return Volume(
        array=array.astype(volume.array.dtype, copy=False), affine=volume.affine @ step, path=volume.path
    )


def _resample_axis(array: np.ndarray, coords: np.ndarray, *, axis: int, order: int) -> np.ndarray:
    n = array.shape[axis]
    coords = np.clip(coords, 0, n - 1)
    if order == 0:
        return np.take(array, np.rint(coords).astype(np.intp), axis=axis)
    i0 = np.floor(coords).astype(np.intp)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (coords - i0).astype(np.float32)
    shape = [1, 1, 1]
    shape[axis] = -1
    w = w.reshape(shape)
    a = np.take(array, i0, axis=axis).astype(np.float32, copy=False)
    b = np.take(array, i1, axis=axis).astype(np.float32, copy=False)
    return a * (1 - w) + b * w


def pad_to_multiple(volume: Volume, divisor: int, *, value: float) -> Volume:
    """Pad each axis (centred) up to the next multiple of ``divisor`` with ``value``; the affine shifts so
    every original voxel keeps its world position."""
    if divisor < 1:
        raise ValueError(f"divisor must be a positive integer, got {divisor}")
    shape = np.asarray(volume.shape)
    target = -(-shape // divisor) * divisor
    before = (target - shape) // 2
    after = target - shape - before
    if not np.any(target - shape):
        return volume
    array = np.pad(volume.array, list(zip(before, after)), mode="constant", constant_values=value)
    shift = np.eye(4)
    shift[:3, 3] = -before
    return Volume(array=array, affine=volume.affine @ shift, path=volume.path)


def _collect(source: PathLike | Sequence[PathLike], *, what: str) -> list[Path]:
    if isinstance(source, str | os.PathLike):
        p = Path(source)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and is_nifti_path(f))
            if not files:
                raise DataError(f"{p}: no .nii or .nii.gz files in the {what} folder")
            return files
        return [p]
    files = [Path(f) for f in source]
    if not files:
        raise DataError(f"no {what} files given")
    return files


def case_name(path: PathLike) -> str:
    """Name used to pair an image with its label: the file stem without a known suffix (``_0000``, ``_seg``...)."""
    stem = nifti_stem(path)
    for suffix in NAME_SUFFIXES:
        if stem.lower().endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)]
    return stem


def pair_files(
    images: PathLike | Sequence[PathLike], labels: PathLike | Sequence[PathLike] | None
) -> list[tuple[str, Path, Path | None]]:
    """(name, image, label) triples. Two explicit lists pair by position; otherwise files pair by
    :func:`case_name`.

    Raises:
        DataError: naming duplicated or unmatched files.
    """
    image_files = _collect(images, what="image")
    if labels is None:
        return _unique([(case_name(f), f, None) for f in image_files])
    label_files = _collect(labels, what="label")
    both_lists = not isinstance(images, str | os.PathLike) and not isinstance(labels, str | os.PathLike)
    if both_lists:
        if len(image_files) != len(label_files):
            raise DataError(f"got {len(image_files)} image files but {len(label_files)} label files")
        return _unique([(case_name(i), i, lab) for i, lab in zip(image_files, label_files)])
    by_name: dict[str, Path] = {}
    for f in label_files:
        key = case_name(f)
        if key in by_name:
            raise DataError(f"{f}: label name {key!r} also used by {by_name[key]}")
        by_name[key] = f
    triples = [(case_name(f), f, by_name.pop(case_name(f), None)) for f in image_files]
    missing = [str(f) for _, f, lab in triples if lab is None]
    extra = [str(f) for f in by_name.values()]
    if missing or extra:
        raise DataError(
            f"files do not pair by name: no label file matches image(s) {missing}, "
            f"no image file matches label(s) {extra}"
        )
    return _unique(triples)


def _unique(triples: list[tuple[str, Path, Path | None]]) -> list[tuple[str, Path, Path | None]]:
    seen: dict[str, Path] = {}
    for name, image, _ in triples:
        if name in seen:
            raise DataError(f"{image}: case name {name!r} also used by {seen[name]}; rename one of them")
        seen[name] = image
    return triples


def prepare(
    *,
    images: PathLike | Sequence[PathLike],
    labels: PathLike | Sequence[PathLike] | None = None,
    output_dir: PathLike,
    spacing: Sequence[float] | None = None,
    divisor: int | None = 128,
    modality: str = "ct",
    label_set: str | PathLike | Vocabulary = "auto",
    folds: int = 5,
    unknown_labels: UnknownLabels = "error",
    one_hot: bool = False,
    require_regions: bool = True,
    overwrite: bool = False,
) -> Path:
    """Convert images (and label maps) into a MAISI-ready folder with a datalist.

    Per case: load in RAS; read the label map into MAISI ids (:func:`maisi.data.labelmaps.read_label_map`: the
    vocabulary decided or given, unknown ids by ``unknown_labels``); resample (image linear, label nearest) to ``spacing``;
    add the body envelope 200 if absent (from the CT; from the labels for other modalities); pad to a multiple
    of ``divisor``; compute region indices; write ``<name>_image.nii.gz`` and ``<name>_label.nii.gz``
    (CT images as int16 HU, others float32). Folds are assigned round-robin over names in sorted order. Each
    entry with a label map records its mapping report under ``"label_mapping"`` (per source id: the MAISI id and
    name it became, voxels and mL, dropped or merged); warnings about a label map are issued as ``UserWarning``.

    Args:
        images: image files, or a folder of ``.nii``/``.nii.gz`` files.
        labels: label files (paired by position with an image list), a folder (paired by name), or None.
        output_dir: output folder (created).
        spacing: target voxel size (mm); None keeps each volume's own spacing.
        divisor: pad each size up to a multiple of this; None disables padding.
        modality: a key of ``modality_mapping.json`` (``"ct"``, ``"mri"``, ``"mri_t1"``...).
        label_set: ``"auto"`` (decided per file from evidence, or refused), a built-in vocabulary (``"maisi"``,
            ``"totalsegmentator-v1"``, ``"totalsegmentator-v2"``...) or a names/mapping file (see
            :func:`~maisi.data.labelmaps.read_label_map`).
        folds: number of cross-validation folds.
        unknown_labels: ``"error"``, ``"background"`` or ``"body"`` for ids without a single MAISI id.
        one_hot: label files are 4-D one-hot stacks (converted to ids).
        require_regions: raise when a label map has no region-marking organ (else omit its region indices).
        overwrite: replace existing outputs.

    Returns:
        Path of the written ``datalist.json``.

    Raises:
        DataError: naming the file for any invalid input. OutputExistsError: when outputs exist.
    """
    known = resources.load_json("modality_mapping.json")
    if modality not in known:
        raise ValueError(f"modality must be one of {sorted(known)}, got {modality!r}")
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if divisor is not None and divisor < 1:
        raise ValueError(f"divisor must be a positive integer or None, got {divisor}")
    if unknown_labels not in UNKNOWN_LABELS:
        raise ValueError(f"unknown_labels must be one of {UNKNOWN_LABELS}, got {unknown_labels!r}")
    if isinstance(label_set, Vocabulary) or os.fspath(label_set) != "auto":
        label_set = resolve(label_set)  # once, so a bad name or file fails before any case is read
    is_ct = modality.startswith("ct")
    out = Path(output_dir)
    cases = sorted(pair_files(images, labels), key=lambda c: c[0])
    datalist = out / DATALIST_NAME
    targets = [datalist] + [
        out / f"{n}_{k}.nii.gz" for n, _, lab in cases for k in ("image", "label")[: 1 + (lab is not None)]
    ]
    refuse_overwriting_inputs(targets, [p for _, image, label in cases for p in (image, label)])
    if not overwrite:
        existing = [str(t) for t in targets if t.exists()]
        if existing:
            raise OutputExistsError(
                f"{existing[0]}: already exists; refusing to overwrite (pass overwrite=True)"
            )

    entries = []
    for index, (name, image_path, label_path) in enumerate(cases):
        image, label, report = prepare_case(
            image_path,
            label_path,
            label_set=label_set,
            spacing=spacing,
            divisor=divisor,
            modality=modality,
            unknown_labels=unknown_labels,
            one_hot=one_hot,
        )
        entry: dict = {"image": str(out / f"{name}_image.nii.gz")}
        if label is not None:
            entry["label"] = str(out / f"{name}_label.nii.gz")
            entry |= _region_keys(label.array, source=str(label_path), required=require_regions)
            entry["label_mapping"] = report
        entry |= {
            "dim": list(image.shape),
            "spacing": [round(s, 6) for s in image.spacing],
            "modality": modality,
            "fold": index % folds,
        }
        disk = np.clip(np.rint(image.array), -32768, 32767).astype(np.int16) if is_ct else image.array
        save_nifti(entry["image"], disk, image.affine, overwrite=overwrite)
        if label is not None:
            save_nifti(entry["label"], label.array, label.affine, overwrite=overwrite, dtype=np.uint8)
        entries.append(entry)
    return write_datalist(datalist, entries, overwrite=overwrite)


def prepare_case(
    image_path: PathLike,
    label_path: PathLike | None = None,
    *,
    label_set: str | PathLike | Vocabulary = "auto",
    spacing: Sequence[float] | None = None,
    divisor: int | None = None,
    modality: str = "ct",
    unknown_labels: UnknownLabels = "error",
    one_hot: bool = False,
) -> tuple[Volume, Volume | None, dict | None]:
    """One case of :func:`prepare`, in memory: load (RAS), read labels into MAISI ids, resample, add body 200, pad.

    Args:
        image_path: image file.
        label_path: label file on the image's grid, or None.
        label_set, spacing, divisor, modality, unknown_labels, one_hot: as in :func:`prepare`.

    Returns:
        The image (float32, (X, Y, Z)), the MAISI label map (uint8) or None, and the label map's mapping report
        (None without labels).
    """
    is_ct = modality.startswith("ct")
    image = load_nifti(image_path, kind="image")
    label, report = None, None
    if label_path is not None:
        _check_grid_first(image, label_path)
        read = read_label_map(label_path, label_set=label_set, unknown_labels=unknown_labels, one_hot=one_hot)
        label = Volume(array=read.label, affine=read.affine, path=str(label_path))
        check_same_grid(image, label)
        report = _prepared_report(read.report, body_from="the CT" if is_ct else "the labels")
        for w in report["warnings"]:
            warnings.warn(f"{label_path}: {w['text']}", stacklevel=3)
    if spacing is not None:
        image = resample(image, spacing, order=1)
        label = None if label is None else resample(label, spacing, order=0)
    if label is not None:
        if is_ct:
            body = add_body_label(label.array, image.array, image.spacing)
        else:
            body = add_body_from_label(label.array, image.spacing)
        label = Volume(array=body, affine=image.affine, path=label.path)
    if divisor is not None:
        fill = CT_PAD_HU if is_ct else float(image.array.min())
        image = pad_to_multiple(image, divisor, value=fill)
        label = None if label is None else pad_to_multiple(label, divisor, value=maisi_labels.BACKGROUND)
    return image, label, report


def _check_grid_first(image: Volume, label_path: PathLike) -> None:
    """Compare the label file's grid (from its header, reoriented like :func:`load_nifti`) with the image's before
    its ids are read, so a grid mismatch is reported as such, not as a vocabulary doubt."""
    try:
        header = nib.load(str(label_path))
        shape = tuple(int(n) for n in header.shape[:3])
    except Exception:  # read_label_map reports an unreadable file in its own words
        return
    if len(shape) != 3:
        return
    # a zero-stride stand-in: reorienting it permutes the shape without touching voxel data
    ras, affine = to_ras(np.broadcast_to(np.uint8(0), shape), header.affine)
    check_same_grid(image, Volume(array=ras, affine=affine, path=str(label_path)))


def _prepared_report(report: dict, *, body_from: str) -> dict:
    """The reader's report, with what prepare does about a missing body envelope instead of the generator's."""
    out = dict(report)
    has_body = any(row["maisi_id"] == maisi_labels.BODY for row in report["labels"])
    out["body"] = "in the label map" if has_body else f"added from {body_from}"
    out["warnings"] = [w for w in report["warnings"] if w["code"] != "no-body"]
    return out


def _region_keys(label: np.ndarray, *, source: str, required: bool) -> dict:
    try:
        top, bottom = maisi_labels.regions_of(label)
    except DataError as e:
        if required:
            raise DataError(f"{source}: {e} (pass require_regions=False to omit region indices)") from None
        warnings.warn(f"{source}: {e}; entry written without region indices", stacklevel=3)
        return {}
    return {
        "top_region_index": [int(v) for v in maisi_labels.region_one_hot(top)],
        "bottom_region_index": [int(v) for v in maisi_labels.region_one_hot(bottom)],
    }
