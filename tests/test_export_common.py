"""Shared helpers of the export tests: a tiny generation run folder written with the real sample writer.

The volumes are small synthetic phantoms (no network runs), so every export test builds its run in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from maisi.generation.outputs import sample_paths, write_sample

SHAPE = (24, 20, 12)
SPACING = (2.0, 2.5, 3.0)
#: MAISI ids painted into every sample: liver, spleen, hepatic tumor (inside the liver), body
IDS = (1, 3, 26, 200)


def sample_arrays(index: int, *, shape=SHAPE) -> tuple[np.ndarray, np.ndarray]:
    """(image int16 HU, label uint8 MAISI ids) of sample ``index``: a body with liver, tumour and spleen."""
    rng = np.random.default_rng(index)
    x, y, z = shape
    label = np.zeros(shape, np.uint8)
    label[2 : x - 2, 2 : y - 2, 1 : z - 1] = 200
    label[3 : x // 2, 4 : y - 4, 2 : z - 2] = 1
    label[5 : 5 + 3 + index % 2, 6:9, 4:7] = 26
    label[x // 2 + 2 : x - 4, 5:10, 3 : z - 3] = 3
    hu = np.full(256, -1000.0)
    hu[[1, 3, 26, 200]] = [60, 45, 20, 0]
    image = (hu[label] + rng.normal(0, 15, shape)).round().astype(np.int16)
    image[label == 0] = -1000
    return image, label


def affine_of(spacing=SPACING, origin=(-20.0, 10.0, 30.0)) -> np.ndarray:
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


def sidecar_of(index: int, *, seed: int = 7, keep_only=(), run: str = "run-a", modality: str = "ct") -> dict:
    return {
        "index": index,
        "seed": seed,
        "request": {"modality": modality, "seed": seed},
        "request_digest": f"{run}-{seed}-{index}",
        "output": {
            "size": list(SHAPE),
            "spacing": list(SPACING),
            "affine": affine_of().tolist(),
            "keep_only": list(keep_only),
        },
    }


def write_run(
    folder: Path, num: int = 3, *, keep_only=(), run: str = "run-a", first: int = 0, unfinished: bool = True
) -> Path:
    """A generation run folder holding samples ``first .. first + num - 1`` (and an unfinished one, no sidecar)."""
    from maisi import labels

    keep = [labels.id_of(n) for n in keep_only]
    for index in range(first, first + num):
        image, label = sample_arrays(index)
        if keep:
            label = np.where(np.isin(label, keep), label, 0).astype(np.uint8)
        write_sample(
            sample_paths(folder, index),
            image=image,
            label=label,
            affine=affine_of(),
            spacing=SPACING,
            sidecar=sidecar_of(index, keep_only=keep_only, run=run),
        )
    if unfinished:  # an interrupted sample: image written, no sidecar
        from maisi.data.nifti import save_nifti

        save_nifti(sample_paths(folder, first + num)["image"], sample_arrays(first + num)[0], affine_of())
    return folder


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (to show that nothing changed); the empty lock files that a
    refused update may leave are not content and are left out."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.endswith(".lock"))
    return {str(p.relative_to(folder)): p.read_bytes() for p in files}
