"""Segmenters for mask-image consistency: a MONAI network with the table of what its output channels mean.

A segmenter is trained by the generic training loop (``maisi train segmenter``, or ``maisi evaluate
train-segmenter``: :func:`maisi.training.tasks.segmenter.train_segmenter`), which writes it as the ``segmenter``
component of the run's model set (``RUN/model/segmenter/``: ``config.json`` holding a
:class:`~maisi.config.schema.SegmenterConfig`, and ``model.safetensors``). A folder for another MONAI network (e.g.
a bundle's SegResNet) can also be written by hand as ``config.json``::

    {"format": "maisi-segmenter",
     "network": {"name": "UNet", "kwargs": {...}},   # a class of monai.networks.nets and its arguments
     "labels": [1, 3, 5, ...],                       # MAISI id of output channel 1, 2, ... (channel 0 = background)
     "groups": {"kidneys": [5, 14], ...} | null,     # optional: channel k learns the union of group k's ids and
                                                     # outputs its first id (labels then hold those first ids)
     "spacing": [3.0, 3.0, 3.0] | null,              # voxel size the network expects (null: any)
     "roi_size": [64, 64, 64], "intensity": "ct",    # sliding-window size; input scaling (ct / mri / unit)
     "weights": "model.safetensors"}                 # or a .pt/.pth state dict, read without unpickling code

and the weights.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maisi import labels as maisi_labels
from maisi.config.schema import SegmenterConfig
from maisi.data.intensity import scale_intensity
from maisi.errors import CheckpointError
from maisi.io import read_json

FORMAT = "maisi-segmenter"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class Segmenter:
    """A 3D segmentation network with its label table; ``segmenter(volume) -> (X, Y, Z) MAISI ids``.

    Args:
        model: network mapping (B, 1, *roi) to (B, len(labels) + 1, *roi) logits.
        config: its :class:`~maisi.config.schema.SegmenterConfig`.
        device: where inference runs.
        overlap: sliding-window overlap.
    """

    def __init__(
        self, *, model: nn.Module, config: SegmenterConfig, device: str = "cpu", overlap: float = 0.25
    ) -> None:
        self.model = model.to(device).eval()
        self.config = config
        self.device = torch.device(device)
        self.overlap = overlap
        self.lut = np.asarray([0, *config.labels], dtype=np.uint8)

    @property
    def labels(self) -> tuple[int, ...]:
        return self.config.labels

    @property
    def groups(self) -> dict[str, tuple[int, ...]] | None:
        """For a segmenter of merged label groups: group name -> MAISI ids (its output is each group's first id)."""
        return self.config.groups

    @classmethod
    def load(cls, folder: str | os.PathLike, *, device: str = "cpu") -> Segmenter:
        """Load a segmenter: a component folder, a hand-written ``maisi-segmenter`` folder, or a training run
        folder holding either (``model/segmenter/``, ``segmenter/``); weights read strictly."""
        d = _segmenter_folder(Path(folder))
        raw = read_json(d / CONFIG_NAME, error=CheckpointError, what="segmenter config", expect=dict)
        if raw.get("component") == "segmenter":
            from maisi.networks.checkpoint import load_component

            comp = load_component(d, device=device)
            return cls(model=comp.model, config=comp.config, device=device)
        config, weights = read_spec(d)
        from maisi.networks.builders import build_segmenter

        model = build_segmenter(config)
        _load_weights(model, d / weights)
        return cls(model=model, config=config, device=device)

    def logits(self, unit: np.ndarray) -> torch.Tensor:
        """(X, Y, Z) scaled image -> (1, len(labels) + 1, X, Y, Z) logits (sliding window, Gaussian blending)."""
        from maisi.networks.segmenter import sliding_logits

        return sliding_logits(
            self.model, unit, roi_size=self.config.roi_size, overlap=self.overlap, device=self.device
        )

    def __call__(self, volume: Any) -> np.ndarray:
        """Segment a :class:`~maisi.data.nifti.Volume`; returns (X, Y, Z) uint8 MAISI ids on its grid."""
        from maisi.networks.segmenter import resampled_shape

        unit = scale_intensity(volume.array, self.config.intensity)
        shape = unit.shape
        if self.config.spacing is not None:
            new = resampled_shape(shape, volume.spacing, self.config.spacing)
            if new != shape:
                t = torch.from_numpy(unit)[None, None]
                unit = F.interpolate(t, size=new, mode="trilinear", align_corners=False)[0, 0].numpy()
        channels = self.logits(unit).argmax(dim=1)
        if tuple(channels.shape[1:]) != shape:
            channels = F.interpolate(channels[None].float(), size=shape, mode="nearest")[0].long()
        return self.lut[channels[0].cpu().numpy()]


def _segmenter_folder(d: Path) -> Path:
    for cand in (d, d / "model" / "segmenter", d / "segmenter"):
        if (cand / CONFIG_NAME).is_file():
            raw = read_json(cand / CONFIG_NAME, error=CheckpointError, what="segmenter config", expect=dict)
            if raw.get("component") == "segmenter" or raw.get("format") == FORMAT:
                return cand
    raise CheckpointError(
        f"{d}: not a segmenter folder (no {CONFIG_NAME} of a segmenter here, in model/segmenter/ or segmenter/)"
    )


def _load_weights(model: nn.Module, path: Path) -> None:
    from maisi.io import read_torch_file
    from maisi.networks.checkpoint import load_state_strict
    from maisi.networks.official import split_state

    if not path.is_file():
        raise CheckpointError(f"{path}: segmenter weights not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state, _ = split_state(read_torch_file(path), source=str(path))
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(model, state, source=str(path))


def read_spec(folder: str | os.PathLike) -> tuple[SegmenterConfig, str]:
    """Read and check a hand-written ``maisi-segmenter`` folder's ``config.json``: its config and weights file."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a segmenter folder (no {CONFIG_NAME})")
    raw = read_json(path, error=CheckpointError, what="segmenter config", expect=dict)
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: 'format' must be {FORMAT!r}, got {raw.get('format')!r}")
    known = {"format", "network", "labels", "groups", "spacing", "roi_size", "intensity", "weights", "extra"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise CheckpointError(f"{path}: unknown keys {unknown}")
    ids = tuple(int(i) for i in raw.get("labels", ()))
    if not ids:
        raise CheckpointError(
            f"{path}: 'labels' must list the MAISI id of each output channel after background"
        )
    maisi_labels.check_ids(ids, source=str(path))
    groups = raw.get("groups")
    if groups is not None:
        if not isinstance(groups, dict) or [v[0] if v else None for v in groups.values()] != list(ids):
            raise CheckpointError(f"{path}: 'groups' must map names to id lists whose first ids are 'labels'")
        groups = maisi_labels.check_groups(groups, source=str(path), error=CheckpointError)
    network = dict(raw.get("network", {}))
    spacing = raw.get("spacing")
    defaults = SegmenterConfig()
    config = dataclasses.replace(
        defaults,
        network=str(network.get("name", defaults.network)),
        network_kwargs=dict(network.get("kwargs", defaults.network_kwargs)),
        labels=ids,
        groups=groups,
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        roi_size=tuple(int(s) for s in raw.get("roi_size", defaults.roi_size)),
        intensity=str(raw.get("intensity", defaults.intensity)),
    )
    return config, str(raw.get("weights", WEIGHTS_NAME))
