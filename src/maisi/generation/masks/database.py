"""A folder of label maps as a mask database: indexing, retrieval, tumour augmentation.

``maisi masks index DIR`` writes ``DIR/masks_index.json``: one entry per label map with the keys of the official
MAISI ``database.json`` (``pseudo_label_filename``, ``label_list``, ``dim``, ``spacing``, ``top_region_index``,
``bottom_region_index``) plus the vocabulary and the volume of each label. Retrieval follows the official rules:
a candidate holds every requested anatomy, spans every requested body region, holds no tumour that was not
requested, and candidates are ranked by field-of-view, size and spacing closeness to the request. The chosen mask
is fitted to the requested grid and its tumours are moved and rescaled inside their host organ.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from maisi import labels
from maisi.errors import DataError, MaisiError, RequestError
from maisi.generation.grid import fit_to_grid
from maisi.generation.masks.base import MaskSample
from maisi.generation.masks.file import LabelReading
from maisi.generation.request import check_anatomy, check_body_region
from maisi.generation.seeds import derive_seed
from maisi.io import read_json, write_json

INDEX_NAME = "masks_index.json"
INDEX_FORMAT = "maisi-mask-index"
#: a tumour moved by augmentation is kept only if at least this fraction of it lies inside its host organ
MIN_TUMOR_SURVIVAL = 0.8
#: isotropic scale range of tumour augmentation
TUMOR_SCALE = (0.8, 1.25)
#: number of candidates (best first) one sample chooses from
TOP_K = 5


# ----------------------------------------------------------------------------------------------------------------
# indexing


def _region_one_hot(index: int) -> list[int]:
    return [int(v) for v in labels.region_one_hot(index)]


def index_entry(path: Path, root: Path, reading: LabelReading = LabelReading()) -> dict[str, Any]:
    """Index facts of one label map (MAISI ids after :func:`maisi.data.labelmaps.read_label_map`)."""
    read = reading.read(path)
    label, vocab = read.label, read.vocabulary
    spacing = [round(float(s), 6) for s in read.spacing]
    ids, counts = np.unique(label, return_counts=True)
    voxel_ml = float(np.prod(spacing)) / 1000.0
    entry: dict[str, Any] = {
        "pseudo_label_filename": path.relative_to(root).as_posix(),
        "label_list": [int(i) for i in ids if i != 0],
        "dim": [int(n) for n in label.shape],
        "spacing": spacing,
        "vocabulary": vocab,
        "warnings": list(read.warnings),
        "volumes_ml": {str(int(i)): round(float(c) * voxel_ml, 3) for i, c in zip(ids, counts) if i != 0},
    }
    try:
        top, bottom = labels.regions_of(label)
        entry["top_region_index"] = _region_one_hot(top)
        entry["bottom_region_index"] = _region_one_hot(bottom)
    except DataError:
        pass  # no marker organ: the entry matches only requests without a body region constraint
    return entry


def index_masks(
    folder: str | os.PathLike,
    *,
    output: str | os.PathLike | None = None,
    overwrite: bool = False,
    reading: LabelReading = LabelReading(),
) -> Path:
    """Index every ``.nii``/``.nii.gz`` label map under ``folder`` (recursively) into a JSON file.

    Files that cannot be read, whose vocabulary cannot be told (``reading``: vocabulary, unknown ids) or that hold
    ids outside it are listed under ``skipped`` with the reason, not indexed.

    Returns:
        The index path (default ``folder/masks_index.json``).
    """
    from maisi.data.nifti import is_nifti_path

    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root}: mask folder not found")
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_nifti_path(p))
    if not files:
        raise DataError(f"{root}: no .nii or .nii.gz files found")
    masks, skipped = [], []
    for p in files:
        try:
            masks.append(index_entry(p, root, reading))
        except MaisiError as e:
            skipped.append({"file": p.relative_to(root).as_posix(), "reason": str(e)})
    out = Path(output) if output is not None else root / INDEX_NAME
    write_json(
        out,
        {"format": INDEX_FORMAT, "version": 1, "root": ".", "masks": masks, "skipped": skipped},
        overwrite=overwrite,
    )
    return out


def load_index(path: str | os.PathLike) -> tuple[list[dict[str, Any]], Path]:
    """Entries of a mask database, each with its label map's absolute ``path``, and the database folder.

    Accepts a folder holding ``masks_index.json`` (``maisi masks index``), our index file, an official MAISI
    ``database.json`` (a list of entries; files relative to the JSON's folder, or its ``masks/`` subfolder when
    that exists), or an official weights folder holding the downloaded mask database (its candidate list,
    :func:`maisi.networks.candidates.load_candidate_list`). File names are input text: each must resolve inside
    the database folder, or the database is refused.
    """
    p = Path(path)
    if p.is_dir() and not (p / INDEX_NAME).is_file() and _official_database(p):
        from maisi.networks.candidates import load_candidate_list

        entries = load_candidate_list(p)
        return [{"vocabulary": "maisi", **e} for e in entries], p.resolve()
    if p.is_dir():
        p = p / INDEX_NAME
        if not p.is_file():
            raise DataError(f"{p.parent}: no {INDEX_NAME}; run `maisi masks index {p.parent}` first")
    if not p.is_file():
        raise DataError(f"{p}: mask database not found")
    data = read_json(p, what="mask index")
    if isinstance(data, dict) and data.get("format") == INDEX_FORMAT:
        entries, root = list(data["masks"]), p.parent / str(data.get("root", "."))
    elif isinstance(data, list):
        entries, root = data, p.parent / "masks" if (p.parent / "masks").is_dir() else p.parent
    else:
        raise DataError(
            f"{p}: not a mask index (expected {INDEX_FORMAT!r} or an official database.json list)"
        )
    top = root.resolve()
    return [_resolved(e, root, top, f"{p}: entry {i}") for i, e in enumerate(entries)], top


def _official_database(folder: Path) -> bool:
    from maisi.networks.official import official_dir

    return official_dir(folder) is not None and (folder / "datasets").is_dir()


def _resolved(entry: Any, root: Path, top: Path, where: str) -> dict[str, Any]:
    """The entry with the absolute ``path`` of its label map, which must lie inside the database folder."""
    name = entry.get("pseudo_label_filename") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        raise DataError(f"{where}: expected an object naming its label map in 'pseudo_label_filename'")
    path = (root / name).resolve()
    if not path.is_relative_to(top):
        raise DataError(f"{where}: {name!r} lies outside the database folder {top}; refusing the index")
    return {**entry, "path": str(path)}


# ----------------------------------------------------------------------------------------------------------------
# retrieval


def _region_span(entry: dict[str, Any]) -> tuple[int, int] | None:
    """The entry's top and bottom body regions: recorded, or else derived from the labels it lists."""
    if "top_region_index" in entry and "bottom_region_index" in entry:
        top = [i for i, v in enumerate(entry["top_region_index"]) if v]
        bottom = [i for i, v in enumerate(entry["bottom_region_index"]) if v]
        return (top[0], bottom[0]) if top and bottom else None
    try:
        return labels.regions_of(np.asarray(entry.get("label_list", [])))
    except DataError:
        return None


def matches(entry: dict[str, Any], anatomy_ids: Sequence[int], regions: Sequence[int]) -> bool:
    """Official candidate rule: all anatomy present, all regions spanned, no unrequested tumour."""
    present = set(entry["label_list"])
    if not set(anatomy_ids) <= present:
        return False
    span = _region_span(entry)
    if regions and span is not None and any(r < span[0] or r > span[1] for r in regions):
        return False
    if regions and span is None:
        return False
    return not any(t in present and t not in anatomy_ids for t in labels.TUMORS.values())


def closeness(entry: dict[str, Any], size: Sequence[int], spacing: Sequence[float]) -> float:
    """Official ranking score (smaller is closer): per axis |FOV difference| / 10 mm + |size difference| / 100
    + |spacing difference| (mm)."""
    score = 0.0
    for n, s, m, t in zip(entry["dim"], entry["spacing"], size, spacing):
        score += abs(abs(n * s) - m * t) / 10.0 + abs(abs(n) - m) / 100.0 + abs(abs(s) - t)
    return score


def rank_candidates(
    entries: Sequence[dict[str, Any]],
    *,
    anatomy_ids: Sequence[int],
    regions: Sequence[int],
    size: Sequence[int],
    spacing: Sequence[float],
) -> list[dict[str, Any]]:
    """Matching entries, closest first (ties keep index order)."""
    found = [e for e in entries if matches(e, anatomy_ids, regions)]
    return sorted(found, key=lambda e: closeness(e, size, spacing))


# ----------------------------------------------------------------------------------------------------------------
# tumour augmentation


def _host_fill(label: np.ndarray, tumor_mask: np.ndarray, hosts: Sequence[int]) -> int:
    ring = ndi.binary_dilation(tumor_mask, iterations=2) & ~tumor_mask
    around = label[ring]
    counts = [(int(np.count_nonzero(around == h)), h) for h in hosts]
    best = max(counts)
    return best[1] if best[0] > 0 else int(hosts[0])


def _transformed(mask: np.ndarray, scale: float, shift: np.ndarray) -> np.ndarray:
    """``mask`` scaled by ``scale`` about its centroid, then moved by ``shift`` voxels (nearest neighbour)."""
    centre = np.array(ndi.center_of_mass(mask))
    target = centre + shift
    # output voxel o samples input voxel centre + (o - target) / scale
    matrix = np.eye(3) / scale
    offset = centre - target / scale
    return ndi.affine_transform(mask.astype(np.uint8), matrix, offset=offset, order=0, mode="constant") > 0


def augment_tumors(
    label: np.ndarray,
    rng: np.random.Generator,
    *,
    tries: int = 10,
    min_survival: float = MIN_TUMOR_SURVIVAL,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Move and rescale every tumour inside its host organ.

    For each tumour id present: draw a scale in :data:`TUMOR_SCALE` and a new centre among the host's voxels;
    the moved tumour is accepted when at least ``min_survival`` of it lies inside the host (the part outside is
    dropped); its old voxels become host tissue. Up to ``tries`` draws, else the tumour stays.

    Returns:
        The augmented map and one record per tumour (``accepted``, ``scale``, ``survival``, voxel counts).
    """
    out = np.array(label, copy=True)
    records = []
    for tumor, hosts in labels.TUMOR_HOSTS.items():
        old = out == tumor
        if not old.any():
            continue
        host_region = np.isin(out, hosts) | old
        candidates = np.argwhere(host_region)
        record: dict[str, Any] = {
            "tumor": labels.name_of(tumor),
            "accepted": False,
            "voxels_before": int(old.sum()),
        }
        centre = np.array(ndi.center_of_mass(old))
        for _ in range(tries):
            scale = float(rng.uniform(*TUMOR_SCALE))
            target = candidates[int(rng.integers(len(candidates)))].astype(float)
            new = _transformed(old, scale, target - centre)
            size = int(new.sum())
            kept = new & host_region
            survival = float(kept.sum()) / size if size else 0.0
            if size and survival >= min_survival:
                out[old] = _host_fill(out, old, hosts)
                out[kept] = tumor
                record.update(
                    accepted=True,
                    scale=round(scale, 4),
                    survival=round(survival, 4),
                    voxels_after=int(kept.sum()),
                )
                break
        records.append(record)
    return out, records


# ----------------------------------------------------------------------------------------------------------------
# the source


class DatabaseMaskSource:
    """Masks retrieved from an index (see :func:`index_masks`), fitted to the request grid, tumours augmented.

    Args:
        database: index folder or file (see :func:`load_index`).
        size: requested output size.
        spacing: requested spacing.
        seed: base seed (the choice among the closest candidates and the augmentation depend on it).
        body_region: regions the mask must span.
        anatomy: anatomy the mask must contain (also after fitting to the grid).
        augment: move/rescale tumours.
        reading: how the masks are read; each file is read again in the vocabulary its entry names, checked
            against it (an unknown or unreadable vocabulary is decided from the file's evidence).
    """

    name = "database"

    def __init__(
        self,
        database: str | os.PathLike,
        *,
        size: Sequence[int],
        spacing: Sequence[float],
        seed: int = 0,
        body_region: Sequence[str] = (),
        anatomy: Sequence[str] = (),
        augment: bool = True,
        reading: LabelReading = LabelReading(),
    ) -> None:
        entries, self.root = load_index(database)
        self.reading = reading
        self.database = str(database)
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        self.seed = int(seed)
        self.augment = augment
        self.anatomy_ids = check_anatomy(anatomy)
        regions = check_body_region(body_region)
        self.candidates = rank_candidates(
            entries, anatomy_ids=self.anatomy_ids, regions=regions, size=self.size, spacing=self.spacing
        )
        if not self.candidates:
            raise RequestError(
                f"{database}: none of {len(entries)} indexed masks holds anatomy {list(anatomy)} spanning body "
                f"region {list(body_region)} without unrequested tumours"
            )

    def __call__(self, index: int, attempt: int = 0) -> MaskSample:
        mask_seed = derive_seed(self.seed, index, attempt, stream="mask")
        rng = np.random.default_rng(mask_seed)
        top = self.candidates[:TOP_K]
        order = [int(i) for i in rng.permutation(len(top))] + list(range(len(top), len(self.candidates)))
        problems = []
        for k in order:
            entry = self.candidates[k]
            path = Path(entry["path"])
            try:
                sample = self._fit(path, entry, rng)
            except MaisiError as e:
                problems.append(str(e))
                continue
            sample.info.update(
                seed=mask_seed, rank=k, closeness=round(closeness(entry, self.size, self.spacing), 4)
            )
            return sample
        raise RequestError(f"{self.database}: no candidate mask fits the request ({'; '.join(problems[:2])})")

    def _fit(self, path: Path, entry: dict[str, Any], rng: np.random.Generator) -> MaskSample:
        from maisi.data.body import add_body_from_label
        from maisi.data.vocabularies import BUILTIN

        vocab = entry.get("vocabulary")
        read = self.reading.read(path, label_set=vocab if vocab in BUILTIN else "auto")
        label, affine, native = read.label, read.affine, read.spacing
        if not np.any(label == labels.BODY):
            label = add_body_from_label(label, native)
        fitted = fit_to_grid(label, affine, native, size=self.size, new_spacing=self.spacing)
        present = set(np.unique(fitted.label).tolist())
        lost = [labels.name_of(i) for i in self.anatomy_ids if i not in present]
        if lost:
            raise RequestError(f"{path}: {lost} fall outside the requested field of view after resampling")
        out, records = augment_tumors(fitted.label, rng) if self.augment else (fitted.label, [])
        if any(not r["accepted"] for r in records):
            warnings.warn(
                f"{path}: tumour augmentation kept the original position of some tumours", stacklevel=2
            )
        return MaskSample(
            label=np.ascontiguousarray(out, dtype=np.uint8),
            affine=fitted.affine,
            spacing=fitted.spacing,
            source=self.name,
            info={"file": str(path), "database": self.database, "tumor_augmentation": records},
            changes=fitted.changes,
        )
