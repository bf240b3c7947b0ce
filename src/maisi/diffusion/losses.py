"""Diffusion regression losses, with the optional region weight map of MAISI's ControlNet training."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

LOSS_KINDS = ("l1", "mse")


def diffusion_loss(
    pred: torch.Tensor, target: torch.Tensor, *, weight: torch.Tensor | None = None, kind: str = "l1"
) -> torch.Tensor:
    """Mean elementwise loss between the network output and the scheduler's target, computed in float32.

    MAISI trains both the diffusion UNet and the ControlNet with L1 (the default here).

    Args:
        pred: network output ``(B, C, *spatial)``.
        target: regression target, same shape (from ``Scheduler.training_pair``).
        weight: optional voxel weights broadcastable to ``pred`` (e.g. ``(B, 1, *spatial)`` from
            :func:`region_weight`); the loss is ``mean(weight * |pred - target|)``, i.e. not renormalised by the
            weight sum, as in MAISI.
        kind: ``"l1"`` or ``"mse"``.

    Returns:
        0-d float32 tensor.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"kind must be one of {LOSS_KINDS}, got {kind!r}")
    if pred.shape != target.shape:
        raise ValueError(
            f"diffusion_loss: pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}"
        )
    pred, target = pred.float(), target.float()
    if weight is None:
        return F.l1_loss(pred, target) if kind == "l1" else F.mse_loss(pred, target)
    per_voxel = (pred - target).abs() if kind == "l1" else (pred - target).square()
    return (per_voxel * weight.float()).mean()


def region_weight(
    labels: torch.Tensor, *, ids: Iterable[int], factor: float, size: tuple[int, ...] | None = None
) -> torch.Tensor:
    """Voxel weights that are ``factor`` on the given label ids and 1 elsewhere (MAISI's tumour-weighted loss).

    Args:
        labels: integer label map ``(B, 1, *spatial)``.
        ids: label ids to up-weight (MAISI default: tumours).
        factor: weight inside the region.
        size: spatial size of the latent; ``labels`` is resized to it with nearest-neighbour interpolation.

    Returns:
        float32 ``(B, 1, *size)``.
    """
    ids = list(ids)
    if size is not None and tuple(labels.shape[2:]) != tuple(size):
        labels = F.interpolate(labels.float(), size=tuple(size), mode="nearest")
    region = torch.isin(labels.long(), torch.tensor(ids, dtype=torch.long, device=labels.device))
    weight = torch.ones(labels.shape, dtype=torch.float32, device=labels.device)
    weight[region] = float(factor)
    return weight
