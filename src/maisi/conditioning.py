"""The network inputs MAISI derives from label maps and requests, shared by training and generation, with the
official numerics.

- ControlNet conditioning: the label map as 8 binary channels, bit ``k`` of the MAISI id (ids <= 255), at image
  resolution, float.
- Spacing input: spacing in mm x 100, float32 ``(B, 3)``.
- Body-region inputs (``ddpm-ct``): top and bottom region one-hot x 100, float32 ``(B, 4)``.
- Modality input: class id of ``modality_mapping.json`` (CT = 1), int64 ``(B,)``.
- The tumour-removed label map (the unconditional control of tumour-presence guidance).
- The mask model's size vector measured from a label map, and the id <-> class-channel maps of the mask VAE.

Label maps are (X, Y, Z) RAS arrays of MAISI ids; tensors are (B, C, X, Y, Z).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from maisi import labels

#: number of binary channels of the ControlNet conditioning (MAISI ids < 256)
CONTROL_BITS = 8
#: official scale of the spacing and body-region inputs
INPUT_SCALE = 1e2


def binarize_labels(
    label: torch.Tensor, bits: int = CONTROL_BITS, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Bit planes of a label map, built from 1-byte ids (no int64 copy of the map).

    Args:
        label: (B, 1, X, Y, Z) or (B, X, Y, Z) integer ids in ``[0, 2**bits)`` (uint8 is used as it is; other
            dtypes are narrowed to uint8 first, which keeps each id's low 8 bits, the bits the planes read).
        dtype: of the planes (default float32; 0 and 1 are exact in every floating dtype).

    Returns:
        (B, bits, X, Y, Z) ``dtype``, channel ``k`` = bit ``k`` of the id, on ``label``'s device. Peak memory is the
        planes plus two label-sized uint8 tensors.
    """
    if label.ndim == 5:
        if label.shape[1] != 1:
            raise ValueError(f"label must have one channel, got shape {tuple(label.shape)}")
        label = label[:, 0]
    ids = label_ids(label) if bits <= 8 else label.long()
    planes = torch.empty((ids.shape[0], bits, *ids.shape[1:]), dtype=dtype, device=ids.device)
    bit = torch.empty_like(ids)
    for k in range(bits):
        torch.bitwise_right_shift(ids, k, out=bit)
        planes[:, k].copy_(bit.bitwise_and_(1))
    return planes


def label_ids(label: torch.Tensor) -> torch.Tensor:
    """A label map as uint8 ids (1 byte per voxel): itself when it is uint8; integer ids keep their low 8 bits (as
    the int64 bit planes read them); floating ids are truncated toward zero first (as ``.long()`` truncates)."""
    if label.dtype == torch.uint8:
        return label
    if label.is_floating_point():
        label = label.to(torch.int32)
    return label.to(torch.uint8)


def spacing_input(
    spacing: Sequence[float], *, batch: int = 1, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Spacing (mm) as the UNet's ``spacing_tensor``: float32 ``(batch, 3)``, x 100."""
    return (
        (torch.tensor([list(map(float, spacing))], dtype=torch.float32) * INPUT_SCALE)
        .expand(batch, 3)
        .to(device)
    )


def region_input(index: int, *, batch: int = 1, device: torch.device | str = "cpu") -> torch.Tensor:
    """One-hot body region (0 head .. 3 lower body) as the ddpm UNet expects it: float32 ``(batch, 4)``, x 100."""
    return (
        (torch.tensor([labels.region_one_hot(index)], dtype=torch.float32) * INPUT_SCALE)
        .expand(batch, 4)
        .to(device)
    )


#: marker labels of each body region in the official inference rule (``get_body_region_index_from_mask``):
#: head/neck, thorax, abdomen, pelvis/lower body
OFFICIAL_REGION_MARKERS: tuple[tuple[int, ...], ...] = (
    (22, 120),
    labels.LUNG_LOBES,
    (1, 2, 3, 4, 5, 14),
    (93, 94),
)


def regions_for(label: np.ndarray, requested: Sequence[int]) -> tuple[int, int]:
    """Top and bottom body-region indices of a label map by the official inference rule: the first and last region
    whose marker labels are present; the requested regions when none is."""
    present = set(np.unique(label).tolist())
    found = [i for i, markers in enumerate(OFFICIAL_REGION_MARKERS) if present.intersection(markers)]
    if not found:
        found = sorted(requested) or [labels.REGIONS.index("chest")]
    return found[0], found[-1]


#: Tumour (and cyst) id -> the organ id it becomes in the unconditional control map (the official rule).
TUMOR_TO_ORGAN: dict[int, int] = {26: 1, 24: 4, 27: 62, 116: 14, 117: 5}


def without_tumors(label: np.ndarray) -> np.ndarray:
    """The label map with its tumours removed: the unconditional control of tumour-presence guidance (MAISI-v2).

    Follows the official rule: hepatic, pancreatic and colon tumours and the kidney cysts take their organ's id
    (:data:`TUMOR_TO_ORGAN`); lung-tumour voxels take the lung lobe most frequent in the one-voxel ring around them
    (ties -> the smaller id; no lobe in the ring -> the volume's most frequent lobe); bone lesions (128) stay, as
    the official pipeline leaves them.
    """
    from scipy import ndimage as ndi

    out = np.array(label, copy=True)
    for tumor, organ in TUMOR_TO_ORGAN.items():
        out[label == tumor] = organ
    lung_tumor = out == labels.TUMORS["lung tumor"]
    if lung_tumor.any():
        lobes = np.asarray(labels.LUNG_LOBES)
        ring = ndi.binary_dilation(lung_tumor, structure=np.ones((3, 3, 3), bool)) & ~lung_tumor
        around = out[ring & np.isin(out, lobes)]
        pool = around if around.size else out[np.isin(out, lobes)]
        if pool.size:
            counts = np.array([np.count_nonzero(pool == lobe) for lobe in lobes])
            out[lung_tumor] = lobes[int(np.argmax(counts))]  # argmax takes the first (smallest id) on ties
    return out


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


def size_vector_from_label(label: np.ndarray, spacing: Sequence[float]) -> list[float]:
    """The 10-value size vector of a label map: for each slot of :data:`maisi.labels.SIZE_SLOTS`, the organ's
    (or tumour's) volume in mL divided by its :data:`SIZE_REFERENCE_ML`; :data:`maisi.labels.ABSENT_SIZE` (-1) when absent.

    Args:
        label: (X, Y, Z) MAISI ids.
        spacing: voxel size (mm) along X, Y, Z.
    """
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    counts = np.bincount(np.asarray(label, dtype=np.int64).ravel(), minlength=256)
    sizes = []
    for name in labels.SIZE_SLOTS:
        n = int(counts[labels.id_of(name)])
        sizes.append(n * voxel_ml / SIZE_REFERENCE_ML[name] if n else labels.ABSENT_SIZE)
    return sizes


def tumor_mask(label: torch.Tensor) -> torch.Tensor:
    """1 on tumour voxels of an id map, 0 elsewhere (float32, same shape)."""
    ids = torch.tensor(sorted(labels.TUMORS.values()), device=label.device)
    return torch.isin(label.long(), ids).float()


def _id_to_channel_table() -> torch.Tensor:
    table = torch.zeros(256, dtype=torch.long)
    for channel, label_id in labels.MASK_CHANNEL_TO_ID.items():
        table[label_id] = channel
    # kidney cysts have no mask-model channel: they belong to their kidney
    for cyst, kidney in (
        (labels.id_of("left kidney cyst"), labels.id_of("left kidney")),
        (labels.id_of("right kidney cyst"), labels.id_of("right kidney")),
    ):
        table[cyst] = table[kidney]
    return table


def _channel_to_id_table() -> torch.Tensor:
    table = torch.zeros(labels.MASK_CLASSES, dtype=torch.long)
    for channel, label_id in labels.MASK_CHANNEL_TO_ID.items():
        table[channel] = label_id
    return table


def ids_to_mask_channels(label: torch.Tensor) -> torch.Tensor:
    """MAISI ids -> the mask model's class channels (:data:`maisi.labels.MASK_CHANNEL_TO_ID`, inverted); ids
    without a channel (kidney cysts -> their kidney, unused 'dummy' ids -> background) are folded in."""
    return _id_to_channel_table().to(label.device)[label.long()]


def mask_channels_to_ids(channels: torch.Tensor) -> torch.Tensor:
    """Class channels (e.g. the argmax of the mask VAE's 125 outputs) -> MAISI ids."""
    return _channel_to_id_table().to(channels.device)[channels.long()]
