"""Samplers: short pure functions over a denoiser callable and a :class:`~maisi.diffusion.base.Scheduler`."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from tqdm.auto import tqdm

from .base import Generators, Scheduler, randn

#: ``denoiser(x, t) -> model_output``: ``x`` is ``(B, C, *spatial)``, ``t`` the network times ``(B,)`` float32
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

__all__ = ["Denoiser", "randn", "sample"]


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    scheduler: Scheduler,
    x_T: torch.Tensor,
    *,
    num_steps: int,
    generator: Generators | None = None,
    progress: bool = True,
    spatial_numel: int | None = None,
) -> torch.Tensor:
    """Run the reverse process from ``x_T`` to clean latents: ``num_steps`` network calls, one scheduler step each.

    Args:
        denoiser: ``denoiser(x, t)``; see :func:`maisi.diffusion.guidance.make_denoiser` for the MAISI networks.
        scheduler: any :class:`Scheduler`.
        x_T: initial noise ``(B, C, *spatial)`` (e.g. :func:`randn` with one generator per sample).
        num_steps: number of network evaluations.
        generator: for stochastic schedulers (DDPM); a sequence of ``B`` generators makes a batch equal to its
            samples run one by one.
        progress: show a tqdm bar.
        spatial_numel: latent ``X * Y * Z`` for resolution-dependent schedules; default ``prod(x_T.shape[2:])``.

    Returns:
        ``x_0`` with the shape and dtype of ``x_T``.
    """
    if spatial_numel is None:
        spatial_numel = math.prod(x_T.shape[2:])
    times = scheduler.timesteps(num_steps, spatial_numel=spatial_numel)
    x = x_T
    batch = x.shape[0]
    for t, t_next in tqdm(zip(times[:-1], times[1:]), total=num_steps, disable=not progress, desc="sampling"):
        t_model = scheduler.model_time(t).to(x.device).expand(batch)
        x = scheduler.step(denoiser(x, t_model), t, t_next, x, generator=generator)
    return x
