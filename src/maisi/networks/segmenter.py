"""The segmentation network of mask-image consistency (a MONAI network, :func:`maisi.networks.builders.
build_segmenter`): whole-volume inference by Gaussian sliding windows, shared by training (validation) and
evaluation (re-segmenting generated images)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def min_size(model: nn.Module) -> int:
    """The factor every input axis must be a multiple of (the network's total downsampling)."""
    strides = getattr(model, "strides", None)
    if strides is not None:
        return int(math.prod(int(s) if isinstance(s, int) else int(s[0]) for s in strides))
    return 16  # BasicUNet / SegResNet: 4 halvings


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]
) -> tuple[int, ...]:
    """The grid size of a volume of ``shape`` at ``spacing`` resampled to ``target`` spacing."""
    return tuple(max(1, int(round(n * s / t))) for n, s, t in zip(shape, spacing, target))


@torch.inference_mode()
def sliding_logits(
    model: nn.Module,
    unit: np.ndarray | torch.Tensor,
    *,
    roi_size: Sequence[int],
    overlap: float = 0.25,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """(X, Y, Z) scaled image -> (1, C, X, Y, Z) logits (MONAI's Gaussian sliding window; the volume is padded to
    a multiple of the network's downsampling and the logits cropped back)."""
    from monai.inferers import sliding_window_inference

    x = torch.as_tensor(np.ascontiguousarray(unit, dtype=np.float32))[None, None].to(device)
    k = min_size(model)
    size = tuple(x.shape[2:])
    padded = [-(-s // k) * k for s in size]
    roi = [min(r, p) for r, p in zip(roi_size, padded)]
    pad = [p - s for p, s in zip(padded, size)]
    if any(pad):
        x = F.pad(x, [v for p in reversed(pad) for v in (0, p)], mode="constant", value=0.0)
    out = sliding_window_inference(
        x, roi_size=roi, sw_batch_size=1, predictor=model, overlap=overlap, mode="gaussian"
    )
    return out[(slice(None), slice(None), *(slice(0, s) for s in size))]
