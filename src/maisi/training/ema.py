"""Exponential moving average of a network's weights, with the usual warm-up of the decay."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """Shadow copy of a network whose weights follow ``w_ema <- d w_ema + (1 - d) w`` after each optimiser step.

    The decay warms up as ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates, so a short run's average is
    not dominated by the initial weights. Non-floating buffers are copied. The shadow is a full network
    (``self.model``), kept in eval mode and without gradients, so it can be evaluated and saved like any other.

    Args:
        model: the network being trained (unwrapped, not DDP).
        decay: target decay in [0, 1); 0 makes the shadow equal the latest weights.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the shadow towards ``model``'s current weights (one call per optimiser step)."""
        d = self.current_decay()
        shadow = self.model.state_dict()
        for key, value in model.state_dict().items():
            target = shadow[key]
            if target.is_floating_point():
                target.lerp_(value.detach().to(target.dtype), 1.0 - d)
            else:
                target.copy_(value)
        self.updates += 1

    def state_dict(self) -> dict:
        """Tensors and plain values only (loads with ``weights_only=True``)."""
        return {
            "decay": self.decay,
            "updates": self.updates,
            "weights": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
        }

    def load_state_dict(self, state: dict) -> None:
        self.updates = int(state["updates"])
        self.model.load_state_dict(state["weights"], strict=True)
