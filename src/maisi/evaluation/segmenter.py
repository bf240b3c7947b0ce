"""Segmenters for mask-image consistency: a MONAI network in a checkpoint folder (ours or any MONAI net), and
training of maisi's own small 3D segmentation model on image/label pairs.

A segmenter folder holds ``config.json``::

    {"format": "maisi-segmenter",
     "network": {"name": "UNet", "kwargs": {...}},   # a class of monai.networks.nets and its arguments
     "labels": [1, 3, 5, ...],                       # MAISI id of output channel 1, 2, ... (channel 0 = background)
     "groups": {"kidneys": [5, 14], ...} | null,     # optional: channel k learns the union of group k's ids and
                                                     # outputs its first id (labels then hold those first ids)
     "spacing": [3.0, 3.0, 3.0] | null,              # voxel size the network expects (null: any)
     "roi_size": [64, 64, 64], "intensity": "ct",    # sliding-window size; input scaling (ct / mri / unit)
     "weights": "model.safetensors"}                 # or a .pt/.pth state dict, read without unpickling code

and the weights. :func:`train_segmenter` writes such a folder; a folder for another MONAI network (e.g. a bundle's
SegResNet) can be written by hand.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from maisi import labels as maisi_labels
from maisi.errors import CheckpointError, ConfigError, DataError
from maisi.evaluation.volumes import scale_intensity
from maisi.io import read_json

FORMAT = "maisi-segmenter"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
DEFAULT_NETWORK = {
    "name": "UNet",
    "kwargs": {
        "spatial_dims": 3,
        "in_channels": 1,
        "channels": [8, 16, 32, 64],
        "strides": [2, 2, 2],
        "num_res_units": 1,
    },
}


@dataclass(frozen=True, kw_only=True)
class SegmenterSpec:
    """What ``config.json`` of a segmenter folder holds (see the module docstring)."""

    network: dict[str, Any] = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_NETWORK)))
    labels: tuple[int, ...] = ()
    groups: dict[str, tuple[int, ...]] | None = None
    spacing: tuple[float, float, float] | None = None
    roi_size: tuple[int, int, int] = (64, 64, 64)
    intensity: str = "ct"
    weights: str = WEIGHTS_NAME
    extra: dict[str, Any] = field(default_factory=dict)


def build_network(spec: SegmenterSpec) -> nn.Module:
    """Instantiate ``monai.networks.nets.<name>(**kwargs, out_channels=len(labels) + 1)``."""
    import monai.networks.nets as nets

    name = spec.network.get("name")
    cls = getattr(nets, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"segmenter network {name!r} is not a class of monai.networks.nets")
    kwargs = dict(spec.network.get("kwargs", {}))
    kwargs.setdefault("out_channels", len(spec.labels) + 1)
    return cls(**kwargs)


class Segmenter:
    """A 3D segmentation network with its label table; ``segmenter(volume) -> (X, Y, Z) MAISI ids``.

    Args:
        model: network mapping (B, 1, *roi) to (B, len(labels) + 1, *roi) logits.
        spec: its :class:`SegmenterSpec`.
        device: where inference runs.
        overlap: sliding-window overlap.
    """

    def __init__(
        self, *, model: nn.Module, spec: SegmenterSpec, device: str = "cpu", overlap: float = 0.25
    ) -> None:
        self.model = model.to(device).eval()
        self.spec = spec
        self.device = torch.device(device)
        self.overlap = overlap
        self.lut = np.asarray([0, *spec.labels], dtype=np.uint8)

    @property
    def labels(self) -> tuple[int, ...]:
        return self.spec.labels

    @property
    def groups(self) -> dict[str, tuple[int, ...]] | None:
        """For a segmenter of merged label groups: group name -> MAISI ids (its output is each group's first id)."""
        return self.spec.groups

    @classmethod
    def load(cls, folder: str | os.PathLike, *, device: str = "cpu") -> Segmenter:
        """Load a segmenter folder (or a training run folder holding ``segmenter/``), weights read strictly."""
        d = Path(folder)
        if not (d / CONFIG_NAME).is_file() and (d / "segmenter" / CONFIG_NAME).is_file():
            d = d / "segmenter"
        spec = read_spec(d)
        model = build_network(spec)
        from maisi.io import read_torch_file
        from maisi.networks.checkpoint import load_state_strict
        from maisi.networks.official import split_state

        path = d / spec.weights
        if not path.is_file():
            raise CheckpointError(f"{path}: segmenter weights not found")
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state, _ = split_state(read_torch_file(path), source=str(path))
        load_state_strict(
            model, {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, source=str(path)
        )
        return cls(model=model, spec=spec, device=device)

    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (atomically, refusing to overwrite unless asked)."""
        from safetensors.torch import save_file

        from maisi.io import atomic_path, write_json

        d = Path(folder)
        if (d / CONFIG_NAME).exists() and not overwrite:
            raise CheckpointError(f"{d}: already holds a segmenter; refusing to overwrite")
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        with atomic_path(d / WEIGHTS_NAME, overwrite=True) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        spec = dataclasses.replace(self.spec, weights=WEIGHTS_NAME)
        write_json(d / CONFIG_NAME, {"format": FORMAT, **_spec_dict(spec)}, overwrite=True)
        return d

    @torch.inference_mode()
    def logits(self, unit: np.ndarray) -> torch.Tensor:
        """(X, Y, Z) scaled image -> (1, len(labels) + 1, X, Y, Z) logits (sliding window, Gaussian blending)."""
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(np.ascontiguousarray(unit, dtype=np.float32))[None, None].to(self.device)
        k = _min_size(self.model)
        size = tuple(x.shape[2:])
        padded = [-(-s // k) * k for s in size]  # the network needs multiples of its downsampling
        roi = [min(r, p) for r, p in zip(self.spec.roi_size, padded)]
        pad = [p - s for p, s in zip(padded, size)]
        if any(pad):
            x = F.pad(x, [v for p in reversed(pad) for v in (0, p)], mode="constant", value=0.0)
        out = sliding_window_inference(
            x, roi_size=roi, sw_batch_size=1, predictor=self.model, overlap=self.overlap, mode="gaussian"
        )
        return out[(slice(None), slice(None), *(slice(0, s) for s in size))]

    def __call__(self, volume: Any) -> np.ndarray:
        """Segment a :class:`~maisi.data.nifti.Volume`; returns (X, Y, Z) uint8 MAISI ids on its grid."""
        unit = scale_intensity(volume.array, self.spec.intensity)
        shape = unit.shape
        if self.spec.spacing is not None:
            new = _resampled_shape(shape, volume.spacing, self.spec.spacing)
            if new != shape:
                t = torch.from_numpy(unit)[None, None]
                unit = F.interpolate(t, size=new, mode="trilinear", align_corners=False)[0, 0].numpy()
        channels = self.logits(unit).argmax(dim=1)
        if tuple(channels.shape[1:]) != shape:
            channels = F.interpolate(channels[None].float(), size=shape, mode="nearest")[0].long()
        return self.lut[channels[0].cpu().numpy()]


def _min_size(model: nn.Module) -> int:
    strides = getattr(model, "strides", None)
    if strides is not None:
        return int(math.prod(int(s) if isinstance(s, int) else int(s[0]) for s in strides))
    return 16  # BasicUNet / SegResNet: 4 halvings


def _resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


def _spec_dict(spec: SegmenterSpec) -> dict[str, Any]:
    d = dataclasses.asdict(spec)
    d["labels"] = [int(i) for i in spec.labels]
    d["groups"] = None if spec.groups is None else {k: [int(i) for i in v] for k, v in spec.groups.items()}
    d["roi_size"] = [int(i) for i in spec.roi_size]
    d["spacing"] = None if spec.spacing is None else [float(s) for s in spec.spacing]
    return d


def _as_groups(
    groups: dict[str, Any], *, source: str, error: type[Exception] = ConfigError
) -> dict[str, tuple[int, ...]]:
    """``{name: ids}`` with string names and int tuples, every id a known MAISI id in one group only (``error``
    names an id listed twice)."""
    out = {str(k): tuple(int(i) for i in v) for k, v in groups.items()}
    owner: dict[int, str] = {}
    for name, ids in out.items():
        maisi_labels.check_ids(ids, source=source)
        for i in ids:
            if i in owner:
                raise error(f"{source}: id {i} is in two groups, {owner[i]!r} and {name!r}")
            owner[i] = name
    return out


def read_spec(folder: str | os.PathLike) -> SegmenterSpec:
    """Read and check a segmenter folder's ``config.json``."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a segmenter folder (no {CONFIG_NAME})")
    raw = read_json(path, error=CheckpointError, what="segmenter config", expect=dict)
    if raw.get("format") != FORMAT:
        raise CheckpointError(f"{path}: 'format' must be {FORMAT!r}, got {raw.get('format')!r}")
    known = {f.name for f in dataclasses.fields(SegmenterSpec)}
    unknown = sorted(set(raw) - known - {"format"})
    if unknown:
        raise CheckpointError(f"{path}: unknown keys {unknown}")
    labels = tuple(int(i) for i in raw.get("labels", ()))
    if not labels:
        raise CheckpointError(
            f"{path}: 'labels' must list the MAISI id of each output channel after background"
        )
    maisi_labels.check_ids(labels, source=str(path))
    groups = raw.get("groups")
    if groups is not None:
        if not isinstance(groups, dict) or [v[0] if v else None for v in groups.values()] != list(labels):
            raise CheckpointError(f"{path}: 'groups' must map names to id lists whose first ids are 'labels'")
        groups = _as_groups(groups, source=str(path), error=CheckpointError)
    spacing = raw.get("spacing")
    return SegmenterSpec(
        network=dict(raw.get("network", DEFAULT_NETWORK)),
        labels=labels,
        groups=groups,
        spacing=None if spacing is None else tuple(float(s) for s in spacing),
        roi_size=tuple(int(s) for s in raw.get("roi_size", (64, 64, 64))),
        intensity=str(raw.get("intensity", "ct")),
        weights=str(raw.get("weights", WEIGHTS_NAME)),
        extra=dict(raw.get("extra", {})),
    )


# ----------------------------------------------------------------------------------------------------------------
# training


def _load_training_pairs(
    data: str | os.PathLike, spacing: Sequence[float] | None, intensity: str
) -> tuple[list[tuple[np.ndarray, np.ndarray]], tuple[float, float, float]]:
    from maisi.data.nifti import load_pair
    from maisi.data.prepare import resample
    from maisi.evaluation.volumes import find_cases

    cases = find_cases(data, need_labels=True)
    pairs, spacings = [], []
    for case in cases:
        image, label = load_pair(case.image, case.label)
        if spacing is not None:
            image, label = resample(image, spacing, order=1), resample(label, spacing, order=0)
        spacings.append(tuple(round(s, 4) for s in image.spacing))
        pairs.append((scale_intensity(image.array, intensity), label.array))
    if spacing is None and len(set(spacings)) > 1:
        raise DataError(f"{data}: volumes have different spacings {sorted(set(spacings))[:3]}; pass spacing=")
    return pairs, tuple(float(s) for s in (spacing or spacings[0]))


def _random_crop(
    image: np.ndarray, target: np.ndarray, roi: Sequence[int], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A roi-sized crop (zero-padded where the volume is smaller), centred on a random foreground voxel half of
    the time and uniformly placed otherwise."""
    pad = [(0, max(0, r - s)) for r, s in zip(roi, image.shape)]
    if any(p[1] for p in pad):
        image, target = np.pad(image, pad), np.pad(target, pad)
    fg = np.flatnonzero(target)
    if fg.size and rng.random() < 0.5:
        centre = np.unravel_index(fg[rng.integers(fg.size)], target.shape)
        start = [int(np.clip(c - r // 2, 0, s - r)) for c, r, s in zip(centre, roi, target.shape)]
    else:
        start = [int(rng.integers(0, s - r + 1)) for r, s in zip(roi, target.shape)]
    window = tuple(slice(a, a + r) for a, r in zip(start, roi))
    return image[window], target[window]


def train_segmenter(
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
    device: str = "cpu",
    log_every: int = 10,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Train maisi's small 3D segmentation model (Dice + cross-entropy, Adam) on image/label pairs.

    Args:
        data: pairs folder (``*_image.nii.gz`` + ``*_label.nii.gz``) or datalist JSON.
        run_dir: output folder; receives ``segmenter/`` (the model folder) and ``train_log.json``.
        steps: optimiser steps.
        seed: the only source of randomness (weights, crops).
        labels: MAISI ids to learn (others become background); default: every id in the data except body (200).
        groups: learn merged groups instead of single ids (e.g. :data:`maisi.labels.LARGE_ORGANS`: all
            vertebrae as one class), one output channel each; the segmenter outputs each group's first id and
            consistency is then scored per group. Not together with ``labels``.
        spacing: resample the data to this voxel size (mm) first; default: the data's (all volumes must agree).
        roi_size: training crop and inference window, each a multiple of the network's downsampling.
        network: ``{"name", "kwargs"}`` of a monai.networks.nets class (default: a small UNet).
        progress: show a tqdm bar over the steps (with the running loss).

    Returns:
        The segmenter folder (``run_dir / "segmenter"``).
    """
    from monai.losses import DiceCELoss

    from maisi.io import write_json

    if steps < 1 or batch_size < 1:
        raise ConfigError(f"steps and batch_size must be >= 1, got {steps}, {batch_size}")
    run_dir = Path(run_dir)
    target_dir = run_dir / "segmenter"
    if (target_dir / CONFIG_NAME).exists() and not overwrite:
        raise CheckpointError(f"{target_dir}: already holds a segmenter; pass overwrite=True to retrain")
    if groups is not None and labels is not None:
        raise ConfigError("train_segmenter: pass labels or groups, not both")
    if groups is not None:
        if not groups or any(not ids for ids in groups.values()):
            raise ConfigError(f"groups must name non-empty id lists, got {groups}")
        groups = _as_groups(groups, source="groups")
    pairs, spacing = _load_training_pairs(data, spacing, intensity)
    lut = np.zeros(256, dtype=np.int64)
    if groups is not None:
        labels = tuple(ids[0] for ids in groups.values())
        for k, ids in enumerate(groups.values()):
            lut[list(ids)] = k + 1
    else:
        if labels is None:
            labels = sorted({int(i) for _, lab in pairs for i in np.unique(lab)} - {0, maisi_labels.BODY})
        labels = tuple(int(i) for i in labels)
        if not labels:
            raise DataError(f"{data}: no organ labels to learn")
        maisi_labels.check_ids(labels, source="labels")
        lut[list(labels)] = np.arange(1, len(labels) + 1)
    targets = [lut[lab.astype(np.int64).clip(0, 255)] for _, lab in pairs]
    spec = SegmenterSpec(
        network=network or json.loads(json.dumps(DEFAULT_NETWORK)),
        labels=labels,
        groups=groups,
        spacing=spacing,
        roi_size=tuple(int(r) for r in roi_size),
        intensity=intensity,
        extra={"data": str(data), "steps": steps, "seed": seed},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # MONAI networks initialise from the global generator: pin it to the seed
        model = build_network(spec).to(device)
    if any(int(r) % _min_size(model) for r in roi_size):
        raise ConfigError(
            f"roi_size {tuple(roi_size)} must be a multiple of the network downsampling {_min_size(model)}"
        )
    rng = np.random.default_rng(seed)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    log, start = [], time.time()
    model.train()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="train segmenter", unit="step")
    for step in range(1, steps + 1):
        crops = [
            _random_crop(pairs[i][0], targets[i], spec.roi_size, rng)
            for i in rng.integers(0, len(pairs), size=batch_size)
        ]
        x = torch.from_numpy(np.stack([c[0] for c in crops])[:, None].astype(np.float32)).to(device)
        y = torch.from_numpy(np.stack([c[1] for c in crops])[:, None]).to(device)
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps:
            log.append({"step": step, "loss": float(loss.detach()), "seconds": round(time.time() - start, 2)})
        if bar is not None:
            bar.update(1)
            if step % log_every == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
    if bar is not None:
        bar.close()
    model.eval()
    Segmenter(model=model, spec=spec, device=device).save(target_dir, overwrite=overwrite)
    write_json(
        run_dir / "train_log.json",
        {
            "steps": steps,
            "seed": seed,
            "labels": list(labels),
            "groups": None if groups is None else {k: list(v) for k, v in groups.items()},
            "cases": len(pairs),
            "log": log,
        },
        overwrite=True,
    )
    return target_dir
