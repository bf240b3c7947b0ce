"""Training data: the cases of a run (volumes or cached latents), the train/validation split, and the seeded,
resumable, rank-sharded order in which batches are drawn.

``--data`` is one of

- a folder holding ``datalist.json`` (``maisi phantom`` / ``maisi prepare`` output) or a datalist JSON file:
  images (in HU for CT) and label maps (MAISI ids), read with :func:`maisi.data.nifti.load_nifti`;
- a latents folder written by ``maisi encode`` (``<name>_latent.safetensors`` holding ``mean`` and ``logvar``,
  and the sidecar ``<name>_latent.json``).

Batch order. Cases are grouped in buckets of equal shape (so volumes of different sizes train together, one
shape per batch). Each epoch shuffles every bucket with ``default_rng([seed, epoch])``, pads it by cycling to a
multiple of the *global* batch (``batch_size * world_size``), cuts it into global batches and shuffles the batch
order. Global batch ``n`` (counted from the start of the run) is fully determined by ``(seed, n)``; rank ``r``
takes slots ``[r * batch_size, (r + 1) * batch_size)`` of it. Every random draw of a sample (patch position,
noise, time, condition dropout) comes from its own generator seeded by ``(seed, n, slot)``, so a batch does not
depend on how it is split over ranks, and resuming needs only ``n``.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maisi import resources
from maisi.data.encode import LATENT_SUFFIX, SIDECAR_SUFFIX
from maisi.errors import DataError
from maisi.io import read_json

DATALIST_NAME = "datalist.json"
#: cached volumes are kept up to this many bytes (least recently used dropped first)
CACHE_BYTES = 4 * 1024**3
#: seed-stream tags, so training, validation and set-up draws never share a stream
TRAIN_STREAM, VAL_STREAM, SETUP_STREAM, PREVIEW_STREAM = 0, 1, 2, 3


@dataclass
class Case:
    """One training case. Paths are absolute; arrays are loaded on demand (:class:`CaseStore`).

    Attributes:
        name: file stem, unique in the data set.
        image: image NIfTI path (or None).
        label: label-map NIfTI path with MAISI ids (or None).
        latent: latent safetensors path (or None).
        spacing: voxel size (mm) of the image, (X, Y, Z).
        modality: a key of ``modality_mapping.json`` (``"ct"``, ``"mri"``...).
        top_region, bottom_region: 4-value body-region one-hots, or None.
        fold: cross-validation fold, or None.
        shape: spatial shape of what the task trains on (image or latent), for bucketing; None if unknown.
    """

    name: str
    image: str | None = None
    label: str | None = None
    latent: str | None = None
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    modality: str = "ct"
    top_region: tuple[float, ...] | None = None
    bottom_region: tuple[float, ...] | None = None
    fold: int | None = None
    shape: tuple[int, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def modality_id(self) -> int:
        """The class label of the modality (``modality_mapping.json``; CT = 1)."""
        table = resources.load_json("modality_mapping.json")
        if self.modality not in table:
            raise DataError(
                f"{self.name}: unknown modality {self.modality!r}; expected one of {sorted(table)}"
            )
        return int(table[self.modality])


# ----------------------------------------------------------------------------------------------------------------
# finding the cases


def find_cases(path: str | os.PathLike, *, kind: str) -> list[Case]:
    """The cases under ``path``.

    Args:
        path: a folder with ``datalist.json``, a datalist JSON file, or a latents folder.
        kind: ``"volumes"`` (images / label maps) or ``"latents"``.

    Raises:
        DataError: naming the path when it holds nothing of the requested kind.
    """
    p = Path(path)
    if not str(path):
        raise DataError(
            "train.data is empty; pass --data with a phantom/prepared folder, a datalist or latents"
        )
    if not p.exists():
        raise DataError(f"{p}: training data not found")
    if kind == "latents":
        return _latent_cases(p)
    if kind != "volumes":
        raise ValueError(f"kind must be 'volumes' or 'latents', got {kind!r}")
    datalist = p / DATALIST_NAME if p.is_dir() else p
    if p.is_dir() and not datalist.is_file() and any(p.glob("*_image.nii*")):
        return _pair_cases(p)
    if not datalist.is_file():
        if p.is_dir() and any(p.glob(f"*{LATENT_SUFFIX}")):
            raise DataError(
                f"{p}: holds latents; this task trains on images/label maps (give a datalist folder)"
            )
        raise DataError(
            f"{p}: no {DATALIST_NAME} (expected a phantom/prepared folder or a datalist JSON file)"
        )
    from maisi.data.datalist import read_datalist

    cases = []
    for entry in read_datalist(datalist):
        image = entry["image"]
        cases.append(
            Case(
                name=_stem(image),
                image=image,
                label=entry.get("label"),
                spacing=_triple(entry.get("spacing"), default=(1.0, 1.0, 1.0)),
                modality=entry.get("modality", "ct"),
                top_region=_opt_tuple(entry.get("top_region_index")),
                bottom_region=_opt_tuple(entry.get("bottom_region_index")),
                fold=entry.get("fold"),
                shape=tuple(entry["dim"]) if "dim" in entry else None,
            )
        )
    if not cases:
        raise DataError(f"{datalist}: the datalist has no entries")
    return cases


def _pair_cases(folder: Path) -> list[Case]:
    """A folder of ``<name>_image.nii[.gz]`` (with ``<name>_label.nii[.gz]`` when present) files, e.g. generated
    samples or phantoms."""
    cases = []
    for image in sorted(folder.glob("*_image.nii*")):
        name = _stem(str(image))
        labels = [folder / f"{name}_label{ext}" for ext in (".nii.gz", ".nii")]
        label = next((str(p.resolve()) for p in labels if p.is_file()), None)
        cases.append(Case(name=name, image=str(image.resolve()), label=label))
    return cases


def _latent_cases(folder: Path) -> list[Case]:
    if not folder.is_dir():
        raise DataError(f"{folder}: expected a latents folder written by 'maisi encode'")
    files = sorted(folder.glob(f"*{LATENT_SUFFIX}"))
    if not files:
        raise DataError(f"{folder}: no *{LATENT_SUFFIX} files (run 'maisi encode' first)")
    cases = []
    for f in files:
        name = f.name[: -len(LATENT_SUFFIX)]
        meta = _read_sidecar(f)
        label = meta.get("label")
        if label:
            label = str((folder / label).resolve()) if not Path(label).is_absolute() else label
        shape = meta.get("latent_shape") or meta.get("shape")
        cases.append(
            Case(
                name=name,
                image=meta.get("image"),
                label=label,
                latent=str(f),
                spacing=_triple(meta.get("spacing"), default=(1.0, 1.0, 1.0)),
                modality=meta.get("modality", "ct"),
                top_region=_opt_tuple(meta.get("top_region_index")),
                bottom_region=_opt_tuple(meta.get("bottom_region_index")),
                fold=meta.get("fold"),
                shape=tuple(int(s) for s in shape[-3:]) if shape else None,
                extra={k: v for k, v in meta.items() if k in ("weights", "vae", "scale_factor")},
            )
        )
    return cases


def _read_sidecar(latent: Path) -> dict[str, Any]:
    side = latent.with_name(latent.name[: -len(LATENT_SUFFIX)] + SIDECAR_SUFFIX)
    if not side.is_file():
        return {}
    return read_json(side, what="latent sidecar", expect=dict)


def _stem(path: str) -> str:
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name[: -len("_image")] if name.endswith("_image") else name


def _triple(v, *, default) -> tuple[float, float, float]:
    return tuple(float(x) for x in v) if v is not None else tuple(default)


def _opt_tuple(v) -> tuple[float, ...] | None:
    return None if v is None else tuple(float(x) for x in v)


def split_cases(cases: Sequence[Case]) -> tuple[list[Case], list[Case]]:
    """Training and validation cases.

    Validation is fold 0 when the cases carry more than one fold (``maisi prepare`` assigns folds round-robin);
    otherwise the last ``max(1, n // 5)`` cases in name order; a single case is used for both (with a warning).
    """
    cases = sorted(cases, key=lambda c: c.name)
    folds = {c.fold for c in cases if c.fold is not None}
    if len(folds) > 1:
        train = [c for c in cases if c.fold != 0]
        val = [c for c in cases if c.fold == 0]
        return train, val
    if len(cases) == 1:
        warnings.warn("only one training case: validating on the training case", stacklevel=2)
        return list(cases), list(cases)
    n_val = max(1, len(cases) // 5)
    return list(cases[:-n_val]), list(cases[-n_val:])


# ----------------------------------------------------------------------------------------------------------------
# loading arrays


class CaseStore:
    """Loads and caches case arrays (least recently used dropped past :data:`CACHE_BYTES`).

    Images come back in the VAE's [0, 1] units: CT clipped to [-1000, 1000] HU and scaled; MRI by its 0th-99.5th
    percentiles. Label maps as integer MAISI ids, latents as float32 ``(mean, logvar)`` tensors ``(C, x, y, z)``.
    """

    def __init__(self, *, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._bytes = 0

    def image(self, case: Case) -> np.ndarray:
        if case.image is None:
            raise DataError(f"{case.name}: this task needs images but the case has none")
        return self._get(("image", case.image), lambda: _load_image(case))

    def label(self, case: Case) -> np.ndarray:
        if case.label is None:
            raise DataError(f"{case.name}: this task needs label maps but the case has none")
        return self._get(("label", case.label), lambda: _load_label(case.label))

    def latent(self, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
        if case.latent is None:
            raise DataError(f"{case.name}: this task needs cached latents but the case has none")
        return self._get(("latent", case.latent), lambda: load_latent(case.latent))

    def _get(self, key, load):
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        value = load()
        size = _nbytes(value)
        self._cache[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._bytes -= _nbytes(old)
        return value


def _nbytes(value) -> int:
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    return int(getattr(value, "nbytes", 0))


def _load_image(case: Case) -> np.ndarray:
    from maisi.data.intensity import ct_to_unit, mri_to_unit
    from maisi.data.nifti import load_nifti

    vol = load_nifti(case.image, kind="image")
    if case.modality.startswith("ct"):
        return np.asarray(ct_to_unit(vol.array), dtype=np.float32)
    unit, _ = mri_to_unit(vol.array)
    return np.asarray(unit, dtype=np.float32)


def _load_label(path: str) -> np.ndarray:
    from maisi.data.nifti import load_nifti

    return load_nifti(path, kind="label").array


def load_latent(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean, logvar)``, float32 ``(C, x, y, z)``, from a ``maisi encode`` safetensors file."""
    from maisi.data.encode import load_latent as read_latent

    mean, logvar, _ = read_latent(path)
    if mean.ndim != 4 or mean.shape != logvar.shape:
        raise DataError(f"{path}: expected (C, x, y, z) latents, got mean {tuple(mean.shape)}")
    return mean.float().contiguous(), logvar.float().contiguous()


# ----------------------------------------------------------------------------------------------------------------
# batch order


def sample_generator(seed: int, stream: int, *keys: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, stream, *keys)`` through numpy's SeedSequence (well mixed)."""
    state = np.random.SeedSequence([int(seed), int(stream), *[int(k) for k in keys]]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]) >> 1)


class BatchPlan:
    """The global batches of a run: batch ``n`` is a list of ``global_batch`` case indices, one shape each.

    Args:
        keys: one bucket key per case (e.g. its shape); cases of equal key can share a batch.
        global_batch: samples per optimiser micro-step over all ranks.
        seed: the run's seed.
    """

    def __init__(self, keys: Sequence[Hashable], *, global_batch: int, seed: int) -> None:
        if global_batch < 1:
            raise ValueError(f"global_batch must be >= 1, got {global_batch}")
        if not keys:
            raise DataError("no training cases")
        self.global_batch = int(global_batch)
        self.seed = int(seed)
        buckets: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            buckets.setdefault(repr(k), []).append(i)
        self.buckets = [buckets[k] for k in sorted(buckets)]
        self.per_epoch = sum(-(-len(b) // self.global_batch) for b in self.buckets)
        self._epoch: tuple[int, list[list[int]]] | None = None

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, TRAIN_STREAM, epoch])
            batches = []
            for bucket in self.buckets:
                order = [bucket[i] for i in rng.permutation(len(bucket))]
                padded = -(-len(order) // self.global_batch) * self.global_batch
                order = [order[i % len(order)] for i in range(padded)]
                batches += [order[i : i + self.global_batch] for i in range(0, padded, self.global_batch)]
            batches = [batches[i] for i in rng.permutation(len(batches))]
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def batch(self, n: int) -> list[int]:
        """Case indices of global batch ``n`` (0-based, counted over the whole run)."""
        epoch, index = divmod(int(n), self.per_epoch)
        return self.epoch_batches(epoch)[index]


def rank_slots(global_batch: int, rank: int, world_size: int) -> range:
    """The slots of a global batch that ``rank`` processes."""
    per = global_batch // world_size
    return range(rank * per, (rank + 1) * per)
