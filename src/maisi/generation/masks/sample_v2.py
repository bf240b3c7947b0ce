"""Sampling the latent of the 2026 mask generator (``rflow-mask``): rectified flow with classifier-free guidance.

Numerics of the official sampler (NV-Generate-CTMR ``scripts/sample_mask.py``, ``ldm_conditional_sample_one_mask``):

- noise of the mask latent shape (4, 64, 64, 64); the mask scheduler's times for ``steps`` (100) with the
  resolution shift for the latent's ``X * Y * Z``;
- the AdaGN UNet called with ``context`` = the 19-value condition ``(B, 1, 19)`` and ``spacing_tensor`` =
  spacing (mm) x 100 (the official default 1.5 mm; the official pipeline passes the request's spacing);
- guidance as one batch ``[cond, uncond]``, the unconditional condition all -1, output ``u + s (c - u)``
  (``s = 2``; ``s = 0``: one conditional pass);
- the Euler steps of MONAI's ``RFlowScheduler``, including its last step: the official loop gives no next time
  there, and MONAI then advances by ``1 / steps`` instead of down to time 0 (with the 64^3 shift the last time is
  about ``2 / steps``, so about ``1 / steps`` of the noise is left, as in the official latents).

The decode (mask VAE, argmax, channel -> MAISI id) is the one of the v1 mask model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from maisi.conditioning import spacing_input
from maisi.diffusion import Generators, Scheduler, make_denoiser, sample, scheduler_from_config
from maisi.generation.masks.base import MASK_MODEL_SPACING
from maisi.generation.masks.conditions_v2 import CONDITION_DIM, ConditionV2, unconditional_vector

#: official defaults of the v2 mask sampler: steps, guidance scale, spacing input (the model's native 1.5 mm)
MASK_STEPS_V2 = 100
MASK_GUIDANCE_V2 = 2.0
MASK_SPACING_V2 = (MASK_MODEL_SPACING,) * 3


class OfficialLastStep(Scheduler):
    """A rectified-flow scheduler whose last step advances by ``1 / num_steps`` (MONAI's
    ``RFlowScheduler.step`` without a next time, as the official v2 mask sampler calls it); every other step and
    method is the wrapped scheduler's.

    Args:
        base: the mask scheduler (rectified flow).
        num_steps: the number of steps the sampler runs (the length of the official schedule).
    """

    def __init__(self, base: Scheduler, num_steps: int) -> None:
        if base.kind != "rflow":
            raise ValueError(f"OfficialLastStep wraps a rectified-flow scheduler, got kind {base.kind!r}")
        if int(num_steps) != num_steps or num_steps < 1:
            raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
        self.base = base
        self.num_steps = int(num_steps)
        self.kind = base.kind
        self.num_train_timesteps = base.num_train_timesteps

    def timesteps(
        self, num_steps: int, *, spatial_numel: int | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        if num_steps != self.num_steps:
            raise ValueError(f"OfficialLastStep was made for {self.num_steps} steps, asked for {num_steps}")
        return self.base.timesteps(num_steps, spatial_numel=spatial_numel, device=device)

    def training_pair(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.base.training_pair(x0, noise, t)

    def sample_times(
        self,
        batch: int,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        spatial_numel: int | None = None,
    ) -> torch.Tensor:
        return self.base.sample_times(batch, generator=generator, device=device, spatial_numel=spatial_numel)

    def model_time(self, t: torch.Tensor | float) -> torch.Tensor:
        return self.base.model_time(t)

    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        x: torch.Tensor,
        *,
        generator: Generators | None = None,
    ) -> torch.Tensor:
        if float(t_next) == 0.0:  # the terminal time: MONAI's dt = 1 / num_inference_steps
            return x + model_output * (1.0 / float(self.num_steps))
        return self.base.step(model_output, t, t_next, x, generator=generator)

    def config(self) -> dict[str, Any]:
        return self.base.config()


def condition_context(
    condition: ConditionV2 | Sequence[float] | torch.Tensor, *, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The UNet's ``context``: float32 ``(B, 1, 19)`` from one condition (``ConditionV2``, 19 numbers) or a
    ``(B, 19)`` tensor."""
    if isinstance(condition, ConditionV2):
        condition = condition.vector
    c = torch.as_tensor(condition, dtype=torch.float32, device=device)
    if c.ndim == 1:
        c = c[None]
    if c.ndim != 2 or c.shape[1] != CONDITION_DIM:
        raise ValueError(f"condition must have {CONDITION_DIM} values per sample, got shape {tuple(c.shape)}")
    return c[:, None, :]


def sample_mask_latent_v2(
    unet: torch.nn.Module,
    scheduler: Scheduler | Mapping[str, Any] | Any,
    condition: ConditionV2 | Sequence[float] | torch.Tensor,
    noise: torch.Tensor,
    *,
    steps: int = MASK_STEPS_V2,
    guidance: float = MASK_GUIDANCE_V2,
    spacing: Sequence[float] = MASK_SPACING_V2,
    progress: bool = False,
) -> torch.Tensor:
    """Sample mask latents of the v2 (AdaGN, rectified-flow) mask generator from initial noise.

    Args:
        unet: :class:`~maisi.networks.adagn.DiffusionModelUNetMaisiAdaGN` (eval mode), on the noise's device.
        scheduler: the mask scheduler, or its config (``model.mask_scheduler``); must be rectified flow.
        condition: one 19-value condition (:func:`~maisi.generation.masks.conditions_v2.build_condition_v2`),
            shared by the batch, or ``(B, 19)`` values, one row per sample.
        noise: initial latents ``(B, C, x, y, z)`` (official: ``(1, 4, 64, 64, 64)``), e.g.
            :func:`maisi.diffusion.randn` with one generator per sample.
        steps: rectified-flow steps (official: 100).
        guidance: classifier-free guidance scale ``s >= 0`` (official: 2.0; 0: no unconditional pass).
        spacing: spacing (mm) given to the UNet's spacing input.
        progress: show a progress bar.

    Returns:
        Latents with the shape and dtype of ``noise`` (scaled: the mask VAE decodes ``z / scale_factor``).
    """
    if not isinstance(scheduler, Scheduler):
        scheduler = scheduler_from_config(scheduler)
    if scheduler.kind != "rflow":
        raise ValueError(
            f"the v2 mask generator samples with rectified flow, got a {scheduler.kind!r} scheduler"
        )
    if len(spacing) != 3:
        raise ValueError(f"spacing must have 3 values, got {tuple(spacing)}")
    if noise.ndim != 5:
        raise ValueError(f"noise must be (B, C, x, y, z), got shape {tuple(noise.shape)}")
    device = noise.device
    denoiser = make_denoiser(
        unet,
        context=condition_context(condition, device=device),
        uncond_context=condition_context(unconditional_vector(), device=device),
        spacing=spacing_input(spacing, device=device),
        guidance_scale=float(guidance),
    )
    return sample(denoiser, OfficialLastStep(scheduler, steps), noise, num_steps=steps, progress=progress)
