"""Encode a prepared dataset into VAE latents for diffusion training.

For each datalist entry, :func:`encode_dataset` reads the image (RAS), maps its intensities to the VAE's [0, 1]
range, runs the tiled encoder of a :class:`~maisi.latents.LatentCodec`, and writes, into ``output_dir``:

* ``<name>_latent.safetensors``: tensors ``"mean"`` and ``"logvar"`` of the posterior, each (C, x, y, z)
  float32, UNSCALED (multiply by the codec's scale factor to get diffusion latents); string metadata;
* ``<name>_latent.json``: sidecar with ``image`` (source), ``label`` (if any), ``dim``, ``spacing``,
  ``latent_shape``, ``top_region_index`` / ``bottom_region_index`` (copied from the entry when present),
  ``modality``, ``intensity`` (how the image was mapped to [0, 1]) and ``scaled: false``.

``<name>`` is the image file name without ``.nii(.gz)`` and without a trailing ``_image`` (the suffix
:func:`maisi.data.prepare.prepare` adds). Both files are written atomically, the sidecar last, so an entry is
complete exactly when its sidecar exists; a re-run skips complete entries (resume by re-running).

Distributed: rank ``r`` of ``world_size`` encodes ``entries[r::world_size]``. Rank 0 then writes
``latents.json``, a MAISI datalist (``{"training": [...]}``) of the sidecars plus a ``latent`` key, listing the
entries complete at that moment (under ``torch.distributed`` it waits at a barrier for the other ranks first).
Without ``torch.distributed``, re-run once with ``world_size=1`` when all ranks are done: every entry is skipped
and the index is rewritten complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maisi import resources
from maisi.data.datalist import read_datalist, write_datalist
from maisi.data.intensity import CT_MAX_HU, CT_MIN_HU, mri_to_unit
from maisi.data.nifti import load_nifti, nifti_stem
from maisi.errors import DataError
from maisi.io import atomic_path, read_json, write_json
from maisi.latents import LatentCodec

INDEX_NAME = "latents.json"
LATENT_SUFFIX = "_latent.safetensors"
SIDECAR_SUFFIX = "_latent.json"
FORMAT = "maisi-latent-v1"
REGION_KEYS = ("top_region_index", "bottom_region_index")


def latent_name(image_path: str | os.PathLike) -> str:
    """``<name>`` of an image's latent files: file name without ``.nii(.gz)`` and a trailing ``_image``."""
    stem = nifti_stem(image_path)
    return stem[: -len("_image")] if stem.endswith("_image") and len(stem) > len("_image") else stem


def encode_dataset(
    *,
    datalist: str | os.PathLike,
    codec: LatentCodec,
    output_dir: str | os.PathLike,
    modality: str = "ct",
    overwrite: bool = False,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
) -> list[Path]:
    """Encode every image of a datalist to posterior mean and log-variance latents.

    Args:
        datalist: MAISI datalist JSON (``{"training": [{"image": ..., ...}]}``, paths relative to its folder).
        codec: the latent codec (its VAE, windows and devices are used as they are).
        output_dir: folder for the latent files and ``latents.json``.
        modality: modality of entries without a ``"modality"`` key: a key of ``modality_mapping.json``; names
            starting with ``ct`` use the CT window (-1000..1000 HU -> 0..1), ``mri`` the 0-99.5 percentile range.
        overwrite: re-encode entries whose outputs exist (else they are skipped).
        rank: index of this process among ``world_size`` (``torchrun``'s ``RANK``).
        world_size: number of processes sharing the datalist.
        progress: show a tqdm bar.

    Returns:
        The ``<name>_latent.safetensors`` paths of this rank's entries (encoded now or earlier).

    Raises:
        DataError: naming the file for unreadable images, sizes that are not a multiple of the VAE
            downsampling, unknown modalities or two entries with the same ``<name>``.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    _intensity_kind(modality, source="modality argument")
    entries = read_datalist(datalist)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = _unique_names(entries, source=str(datalist))

    mine = list(zip(names, entries))[rank::world_size]
    written: list[Path] = []
    iterator: Any = mine
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(mine, desc=f"encode (rank {rank})" if world_size > 1 else "encode", unit="image")
    for name, entry in iterator:
        path = _encode_entry(entry, name=name, codec=codec, out=out, modality=modality, overwrite=overwrite)
        written.append(path)

    if world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank == 0:
        write_index(entries, output_dir=out, scale_factor=codec.scale_factor)
    return written


def write_index(entries: list[dict[str, Any]], *, output_dir: str | os.PathLike, scale_factor: float) -> Path:
    """Write ``latents.json``: a datalist of the complete entries' sidecars with a ``latent`` file key.

    Entries whose sidecar is missing are left out (and counted in a warning).
    """
    out = Path(output_dir)
    items, missing = [], 0
    for name in _unique_names(entries, source=str(out)):
        sidecar = out / f"{name}{SIDECAR_SUFFIX}"
        if not sidecar.is_file():
            missing += 1
            continue
        item = read_json(sidecar, what="latent sidecar", expect=dict)
        item["latent"] = f"{name}{LATENT_SUFFIX}"
        items.append(item)
    if missing:
        import warnings

        warnings.warn(f"{out / INDEX_NAME}: {missing} entries are not encoded yet; left out", stacklevel=2)
    for item in items:
        item["scale_factor"] = float(scale_factor)
    return write_datalist(out / INDEX_NAME, items, overwrite=True)


def _encode_entry(
    entry: dict[str, Any], *, name: str, codec: LatentCodec, out: Path, modality: str, overwrite: bool
) -> Path:
    latent_path = out / f"{name}{LATENT_SUFFIX}"
    sidecar_path = out / f"{name}{SIDECAR_SUFFIX}"
    if not overwrite and sidecar_path.is_file() and latent_path.is_file():
        return latent_path

    source = entry["image"]
    entry_modality = entry.get("modality", modality)
    kind = _intensity_kind(entry_modality, source=source)
    volume = load_nifti(source, kind="image")
    try:
        codec.latent_shape(volume.shape)
    except DataError as e:
        raise DataError(f"{source}: {e}") from None

    shape, spacing = volume.shape, volume.spacing
    if kind == "ct":
        # in place on the volume's own float32 copy (= ct_to_unit): one volume-sized array, not three
        unit = volume.array
        if not (unit.dtype == np.float32 and unit.flags.writeable and unit.flags.owndata):
            unit = unit.astype(np.float32)  # never write into a memory map or a shared buffer
        np.clip(unit, CT_MIN_HU, CT_MAX_HU, out=unit)
        unit -= CT_MIN_HU
        unit /= CT_MAX_HU - CT_MIN_HU
        intensity = {"kind": "ct", "min_hu": CT_MIN_HU, "max_hu": CT_MAX_HU}
    else:
        unit, (low, high) = mri_to_unit(volume.array)
        intensity = {"kind": "mri", "low": low, "high": high}
    del volume  # the HU array is not needed while the windows run
    image = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))[None, None]
    del unit
    mean, logvar = codec.encode_posterior(image)
    tensors = {"mean": mean[0].cpu().contiguous(), "logvar": logvar[0].cpu().contiguous()}

    sidecar: dict[str, Any] = {
        "image": source,
        "dim": list(shape),
        "spacing": [round(s, 6) for s in spacing],
        "latent_shape": list(tensors["mean"].shape),
        "modality": entry_modality,
        "intensity": intensity,
        "scaled": False,
    }
    if "label" in entry:
        sidecar["label"] = entry["label"]
    for key in REGION_KEYS:
        if key in entry:
            sidecar[key] = [int(v) for v in entry[key]]
    metadata = {
        "format": FORMAT,
        "source": source,
        "modality": entry_modality,
        "scaled": "false",
        "dim": json.dumps(sidecar["dim"]),
        "spacing": json.dumps(sidecar["spacing"]),
    }
    # the sidecar goes last: its presence marks the entry complete
    with atomic_path(latent_path, overwrite=True) as tmp:
        from safetensors.torch import save_file

        save_file(tensors, str(tmp), metadata=metadata)
    write_json(sidecar_path, sidecar, overwrite=True)
    return latent_path


def _intensity_kind(modality: Any, *, source: str) -> str:
    known = resources.load_json("modality_mapping.json")
    if isinstance(modality, str) and modality in known:
        if modality.startswith("ct"):
            return "ct"
        if modality.startswith("mri"):
            return "mri"
    raise DataError(
        f"{source}: modality {modality!r} has no intensity mapping; use a 'ct*' or 'mri*' key of "
        "modality_mapping.json"
    )


def _unique_names(entries: list[dict[str, Any]], *, source: str) -> list[str]:
    names: list[str] = []
    seen: dict[str, str] = {}
    for entry in entries:
        name = latent_name(entry["image"])
        if name in seen:
            raise DataError(f"{source}: images {seen[name]} and {entry['image']} both map to latent {name!r}")
        seen[name] = entry["image"]
        names.append(name)
    return names


def load_latent(path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor, dict[str, str]]:
    """Read a ``<name>_latent.safetensors`` file: ``(mean, logvar, metadata)``, tensors (C, x, y, z), unscaled."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: latent file not found")
    try:
        with safe_open(str(p), framework="pt") as f:
            metadata = f.metadata() or {}
            mean, logvar = f.get_tensor("mean"), f.get_tensor("logvar")
    except Exception as e:  # safetensors raises its own error types for junk files and missing keys
        raise DataError(f"{p}: not a maisi latent file ({type(e).__name__}: {e})") from None
    return mean, logvar, metadata
