"""Training: one generic loop (:func:`train`) and one small task per model (VAE, latent diffusion, ControlNet,
mask VAE, mask diffusion); checkpoints, EMA, DDP and TensorBoard logging.

Typical use::

    from maisi.config import load_config
    from maisi.training import train

    cfg = load_config(preset="tiny", overrides=["train.task=vae", "train.data=phantoms", "train.run_dir=runs/vae"])
    result = train(cfg)            # prints "final: step=N val_loss=X"; weights in result.model_dir
"""

from __future__ import annotations

from maisi.training.loop import TrainingDiverged, TrainResult, check_train_config, train
from maisi.training.tasks import TASKS, make_task

__all__ = ["TASKS", "TrainResult", "TrainingDiverged", "check_train_config", "make_task", "train"]
