"""The network inputs MAISI derives from a request and a label map, with the official numerics.

- ControlNet conditioning: the label map as 8 binary channels, bit ``k`` of the MAISI id (ids <= 255), at image
  resolution, float.
- Spacing input: spacing in mm x 100, float32 ``(B, 3)``.
- Body-region inputs (``ddpm-ct``): top and bottom region one-hot x 100, float32 ``(B, 4)``.
- Modality input: class id of ``modality_mapping.json`` (CT = 1), int64 ``(B,)``.
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


def binarize_labels(label: torch.Tensor, bits: int = CONTROL_BITS) -> torch.Tensor:
    """Bit planes of a label map.

    Args:
        label: (B, 1, X, Y, Z) or (B, X, Y, Z) integer ids in ``[0, 2**bits)``.

    Returns:
        (B, bits, X, Y, Z) float32, channel ``k`` = bit ``k`` of the id.
    """
    if label.ndim == 5:
        if label.shape[1] != 1:
            raise ValueError(f"label must have one channel, got shape {tuple(label.shape)}")
        label = label[:, 0]
    ids = label.long()
    planes = [((ids >> k) & 1) for k in range(bits)]
    return torch.stack(planes, dim=1).float()


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
