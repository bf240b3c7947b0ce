"""One small task object per trainable model; :func:`make_task` picks it by ``train.task``."""

from __future__ import annotations

import torch

from maisi.config.schema import Config
from maisi.errors import ConfigError
from maisi.training.tasks.base import Group, SavedComponent, Task
from maisi.training.tasks.controlnet import ControlNetTask
from maisi.training.tasks.diffusion import DiffusionTask
from maisi.training.tasks.mask_diffusion import MaskDiffusionTask
from maisi.training.tasks.mask_vae import MaskVAETask
from maisi.training.tasks.segmenter import SegmenterTask
from maisi.training.tasks.vae import VAETask

#: ``train.task`` -> task class
TASKS: dict[str, type[Task]] = {
    t.name: t for t in (VAETask, DiffusionTask, ControlNetTask, MaskVAETask, MaskDiffusionTask, SegmenterTask)
}


def make_task(cfg: Config, *, device: torch.device) -> Task:
    """The task object for ``cfg.train.task`` (not yet set up)."""
    if cfg.train.task not in TASKS:
        raise ConfigError(
            f"train.task: {cfg.train.task!r} cannot be trained here; choose one of {sorted(TASKS)}"
        )
    return TASKS[cfg.train.task](cfg, device=device)


__all__ = [
    "TASKS",
    "ControlNetTask",
    "DiffusionTask",
    "Group",
    "MaskDiffusionTask",
    "MaskVAETask",
    "SegmenterTask",
    "SavedComponent",
    "Task",
    "VAETask",
    "make_task",
]
