"""Optimiser, learning-rate schedule, mixed precision and gradient-checkpointing helpers of the training loop."""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from maisi.config.schema import TrainConfig


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``params`` with the config's learning rate and weight decay."""
    return torch.optim.AdamW([p for p in params if p.requires_grad], lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimiser step ``step`` (0-based).

    Linear warm-up over ``warmup`` steps (from ``1 / warmup`` to 1), then ``constant``, ``linear`` decay to 0 or
    ``cosine`` decay to 0 at ``total`` steps. A pure function of the step, so resuming needs no scheduler state.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"lr_schedule must be constant, linear or cosine, got {schedule!r}")


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``, or None for full precision.

    ``fp16`` needs CUDA (CPU autocast supports only bf16); ``bf16`` on a GPU below compute capability 8.0 (V100,
    T4) is emulated and warned about.
    """
    if amp == "none":
        return None
    if amp == "bf16":
        from maisi.performance import cuda_bf16_fast

        if device.type == "cuda" and not cuda_bf16_fast(device):
            warnings.warn(
                f"train.amp 'bf16' is emulated on {torch.cuda.get_device_name(device)} (compute capability below "
                "8.0): 3D convolutions fall back to a slow kernel; use 'fp16'",
                stacklevel=2,
            )
        return torch.bfloat16
    if amp == "fp16":
        if device.type != "cuda":
            from maisi.errors import ConfigError

            raise ConfigError("train.amp: 'fp16' needs a CUDA device; use 'bf16' or 'none' on CPU")
        return torch.float16
    raise ValueError(f"amp must be none, bf16 or fp16, got {amp!r}")


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``dtype``, or a no-op context for full precision."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def set_grad_checkpointing(model: nn.Module, enabled: bool) -> nn.Module:
    """:func:`enable_grad_checkpointing`, or with ``enabled=False`` turn MONAI's own switches off (the official
    ControlNet checkpoints its conditioning embedding, which costs a second forward of it per step)."""
    if enabled:
        return enable_grad_checkpointing(model)
    return _set_own_switches(model, False)


def _set_own_switches(model: nn.Module, value: bool) -> nn.Module:
    """MONAI's own checkpointing switches (VAE: ``use_checkpoint``, ControlNet: ``use_checkpointing``)."""
    for flag in ("use_checkpoint", "use_checkpointing"):
        if hasattr(model, flag):
            setattr(model, flag, value)
    return model


def enable_grad_checkpointing(model: nn.Module) -> nn.Module:
    """Recompute activations in the backward pass instead of storing them (same results, less memory).

    MONAI's VAE and ControlNet have their own switch, which is turned on; the UNets' down, middle and up blocks
    are wrapped in non-reentrant ``torch.utils.checkpoint`` (parameter names are unchanged).
    """
    _set_own_switches(model, True)
    blocks: list[nn.Module] = []
    for name in ("down_blocks", "up_blocks"):
        if isinstance(getattr(model, name, None), nn.ModuleList):
            blocks.extend(getattr(model, name))
    if isinstance(getattr(model, "middle_block", None), nn.Module):
        blocks.append(model.middle_block)
    for block in blocks:
        if not getattr(block, "_maisi_checkpointed", False):
            block.forward = functools.partial(_checkpointed, block.forward)
            block._maisi_checkpointed = True
    return model


def _checkpointed(forward, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return torch.utils.checkpoint.checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Temporarily stop gradients into ``module``'s parameters (restoring each flag afterwards)."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)
