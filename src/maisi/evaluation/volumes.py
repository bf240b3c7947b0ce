"""Finding the volumes an evaluation reads: folders of image/label pairs, datalists, single files.

A *pairs folder* holds ``<name>_image.nii.gz`` and (optionally) ``<name>_label.nii.gz``; generated samples also have
a JSON sidecar (``<name>.json``, ``<name>_meta.json`` or ``<name>_image.json``). A folder of plain ``.nii.gz`` files
(no ``_image`` suffix) is read as images only. A ``datalist.json`` (file, or inside the folder when the folder has no
``*_image`` files) lists images and labels explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maisi.errors import DataError
from maisi.io import read_json

PathLike = str | os.PathLike
IMAGE_SUFFIX = "_image"
LABEL_SUFFIX = "_label"
SIDECAR_SUFFIXES = ("", "_meta", "_image", "_sidecar")
NIFTI_EXTS = (".nii.gz", ".nii")


@dataclass(frozen=True, kw_only=True)
class Case:
    """One volume to evaluate.

    Attributes:
        name: case name (file stem without ``_image``).
        image: image file.
        label: label file, or None.
        sidecar: JSON sidecar file, or None.
    """

    name: str
    image: Path
    label: Path | None = None
    sidecar: Path | None = None

    def read_sidecar(self) -> dict[str, Any]:
        """The sidecar as a dict ({} when there is none)."""
        if self.sidecar is None:
            return {}
        return read_json(self.sidecar, what="sidecar", expect=dict)


def _stem(path: Path) -> str:
    name = path.name
    for ext in NIFTI_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return path.stem


def _sidecar(folder: Path, name: str) -> Path | None:
    for suffix in SIDECAR_SUFFIXES:
        cand = folder / f"{name}{suffix}.json"
        if cand.is_file():
            return cand
    return None


def find_cases(source: PathLike | Sequence[PathLike], *, need_labels: bool = False) -> list[Case]:
    """Cases of a pairs folder, a datalist JSON file, a single NIfTI file, or a list of NIfTI files.

    Args:
        source: see the module docstring.
        need_labels: raise when a case has no label file.

    Returns:
        Cases sorted by name.

    Raises:
        DataError: naming the folder/file when nothing is found or a label is missing.
    """
    if not isinstance(source, str | os.PathLike):
        cases = [Case(name=_stem(Path(p)), image=Path(p)) for p in source]
    else:
        p = Path(source)
        if p.is_file() and p.suffix == ".json":
            cases = _from_datalist(p)
        elif p.is_file():
            cases = [Case(name=_stem(p), image=p)]
        elif p.is_dir():
            cases = _from_folder(p)
        else:
            raise DataError(
                f"{p}: not found (expected a folder of NIfTI files, a datalist JSON or a NIfTI file)"
            )
    if not cases:
        raise DataError(f"{source}: no NIfTI images found")
    names = [c.name for c in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DataError(f"{source}: case names used twice: {dup[:5]}")
    if need_labels:
        missing = [c.name for c in cases if c.label is None]
        if missing:
            raise DataError(f"{source}: no {LABEL_SUFFIX}.nii.gz label for case(s) {missing[:5]}")
    return sorted(cases, key=lambda c: c.name)


def _from_folder(folder: Path) -> list[Case]:
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.lower().endswith(NIFTI_EXTS))
    images = [f for f in files if _stem(f).endswith(IMAGE_SUFFIX)]
    if not images:
        datalist = folder / "datalist.json"
        if datalist.is_file():
            return _from_datalist(datalist)
        plain = [f for f in files if not _stem(f).endswith(LABEL_SUFFIX)]
        return [Case(name=_stem(f), image=f, sidecar=_sidecar(folder, _stem(f))) for f in plain]
    labels = {_stem(f)[: -len(LABEL_SUFFIX)]: f for f in files if _stem(f).endswith(LABEL_SUFFIX)}
    cases = []
    for f in images:
        name = _stem(f)[: -len(IMAGE_SUFFIX)]
        cases.append(Case(name=name, image=f, label=labels.get(name), sidecar=_sidecar(folder, name)))
    return cases


def _from_datalist(path: Path) -> list[Case]:
    from maisi.data.datalist import read_datalist

    cases = []
    for entry in read_datalist(path):
        image = Path(entry["image"])
        name = _stem(image)
        name = name[: -len(IMAGE_SUFFIX)] if name.endswith(IMAGE_SUFFIX) else name
        label = Path(entry["label"]) if "label" in entry else None
        cases.append(Case(name=name, image=image, label=label, sidecar=_sidecar(image.parent, name)))
    return cases


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Items ``rank, rank + world_size, ...``: a round-robin split that covers every item exactly once."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return list(items[rank::world_size])


def summarize(values: Sequence[float]) -> dict[str, float | int]:
    """Count, mean, std, median, min, max of the finite values (NaN/inf entries are skipped and counted)."""
    arr = np.asarray([float(v) for v in values], dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    out: dict[str, float | int] = {"n": int(finite.size), "n_nonfinite": int(arr.size - finite.size)}
    if finite.size:
        out.update(
            mean=float(finite.mean()),
            std=float(finite.std()),
            median=float(np.median(finite)),
            min=float(finite.min()),
            max=float(finite.max()),
        )
    return out


def json_number(x: float) -> float | str | None:
    """A float for JSON: inf as the string 'inf', NaN as None."""
    if x is None:
        return None
    x = float(x)
    if np.isnan(x):
        return None
    if np.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def read_pair(case: Case, *, label_set: str = "auto"):
    """The image and the label map (in MAISI ids) of a case, on one grid.

    The label map of a sample or phantom maisi made (its sidecar says ``label_ids: MAISI``) is read as MAISI ids; any
    other through :func:`maisi.data.labelmaps.read_label_map` in ``label_set`` (``auto``: decided from the map's
    anatomy, or refused), so a real set in another vocabulary is never scored with misread ids.

    Returns:
        ``(image Volume, label Volume)``.
    """
    from maisi.data.labelmaps import read_label_map
    from maisi.data.nifti import Volume, check_same_grid, load_nifti

    if case.label is None:
        raise DataError(f"{case.image}: no label map for case {case.name!r}")
    image = load_nifti(case.image, kind="image")
    meta = case.read_sidecar()
    generated = "MAISI" in (meta.get("label_ids"), meta.get("output", {}).get("label_ids"))
    read = read_label_map(case.label, label_set="maisi" if generated else label_set)
    label = Volume(array=read.label, affine=read.affine, path=str(case.label))
    check_same_grid(image, label)
    return image, label
