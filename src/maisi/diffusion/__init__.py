"""Noise schedulers with one interface (rectified flow, DDPM), the sampler loop, guidance and losses.

Typical use::

    scheduler = RectifiedFlow()
    x_T = randn((1, 4, 64, 64, 64), generator=[torch.Generator().manual_seed(0)])
    denoiser = make_denoiser(unet, controlnet=controlnet, control=mask8, spacing=spacing, modality=1)
    x_0 = sample(denoiser, scheduler, x_T, num_steps=30)
"""

from __future__ import annotations

from .base import Generators, Scheduler, append_dims, randn
from .ddpm import DDPM
from .guidance import make_denoiser
from .losses import diffusion_loss, region_weight
from .rflow import RectifiedFlow
from .samplers import Denoiser, sample
from .schedulers import SCHEDULERS, build_scheduler, scheduler_from_config

__all__ = [
    "DDPM",
    "SCHEDULERS",
    "Denoiser",
    "Generators",
    "RectifiedFlow",
    "Scheduler",
    "append_dims",
    "build_scheduler",
    "diffusion_loss",
    "make_denoiser",
    "randn",
    "region_weight",
    "sample",
    "scheduler_from_config",
]
