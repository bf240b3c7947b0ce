"""Rectified flow (Liu et al. 2022; Esser et al. 2024, "SD3") as used by MAISI v2 (``rflow-ct``).

Numerics reproduce MONAI's ``RFlowScheduler`` (itself from Open-Sora), including three of its quirks that the
official weights were sampled with:

* inference times are rounded to float16 (and truncated to integers with ``use_discrete_timesteps``);
* the Euler step size is ``(t - trunc(t_next)) / T``: MONAI casts the next time to ``int``, so with non-integer
  times the steps sum to slightly more than 1 (at most ``(num_steps - 1) / T`` extra);
* the resolution shift is applied in float32.

MONAI ignores its ``transform_scale`` argument; here it multiplies the shift ratio (equal to MONAI at 1.0).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .base import Generators, Scheduler, append_dims

SAMPLE_METHODS = ("uniform", "logit-normal")


class RectifiedFlow(Scheduler):
    """Rectified-flow scheduler with MAISI's conventions.

    Forward process, with ``s = t / T`` in ``[0, 1]`` (``T = num_train_timesteps``)::

        x_t = (1 - s) * x0 + s * noise,      target (velocity) v = x0 - noise

    so ``t = T`` is pure noise, ``t = 0`` the data, and the reverse Euler step is ``x + v * (t - t_next) / T``.

    Args:
        num_train_timesteps: ``T``, the time scale the network was trained with.
        use_discrete_timesteps: round inference times / floor training times to integers.
        use_timestep_transform: apply the resolution-dependent shift (:meth:`transform_time`) so that larger
            latents spend more steps at high noise.
        sample_method: training time distribution, ``"uniform"`` or ``"logit-normal"`` (SD3 eq. 19).
        loc: mean of the logit-normal's underlying normal.
        scale: standard deviation of the logit-normal's underlying normal (the official config's ``scale=1.4``
            is this parameter; it has no effect with ``sample_method="uniform"``).
        base_img_size_numel: latent ``X * Y * Z`` at which the shift is the identity.
        spatial_dim: number of spatial dimensions (2 or 3) used in the shift's ``1 / spatial_dim`` power.
        transform_scale: extra multiplier of the shift ratio (1.0 = MONAI).
    """

    kind = "rflow"

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,
        use_discrete_timesteps: bool = False,
        use_timestep_transform: bool = True,
        sample_method: str = "uniform",
        loc: float = 0.0,
        scale: float = 1.0,
        base_img_size_numel: int = 32 * 32 * 32,
        spatial_dim: int = 3,
        transform_scale: float = 1.0,
    ) -> None:
        if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}")
        if sample_method not in SAMPLE_METHODS:
            raise ValueError(f"sample_method must be one of {SAMPLE_METHODS}, got {sample_method!r}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale!r}")
        if base_img_size_numel < 1:
            raise ValueError(f"base_img_size_numel must be >= 1, got {base_img_size_numel!r}")
        if spatial_dim not in (1, 2, 3):
            raise ValueError(f"spatial_dim must be 1, 2 or 3, got {spatial_dim!r}")
        if not transform_scale > 0:
            raise ValueError(f"transform_scale must be > 0, got {transform_scale!r}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.use_discrete_timesteps = bool(use_discrete_timesteps)
        self.use_timestep_transform = bool(use_timestep_transform)
        self.sample_method = sample_method
        self.loc = float(loc)
        self.scale = float(scale)
        self.base_img_size_numel = int(base_img_size_numel)
        self.spatial_dim = int(spatial_dim)
        self.transform_scale = float(transform_scale)

    def config(self) -> dict[str, Any]:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "use_discrete_timesteps": self.use_discrete_timesteps,
            "use_timestep_transform": self.use_timestep_transform,
            "sample_method": self.sample_method,
            "loc": self.loc,
            "scale": self.scale,
            "base_img_size_numel": self.base_img_size_numel,
            "spatial_dim": self.spatial_dim,
            "transform_scale": self.transform_scale,
        }

    # -- resolution shift ------------------------------------------------------------------------------------

    def _shift_unit(self, s: torch.Tensor, spatial_numel: int) -> torch.Tensor:
        """Shift unit times ``s`` in [0, 1] (float32): ``r s / (1 + (r - 1) s)``, SD3 eq. 23 with
        ``r = (numel / base_numel) ** (1 / spatial_dim) * transform_scale``."""
        if spatial_numel is None or int(spatial_numel) < 1:
            raise ValueError(
                f"spatial_numel must be a positive integer when use_timestep_transform is on, got {spatial_numel!r}"
            )
        numel = torch.tensor(int(spatial_numel), device=s.device)
        ratio = (numel / self.base_img_size_numel) ** (1.0 / self.spatial_dim) * self.transform_scale
        return ratio * s / (1 + (ratio - 1) * s)

    def transform_time(self, t: torch.Tensor, spatial_numel: int) -> torch.Tensor:
        """Resolution-dependent time shift of times ``t`` in ``[0, T]`` (float32), as MONAI's
        ``timestep_transform`` with ``input_img_size_numel = spatial_numel``.

        Args:
            t: times, any shape.
            spatial_numel: latent ``X * Y * Z``; larger than ``base_img_size_numel`` moves times towards noise.
        """
        s = torch.as_tensor(t, dtype=torch.float32) / self.num_train_timesteps
        return self._shift_unit(s, spatial_numel) * self.num_train_timesteps

    # -- interface -------------------------------------------------------------------------------------------

    def timesteps(
        self, num_steps: int, *, spatial_numel: int | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``num_steps + 1`` float32 times from ``T`` down to the terminal 0 (see :meth:`Scheduler.timesteps`).

        The first ``num_steps`` are ``T (1 - i / num_steps)``, shifted for ``spatial_numel`` when
        ``use_timestep_transform`` (then ``spatial_numel`` is required) and rounded to float16 as in MONAI.
        """
        n, big_t = int(num_steps), self.num_train_timesteps
        if n != num_steps or not 1 <= n <= big_t:
            raise ValueError(f"num_steps must be an integer in [1, {big_t}], got {num_steps!r}")
        ts = np.array([(1.0 - i / n) * big_t for i in range(n)], dtype=np.float64)
        if self.use_discrete_timesteps:
            ts = np.round(ts)
        if self.use_timestep_transform:
            if spatial_numel is None:
                raise ValueError("timesteps: spatial_numel is required when use_timestep_transform is on")
            s = torch.from_numpy(ts / big_t).to(torch.float32)
            ts = (self._shift_unit(s, spatial_numel) * big_t).numpy()
        ts16 = ts.astype(np.float16)  # MONAI keeps inference times in float16
        if self.use_discrete_timesteps:
            ts16 = ts16.astype(np.int64)
        out = torch.from_numpy(np.append(ts16.astype(np.float32), np.float32(0.0)))
        return out.to(device)

    def training_pair(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``x_t = (1 - t/T) x0 + (t/T) noise`` and the velocity target ``x0 - noise`` (MAISI's convention).

        Args:
            x0: clean latents ``(B, C, *spatial)``.
            noise: standard normal noise, same shape.
            t: ``(B,)`` times in ``[0, T]``.
        """
        keep = append_dims(1 - t.to(x0.device).float() / self.num_train_timesteps, x0.ndim)
        x_t = keep * x0 + (1 - keep) * noise
        return x_t, x0 - noise

    def sample_times(
        self,
        batch: int,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        spatial_numel: int | None = None,
    ) -> torch.Tensor:
        """``(batch,)`` float32 training times in ``[0, T)``: uniform or logit-normal, then floored
        (``use_discrete_timesteps``) and shifted for ``spatial_numel`` (``use_timestep_transform``)."""
        if generator is None:
            raise ValueError("sample_times: generator is required (results must depend only on the seed)")
        if self.sample_method == "uniform":
            u = torch.rand((batch,), generator=generator, device=generator.device)
        else:  # logit-normal: sigmoid of N(loc, scale^2), SD3 eq. 19
            z = torch.randn((batch,), generator=generator, device=generator.device)
            u = torch.sigmoid(z * self.scale + self.loc)
        t = u * self.num_train_timesteps
        if self.use_discrete_timesteps:
            t = t.long()
        if self.use_timestep_transform:
            if spatial_numel is None:
                raise ValueError("sample_times: spatial_numel is required when use_timestep_transform is on")
            t = self.transform_time(t, spatial_numel)
        return t.to(device) if device is not None else t

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        x: torch.Tensor,
        *,
        generator: Generators | None = None,
    ) -> torch.Tensor:
        """Euler step of the flow ODE ``dx/dt = -v / T``: ``x + v (t - trunc(t_next)) / T`` (deterministic;
        ``generator`` is ignored). The truncation of ``t_next`` is MONAI's, kept for fidelity."""
        dt = (float(t) - math.trunc(float(t_next))) / self.num_train_timesteps
        return x + model_output * dt
