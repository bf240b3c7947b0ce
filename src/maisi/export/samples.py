"""One generated sample as the exporters see it, and the complete samples of a generation run folder.

A sample is its index, its sidecar (``sample_NNNNN.json``) and its image/label pair, given either as the files a
run wrote or as arrays with their affine (what :func:`maisi.generation.generate` holds in memory). A run folder's
sample is complete once its sidecar exists (the sidecar is written last), so exporting a folder that is still
being written only takes the finished samples.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from maisi.data.nifti import Volume, load_nifti
from maisi.errors import DataError
from maisi.generation.outputs import read_sidecar, sample_paths

_SIDECAR_NAME = re.compile(r"^sample_(\d+)\.json$")


@dataclass(frozen=True)
class Sample:
    """A generated image/label pair with its sidecar.

    Attributes:
        index: the sample index of its run (names every exported file, so processes never collide).
        sidecar: the sample's JSON sidecar (``seed``, ``request_digest``, ``output.spacing``, ...).
        image_path, label_path: the run's NIfTI files, when the sample was written.
        image: (X, Y, Z) HU (int16 for CT), RAS; used when ``image_path`` is None.
        label: (X, Y, Z) uint8 MAISI ids, RAS; used when ``label_path`` is None.
        affine: (4, 4) voxel -> RAS world (mm) of the arrays.
    """

    index: int
    sidecar: Mapping[str, Any]
    image_path: Path | None = None
    label_path: Path | None = None
    image: np.ndarray | None = None
    label: np.ndarray | None = None
    affine: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.image_path is None and self.image is None:
            raise ValueError("Sample needs image_path or image")
        if self.label_path is None and self.label is None:
            raise ValueError("Sample needs label_path or label")
        if (self.image_path is None or self.label_path is None) and self.affine is None:
            raise ValueError("Sample given as arrays needs affine")

    @classmethod
    def from_files(cls, image: str | os.PathLike, label: str | os.PathLike, sidecar: Mapping) -> Sample:
        """A sample written to disk; ``sidecar["index"]`` is its index."""
        return cls(index=_index_of(sidecar), sidecar=sidecar, image_path=Path(image), label_path=Path(label))

    @classmethod
    def from_arrays(
        cls, image: np.ndarray, label: np.ndarray, affine: np.ndarray, sidecar: Mapping
    ) -> Sample:
        """A sample held in memory: (X, Y, Z) arrays in RAS and their (4, 4) affine."""
        if image.shape != label.shape or image.ndim != 3:
            raise ValueError(f"image {image.shape} and label {label.shape} must be the same 3D shape")
        return cls(
            index=_index_of(sidecar),
            sidecar=sidecar,
            image=image,
            label=label,
            affine=np.asarray(affine, dtype=np.float64),
        )

    @property
    def key(self) -> str:
        """What identifies the sample across exports: its request digest, else a hash of its sidecar."""
        digest = self.sidecar.get("request_digest")
        if digest:
            return str(digest)
        text = json.dumps(self.sidecar, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    @property
    def modality(self) -> str:
        request = self.sidecar.get("request") or {}
        return str(request.get("modality", "ct")).lower()

    def load_label(self) -> Volume:
        """The label map, (X, Y, Z) MAISI ids in RAS, with its affine."""
        if self.label is not None:
            return Volume(array=np.asarray(self.label), affine=self.affine)
        return load_nifti(self.label_path, kind="label", allow_empty=True)

    def load_image(self) -> Volume:
        """The image, (X, Y, Z) in RAS (the stored type when given as an array, float32 from a file)."""
        if self.image is not None:
            return Volume(array=np.asarray(self.image), affine=self.affine)
        return load_nifti(self.image_path, kind="image")


def _index_of(sidecar: Mapping) -> int:
    index = sidecar.get("index")
    if not isinstance(index, int) or isinstance(index, bool) or index < 0:
        raise DataError(f"sidecar has no valid sample index (got {index!r})")
    return index


def read_run(run_dir: str | os.PathLike) -> list[Sample]:
    """The complete samples of a generation run folder (those with a sidecar), by index.

    Raises:
        DataError: the folder is missing, holds no complete sample, or a sidecar is unreadable or names files
            outside the folder.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: run folder not found")
    samples = []
    for path in sorted(run.iterdir()):
        match = _SIDECAR_NAME.match(path.name)
        if match is None:
            continue
        sidecar = read_sidecar(path)
        if sidecar is None:
            raise DataError(f"{path}: unreadable sidecar")
        if sidecar.get("index") != int(match.group(1)):
            raise DataError(f"{path}: sidecar index {sidecar.get('index')!r} does not match its file name")
        files = _sample_files(run, path, sidecar)
        samples.append(Sample.from_files(files["image"], files["label"], sidecar))
    if not samples:
        raise DataError(f"{run}: no complete generated sample (sample_NNNNN.json) in the folder")
    return sorted(samples, key=lambda s: s.index)


def _sample_files(run: Path, sidecar_path: Path, sidecar: Mapping) -> dict[str, Path]:
    """Image and label paths of a sidecar: the names it records (plain names inside the run folder only)."""
    default = sample_paths(run, int(sidecar["index"]))
    recorded = sidecar.get("files") or {}
    files = {}
    for kind in ("image", "label"):
        name = recorded.get(kind, default[kind].name)
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise DataError(f"{sidecar_path}: {kind} file name {name!r} is not a plain file name")
        files[kind] = run / name
        if not files[kind].is_file():
            raise DataError(f"{sidecar_path}: its {kind} file {files[kind]} is missing")
    return files
