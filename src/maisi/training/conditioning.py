"""Conditioning computed from training label maps: the mask model's size vector, the tumour region, and the
id <-> class-channel maps of the mask VAE. (The ControlNet's 8-bit encoding, the spacing / region input scale and
the tumour-removed mask are shared with generation: :mod:`maisi.generation.conditioning`.)

Label maps are (X, Y, Z) RAS arrays of MAISI ids; tensors are (B, C, X, Y, Z).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maisi import labels as L

#: Reference volume (mL) of each size-vector slot (order of :data:`maisi.labels.SIZE_SLOTS`): roughly the volume
#: of a large adult organ, or of a large tumour. ``size = volume / reference`` puts typical values in [0, 1.5];
#: an absent organ or tumour is -1 (the value generation uses for "no tumour").
SIZE_REFERENCE_ML: dict[str, float] = {
    "gallbladder": 60.0,
    "liver": 2000.0,
    "stomach": 600.0,
    "pancreas": 100.0,
    "colon": 1000.0,
    "lung tumor": 30.0,
    "pancreatic tumor": 30.0,
    "hepatic tumor": 50.0,
    "colon cancer primaries": 30.0,
    "bone lesion": 20.0,
}
#: size-vector value of an organ or tumour that is absent from the label map
SIZE_ABSENT = -1.0


def size_vector_from_label(label: np.ndarray, spacing: Sequence[float]) -> list[float]:
    """The 10-value size vector of a label map: for each slot of :data:`maisi.labels.SIZE_SLOTS`, the organ's
    (or tumour's) volume in mL divided by its :data:`SIZE_REFERENCE_ML`; :data:`SIZE_ABSENT` (-1) when absent.

    Args:
        label: (X, Y, Z) MAISI ids.
        spacing: voxel size (mm) along X, Y, Z.
    """
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    counts = np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=256)
    sizes = []
    for name in L.SIZE_SLOTS:
        n = int(counts[L.id_of(name)])
        sizes.append(n * voxel_ml / SIZE_REFERENCE_ML[name] if n else SIZE_ABSENT)
    return sizes


def tumor_mask(label: torch.Tensor) -> torch.Tensor:
    """1 on tumour voxels of an id map, 0 elsewhere (float32, same shape)."""
    ids = torch.tensor(sorted(L.TUMORS.values()), device=label.device)
    return torch.isin(label.long(), ids).float()


def _id_to_channel_table() -> torch.Tensor:
    table = torch.zeros(256, dtype=torch.long)
    for channel, label_id in L.MASK_CHANNEL_TO_ID.items():
        table[label_id] = channel
    # kidney cysts have no mask-model channel: they belong to their kidney
    for cyst, kidney in (
        (L.id_of("left kidney cyst"), L.id_of("left kidney")),
        (L.id_of("right kidney cyst"), L.id_of("right kidney")),
    ):
        table[cyst] = table[kidney]
    return table


def _channel_to_id_table() -> torch.Tensor:
    table = torch.zeros(L.MASK_CLASSES, dtype=torch.long)
    for channel, label_id in L.MASK_CHANNEL_TO_ID.items():
        table[channel] = label_id
    return table


def ids_to_mask_channels(label: torch.Tensor) -> torch.Tensor:
    """MAISI ids -> the mask model's class channels (:data:`maisi.labels.MASK_CHANNEL_TO_ID`, inverted); ids
    without a channel (kidney cysts -> their kidney, unused 'dummy' ids -> background) are folded in."""
    return _id_to_channel_table().to(label.device)[label.long()]


def mask_channels_to_ids(channels: torch.Tensor) -> torch.Tensor:
    """Class channels (e.g. the argmax of the mask VAE's 125 outputs) -> MAISI ids."""
    return _channel_to_id_table().to(channels.device)[channels.long()]
