"""FID 2.5D: Fréchet distances between 2D slice features of real and synthetic volumes, per anatomical plane.

Protocol (as the MAISI paper's FID, with every step an explicit option):

1. each volume is read in RAS, optionally resampled to ``spacing`` (trilinear) and scaled to [0, 1]
   (``ct``: the fixed window [-1000, 1000] HU; ``ct-minmax``: clipped to that window, then each plane's selected
   slices min-max scaled together, as the official MAISI FID script does; ``mri``: 0-99.5th percentile; ``unit``:
   already scaled, clipped);
2. optionally padded (``pad``, with -1000 HU) and centre-cropped (``crop``) to ``shape``;
3. it is cut into axial (XY), coronal (XZ) and sagittal (YZ) slices; ``center_slice_ratio`` keeps the central
   fraction of the slices along each axis and ``slice_step`` every k-th;
4. every slice goes through a 2D feature extractor (:mod:`maisi.evaluation.extractors`);
5. per plane, the features of all real slices and of all synthetic slices are summarised by their mean and
   covariance and compared with the Fréchet distance ``|mu1 - mu2|^2 + Tr(C1 + C2 - 2 (C1 C2)^(1/2))``
   (Heusel et al. 2017, eq. 6); the 2.5D FID is the mean of the three planes.

Per-volume features are cached (``cache_dir``, keyed by file path, size, modification time, extractor and options),
so adding samples or re-running only computes what is new. Under ``torchrun`` (an initialised
``torch.distributed`` process group) each rank computes the features of every ``world_size``-th volume and the
features are gathered on all ranks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maisi.errors import ConfigError
from maisi.evaluation.volumes import Case, find_cases, shard

PLANES = ("axial", "coronal", "sagittal")
#: the volume axis each plane's slices are stacked along ((X, Y, Z) RAS arrays)
SLICE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}
INTENSITY_MODES = ("ct", "ct-minmax", "mri", "unit")


@dataclass(frozen=True, kw_only=True)
class FIDOptions:
    """Volume preparation and slicing options (all recorded in the result and in cache keys).

    Attributes:
        spacing: resample to this voxel size (mm) first; None keeps each volume's spacing.
        shape: pad and/or centre-crop every volume to this (X, Y, Z) size; None keeps the size.
        pad: pad axes shorter than ``shape`` (centred).
        crop: centre-crop axes longer than ``shape``.
        center_slice_ratio: fraction of the slices (the central ones) used along each axis, in (0, 1].
        slice_step: use every k-th of those slices.
        intensity: ``"ct"``, ``"ct-minmax"``, ``"mri"`` or ``"unit"`` (see the module docstring).
        batch_size: slices per extractor call (does not change the result).
    """

    spacing: tuple[float, float, float] | None = None
    shape: tuple[int, int, int] | None = None
    pad: bool = True
    crop: bool = True
    center_slice_ratio: float = 1.0
    slice_step: int = 1
    intensity: str = "ct"
    batch_size: int = 64

    def __post_init__(self) -> None:
        if not 0.0 < self.center_slice_ratio <= 1.0:
            raise ConfigError(f"center_slice_ratio must be in (0, 1], got {self.center_slice_ratio}")
        if self.slice_step < 1:
            raise ConfigError(f"slice_step must be >= 1, got {self.slice_step}")
        if self.intensity not in INTENSITY_MODES:
            raise ConfigError(f"intensity must be one of {list(INTENSITY_MODES)}, got {self.intensity!r}")
        if self.spacing is not None and (len(self.spacing) != 3 or min(self.spacing) <= 0):
            raise ConfigError(f"spacing must be three positive numbers, got {self.spacing}")
        if self.shape is not None and (len(self.shape) != 3 or min(self.shape) < 1):
            raise ConfigError(f"shape must be three positive integers, got {self.shape}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")

    def key(self) -> dict[str, Any]:
        """The options that change features (batch size excluded)."""
        d = dataclasses.asdict(self)
        d.pop("batch_size")
        return d


# ----------------------------------------------------------------------------------------------------------------
# volumes -> slices -> features


def prepare_volume(path: str | os.PathLike, options: FIDOptions) -> np.ndarray:
    """Read, resample, scale to [0, 1] and pad/crop one volume; returns (X, Y, Z) float32."""
    from maisi.data.intensity import ct_to_unit, mri_to_unit
    from maisi.data.nifti import load_nifti
    from maisi.data.prepare import resample

    volume = load_nifti(path, kind="image")
    if options.spacing is not None:
        volume = resample(volume, options.spacing, order=1)
    if options.intensity in ("ct", "ct-minmax"):
        array = ct_to_unit(volume.array)
    elif options.intensity == "mri":
        array = mri_to_unit(volume.array)[0]
    else:
        array = np.clip(volume.array, 0.0, 1.0)
    if options.shape is not None:
        array = pad_or_crop(array, options.shape, value=0.0, pad=options.pad, crop=options.crop)
    return np.ascontiguousarray(array, dtype=np.float32)


def pad_or_crop(
    array: np.ndarray, shape: Sequence[int], *, value: float, pad: bool = True, crop: bool = True
) -> np.ndarray:
    """Centre-pad (with ``value``) and centre-crop each axis of ``array`` to ``shape`` (each step optional)."""
    out = array
    for axis, target in enumerate(shape):
        n = out.shape[axis]
        if n < target and pad:
            before = (target - n) // 2
            pad = [(0, 0)] * out.ndim
            pad[axis] = (before, target - n - before)
            out = np.pad(out, pad, mode="constant", constant_values=value)
        elif n > target and crop:
            start = (n - target) // 2
            out = np.take(out, np.arange(start, start + target), axis=axis)
    return out


def volume_slices(volume: np.ndarray, plane: str, options: FIDOptions) -> torch.Tensor:
    """Slices of one plane as a (N, 1, H, W) float32 tensor (axial: (X, Y), coronal: (X, Z), sagittal: (Y, Z))."""
    if plane not in PLANES:
        raise ValueError(f"plane must be one of {PLANES}, got {plane!r}")
    axis = SLICE_AXIS[plane]
    n = volume.shape[axis]
    keep = max(1, int(round(n * options.center_slice_ratio)))
    start = (n - keep) // 2
    index = np.arange(start, start + keep, options.slice_step)
    stack = np.moveaxis(np.take(volume, index, axis=axis), axis, 0)
    if options.intensity == "ct-minmax":  # the official script rescales each plane's slice stack to [0, 1]
        lo, hi = float(stack.min()), float(stack.max())
        stack = (stack - lo) / (hi - lo + 1e-10)
    return torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]


@torch.inference_mode()
def slice_features(slices: torch.Tensor, extractor: nn.Module, *, batch_size: int = 64) -> np.ndarray:
    """(N, 1, H, W) slices -> (N, F) float64 features, in batches."""
    device = next(extractor.parameters()).device
    chunks = [
        extractor(slices[i : i + batch_size].to(device)).double().cpu()
        for i in range(0, len(slices), batch_size)
    ]
    return torch.cat(chunks).numpy()


def volume_features(
    path: str | os.PathLike,
    extractor: nn.Module,
    options: FIDOptions,
    *,
    cache_dir: str | os.PathLike | None = None,
) -> dict[str, np.ndarray]:
    """Features of every plane of one volume: plane -> (N_slices, F) float64; read from/written to the cache."""
    cache_file = _cache_file(Path(path), extractor, options, cache_dir) if cache_dir is not None else None
    if cache_file is not None and cache_file.is_file():
        with np.load(cache_file) as data:
            return {plane: data[plane].astype(np.float64) for plane in PLANES}
    volume = prepare_volume(path, options)
    feats = {
        plane: slice_features(volume_slices(volume, plane, options), extractor, batch_size=options.batch_size)
        for plane in PLANES
    }
    if cache_file is not None:
        from maisi.io import atomic_path

        with atomic_path(cache_file, overwrite=True) as tmp:
            np.savez(tmp, **{p: f.astype(np.float32) for p, f in feats.items()})
        # round trip through float32 so cached and fresh runs give identical numbers
        feats = {p: f.astype(np.float32).astype(np.float64) for p, f in feats.items()}
    return feats


def _cache_file(path: Path, extractor: nn.Module, options: FIDOptions, cache_dir: str | os.PathLike) -> Path:
    stat = path.stat()
    key = json.dumps(
        {
            "path": str(path.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "options": options.key(),
        },
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(cache_dir) / str(extractor.ident) / f"{digest}.npz"


def set_features(
    cases: Sequence[Case],
    extractor: nn.Module,
    options: FIDOptions,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> dict[str, dict[str, np.ndarray]]:
    """Features of a set of volumes, sharded over ``torch.distributed`` ranks when a process group is initialised.

    Returns:
        case name -> plane -> (N_slices, F), the same on every rank.
    """
    rank, world, dist = _distributed()
    mine = shard(list(cases), rank, world)
    if progress and rank == 0:
        from tqdm.auto import tqdm

        mine = tqdm(mine, desc="FID features", unit="volume")
    local = {c.name: volume_features(c.image, extractor, options, cache_dir=cache_dir) for c in mine}
    if dist is None:
        return local
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, local)
    merged: dict[str, dict[str, np.ndarray]] = {}
    for part in gathered:
        merged.update(part)
    return {c.name: merged[c.name] for c in cases}


def _distributed() -> tuple[int, int, Any]:
    """(rank, world size, torch.distributed or None) of an initialised process group."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size(), dist
    return 0, 1, None


# ----------------------------------------------------------------------------------------------------------------
# Fréchet distance


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (F,) and covariance (F, F) (unbiased, N - 1) of (N, F) features, in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"need (N >= 2, F) features, got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between two Gaussians (Heusel et al. 2017, eq. 6).

    ``Tr((C1 C2)^(1/2))`` is computed as ``sum sqrt(eig(C1^(1/2) C2 C1^(1/2)))`` with symmetric eigendecompositions
    (negative round-off eigenvalues clipped to 0), which is stable for the rank-deficient covariances of fewer
    samples than features and gives 0 (to round-off) for identical statistics.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    evals, evecs = np.linalg.eigh((cov1 + cov1.T) / 2)
    root1 = (evecs * np.sqrt(np.clip(evals, 0, None))) @ evecs.T
    middle = root1 @ cov2 @ root1
    tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)
    return max(value, 0.0)


def fid_from_features(real: np.ndarray, synthetic: np.ndarray) -> float:
    """FID between two (N, F) feature sets."""
    return frechet_distance(*feature_statistics(real), *feature_statistics(synthetic))


def fid_2p5d(
    real: dict[str, dict[str, np.ndarray]], synthetic: dict[str, dict[str, np.ndarray]]
) -> dict[str, float]:
    """Per-plane FIDs and their mean (``"fid_2p5d"``) from per-volume features (name -> plane -> (N, F))."""
    out = {}
    for plane in PLANES:
        a = np.concatenate([f[plane] for f in real.values()])
        b = np.concatenate([f[plane] for f in synthetic.values()])
        out[plane] = fid_from_features(a, b)
    out["fid_2p5d"] = float(np.mean([out[p] for p in PLANES]))
    return out


def compute_fid(
    real: str | os.PathLike | Sequence[str | os.PathLike],
    synthetic: str | os.PathLike | Sequence[str | os.PathLike],
    *,
    extractor: str | nn.Module = "random",
    weights: str | os.PathLike | None = None,
    options: FIDOptions | None = None,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """FID 2.5D between a real and a synthetic set of volumes.

    Args:
        real, synthetic: pairs folders, datalists, or lists of NIfTI files (only images are read).
        extractor: a name for :func:`~maisi.evaluation.extractors.load_extractor` or an extractor module.
        weights: local weights file for ``resnet50`` / ``radimagenet``.
        options: preparation and slicing options.
        cache_dir: per-volume feature cache folder.
        seed: seed of the weights-free extractor.
        out: write the result as JSON here (rank 0 only).

    Returns:
        ``{"fid_2p5d", "planes": {plane: fid}, "n_real", "n_synthetic", "n_slices", "extractor",
        "comparable_to_published", "options"}``.
    """
    from maisi.evaluation.extractors import load_extractor

    options = options or FIDOptions()
    model = (
        load_extractor(extractor, weights=weights, seed=seed, device=device)
        if isinstance(extractor, str)
        else extractor
    )
    real_cases, synth_cases = find_cases(real), find_cases(synthetic)
    real_feats = set_features(real_cases, model, options, cache_dir=cache_dir, progress=progress)
    synth_feats = set_features(synth_cases, model, options, cache_dir=cache_dir, progress=progress)
    values = fid_2p5d(real_feats, synth_feats)
    result: dict[str, Any] = {
        "fid_2p5d": values["fid_2p5d"],
        "planes": {p: values[p] for p in PLANES},
        "n_real": len(real_cases),
        "n_synthetic": len(synth_cases),
        "n_slices": {
            "real": {p: int(sum(len(f[p]) for f in real_feats.values())) for p in PLANES},
            "synthetic": {p: int(sum(len(f[p]) for f in synth_feats.values())) for p in PLANES},
        },
        "extractor": str(model.ident),
        "comparable_to_published": not str(model.ident).startswith("random"),
        "options": options.key(),
        "real": str(real) if isinstance(real, str | os.PathLike) else None,
        "synthetic": str(synthetic) if isinstance(synthetic, str | os.PathLike) else None,
    }
    if out is not None and _distributed()[0] == 0:
        from maisi.io import write_json

        write_json(out, result, overwrite=overwrite)
    return result
