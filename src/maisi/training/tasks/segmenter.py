"""Training the segmenter of mask-image consistency (``model.segmenter``) in the generic loop: resume, EMA, DDP and
logging as for every network.

Data: image/label pairs in MAISI ids (a datalist folder, or a folder of ``*_image`` / ``*_label`` files), resampled
to ``segmenter.spacing`` (default: the data's own, which must be common). Each sample is a ``roi_size`` crop,
centred on a random foreground voxel half of the time and placed uniformly otherwise; the loss is Dice +
cross-entropy over background and the learned channels. Validation segments whole volumes by Gaussian sliding
windows (the way consistency evaluation uses the network) and reports the loss and the mean Dice of the channels.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maisi import labels as maisi_labels
from maisi.config.schema import Config, SegmenterConfig
from maisi.errors import CheckpointError, ConfigError, DataError
from maisi.networks import build
from maisi.training.datasets import Case, find_cases, split_cases
from maisi.training.tasks.base import SavedComponent, Task


class SegmenterTask(Task):
    """Train ``model.segmenter`` on image/label pairs."""

    name = "segmenter"
    primary = "segmenter"

    def setup(self) -> None:
        cases = find_cases(self.cfg.train.data, kind="volumes")
        missing = [c.name for c in cases if c.label is None]
        if missing:
            raise DataError(f"{self.cfg.train.data}: the segmenter needs label maps; {missing[:3]} have none")
        self.volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        seg = self.model_cfg.segmenter
        spacing = seg.spacing or self._common_spacing(cases)
        self.model_cfg = dataclasses.replace(
            self.model_cfg, segmenter=dataclasses.replace(seg, spacing=spacing, **self._channels(seg, cases))
        )
        self.train_cases, self.val_cases = split_cases(cases)
        self.build()

    def _common_spacing(self, cases: Sequence[Case]) -> tuple[float, float, float]:
        from maisi.data.nifti import load_nifti

        found = {tuple(round(s, 4) for s in load_nifti(c.image, kind="image").spacing) for c in cases}
        if len(found) > 1:
            raise DataError(
                f"{self.cfg.train.data}: volumes have different spacings {sorted(found)[:3]}; set "
                "model.segmenter.spacing (--spacing)"
            )
        return tuple(float(s) for s in next(iter(found)))

    def _channels(self, seg: SegmenterConfig, cases: Sequence[Case]) -> dict[str, Any]:
        """``labels`` (and ``groups``) resolved: given, or every id of the data but the body envelope."""
        if seg.groups is not None:
            if seg.labels and tuple(seg.labels) != tuple(ids[0] for ids in seg.groups.values()):
                raise ConfigError("model.segmenter: give labels or groups, not both")
            if not seg.groups or any(not ids for ids in seg.groups.values()):
                raise ConfigError(f"model.segmenter.groups must name non-empty id lists, got {seg.groups}")
            groups = maisi_labels.check_groups(seg.groups, source="model.segmenter.groups", error=ConfigError)
            return {"groups": groups, "labels": tuple(ids[0] for ids in groups.values())}
        ids = tuple(int(i) for i in seg.labels)
        if not ids:
            found: set[int] = set()
            for case in cases:
                found |= {int(i) for i in np.unique(self.store.label(case))}
            ids = tuple(sorted(found - {0, maisi_labels.BODY}))
        if not ids:
            raise DataError(f"{self.cfg.train.data}: no organ labels to learn")
        maisi_labels.check_ids(ids, source="model.segmenter.labels")
        return {"labels": ids}

    def build(self) -> None:
        from monai.losses import DiceCELoss

        from maisi.networks.segmenter import min_size

        net = build("segmenter", self.model_cfg)
        roi = self.model_cfg.segmenter.roi_size
        if any(int(r) % min_size(net) for r in roi):
            raise ConfigError(
                f"model.segmenter.roi_size {tuple(roi)} must be a multiple of the network downsampling "
                f"{min_size(net)}"
            )
        self.models["segmenter"] = net.to(self.device).train()
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def volume(self, case: Case) -> tuple[np.ndarray, np.ndarray]:
        """The case's scaled image and its channel map (0 background, k for label / group k), resampled."""
        if case.name not in self.volumes:
            from maisi.data.intensity import scale_intensity
            from maisi.data.nifti import load_pair
            from maisi.data.prepare import resample

            seg = self.model_cfg.segmenter
            image, label = load_pair(case.image, case.label)
            if tuple(round(s, 4) for s in image.spacing) != tuple(round(s, 4) for s in seg.spacing):
                image, label = resample(image, seg.spacing, order=1), resample(label, seg.spacing, order=0)
            lut = np.zeros(256, dtype=np.int64)
            for k, ids in enumerate(seg.groups.values() if seg.groups else [(i,) for i in seg.labels]):
                lut[list(ids)] = k + 1
            target = lut[np.asarray(label.array, dtype=np.int64).clip(0, 255)]
            self.volumes[case.name] = (
                np.asarray(scale_intensity(image.array, seg.intensity), np.float32),
                target,
            )
        return self.volumes[case.name]

    def make_batch(self, cases, generators):
        roi = self.model_cfg.segmenter.roi_size
        crops = [_random_crop(*self.volume(c), roi, g) for c, g in zip(cases, generators)]
        return {
            "image": torch.stack([torch.from_numpy(i) for i, _ in crops])[:, None],
            "target": torch.stack([torch.from_numpy(t) for _, t in crops])[:, None],
        }

    def loss(self, group, nets, batch, cache, step):
        return self.loss_fn(nets["segmenter"](batch["image"]), batch["target"]), {}

    def validate_case(self, nets, case, index):
        from maisi.networks.segmenter import sliding_logits

        unit, target = self.volume(case)
        seg = self.model_cfg.segmenter
        logits = sliding_logits(nets["segmenter"], unit, roi_size=seg.roi_size, device=self.device)
        truth = torch.from_numpy(target)[None, None].to(logits.device)
        loss = float(self.loss_fn(logits.float(), truth))
        predicted = logits.argmax(1)[0].cpu().numpy()
        dice = [_dice(predicted == k, target == k) for k in range(1, len(seg.labels) + 1)]
        return {"val_loss": loss, "dice": float(np.mean(dice))}

    def saved_components(self, nets):
        return {"segmenter": SavedComponent(nets["segmenter"], self.model_cfg.segmenter)}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _random_crop(
    image: np.ndarray, target: np.ndarray, roi: Sequence[int], gen: torch.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A roi-sized crop (zero-padded where the volume is smaller), centred on a random foreground voxel half of
    the time and uniformly placed otherwise; every draw from ``gen``."""
    pad = [(0, max(0, int(r) - s)) for r, s in zip(roi, image.shape)]
    if any(p[1] for p in pad):
        image, target = np.pad(image, pad), np.pad(target, pad)
    foreground = np.flatnonzero(target)
    if foreground.size and float(torch.rand((), generator=gen)) < 0.5:
        pick = int(torch.randint(foreground.size, (), generator=gen))
        centre = np.unravel_index(foreground[pick], target.shape)
        start = [int(np.clip(c - r // 2, 0, s - r)) for c, r, s in zip(centre, roi, target.shape)]
    else:
        start = [int(torch.randint(s - int(r) + 1, (), generator=gen)) for r, s in zip(roi, target.shape)]
    window = tuple(slice(a, a + int(r)) for a, r in zip(start, roi))
    return np.ascontiguousarray(image[window]), np.ascontiguousarray(target[window])


def segmenter_config(
    data: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    steps: int = 500,
    seed: int = 0,
    labels: Sequence[int] | None = None,
    groups: dict[str, Sequence[int]] | None = None,
    spacing: Sequence[float] | None = None,
    roi_size: Sequence[int] = (64, 64, 64),
    batch_size: int = 2,
    lr: float = 1e-3,
    network: dict[str, Any] | None = None,
    intensity: str = "ct",
) -> Config:
    """The config of a segmenter run (see :func:`train_segmenter` for the arguments): Adam at a constant rate, no
    gradient clipping, no EMA, one validation and one checkpoint at the end."""
    from maisi.config import preset

    if labels is not None and groups is not None:
        raise ConfigError("train_segmenter: pass labels or groups, not both")
    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    defaults = SegmenterConfig()
    cfg = preset("rflow-ct")
    cfg.model.segmenter = SegmenterConfig(
        network=str((network or {}).get("name", defaults.network)),
        network_kwargs=dict((network or {}).get("kwargs", defaults.network_kwargs)),
        labels=tuple(int(i) for i in labels or ()),
        groups=None if groups is None else {str(k): tuple(int(i) for i in v) for k, v in groups.items()},
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        roi_size=tuple(int(r) for r in roi_size),
        intensity=intensity,
    )
    cfg.train = dataclasses.replace(
        cfg.train,
        task="segmenter",
        data=str(data),
        run_dir=str(run_dir),
        max_steps=steps,
        seed=seed,
        batch_size=batch_size,
        lr=lr,
        lr_schedule="constant",
        grad_clip=0.0,
        ema_decay=0.0,
        val_every=0,
        ckpt_every=steps,
        log_every=10,
    )
    return cfg


def train_segmenter(
    data: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    device: str = "cpu",
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> Path:
    """Train maisi's small 3D segmentation model on image/label pairs with the generic loop; re-running the same
    command resumes an interrupted run.

    Args:
        data: pairs folder (``*_image.nii.gz`` + ``*_label.nii.gz``) or datalist.
        run_dir: the run folder; the segmenter lands in ``run_dir/model/segmenter/``.
        overwrite: start afresh in a run folder that already holds a segmenter.
        options: :func:`segmenter_config`'s: ``steps``, ``seed``, ``labels`` (MAISI ids to learn; default every
            id in the data except body), ``groups`` (learn merged groups instead, e.g.
            :data:`maisi.labels.LARGE_ORGANS`), ``spacing`` (resample first; default the data's common spacing),
            ``roi_size`` (training crop and inference window), ``batch_size``, ``lr``, ``network`` (``{"name",
            "kwargs"}`` of a ``monai.networks.nets`` class), ``intensity``.

    Returns:
        The segmenter folder.
    """
    from maisi.training import train

    cfg = segmenter_config(data, run_dir, **options)
    run = Path(run_dir)
    if (run / "model" / "segmenter").exists():
        if not overwrite:
            raise CheckpointError(f"{run}: already holds a segmenter; pass overwrite=True to retrain")
        for part in ("model", "checkpoints", "tensorboard", "config.json", "final.txt"):
            target = run / part
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    return train(cfg, device=device, progress=progress).model_dir / "segmenter"
