"""What a run reports: TensorBoard scalars and three orthogonal slices of volumes, written by rank 0 only."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

TENSORBOARD = "tensorboard"


def orthogonal_slices(volume: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Central axial, coronal and sagittal slices of an (X, Y, Z) RAS volume, scaled to [0, 1] together.

    Returns:
        ``{"axial": (Y, X), "coronal": (Z, X), "sagittal": (Z, Y)}`` float32 arrays, oriented for display
        (anterior / superior at the top).
    """
    v = (
        volume.detach().float().cpu().numpy()
        if isinstance(volume, torch.Tensor)
        else np.asarray(volume, np.float32)
    )
    if v.ndim != 3:
        raise ValueError(f"orthogonal_slices: expected an (X, Y, Z) volume, got shape {v.shape}")
    lo, hi = float(np.min(v)), float(np.max(v))
    v = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    x, y, z = (s // 2 for s in v.shape)
    return {
        "axial": np.ascontiguousarray(v[:, :, z].T[::-1]),
        "coronal": np.ascontiguousarray(v[:, y, :].T[::-1]),
        "sagittal": np.ascontiguousarray(v[x, :, :].T[::-1]),
    }


class RunLogger:
    """TensorBoard writer of a run; a no-op on ranks other than 0 (``enabled=False``)."""

    def __init__(self, run_dir: str | os.PathLike, *, enabled: bool) -> None:
        self.writer = None
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD))

    def scalars(self, step: int, values: Mapping[str, float], *, prefix: str = "") -> None:
        if self.writer is None:
            return
        for name, value in values.items():
            self.writer.add_scalar(f"{prefix}{name}", float(value), global_step=step)

    def volumes(self, step: int, volumes: Mapping[str, torch.Tensor | np.ndarray]) -> None:
        """Three orthogonal slices of each (X, Y, Z) volume, as images ``<name>/<axial|coronal|sagittal>``."""
        if self.writer is None:
            return
        for name, volume in volumes.items():
            for view, image in orthogonal_slices(volume).items():
                self.writer.add_image(f"{name}/{view}", image, global_step=step, dataformats="HW")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
