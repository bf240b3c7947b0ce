"""Denoising diffusion probabilistic models (Ho et al. 2020) as used by MAISI v1 (``ddpm-ct``) and the mask model.

Numerics reproduce MONAI's ``DDPMScheduler`` (beta tables, ``add_noise``, ``step`` and its noise draw) when the
sampler walks every training time (``num_steps == num_train_timesteps``, as the official pipeline does). With fewer
steps this step uses the posterior between the two actual times ``t -> t_next``; MONAI's step always assumes
``t -> t - 1`` there.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Generators, Scheduler, append_dims, randn

SCHEDULES = ("linear_beta", "scaled_linear_beta", "cosine")
PREDICTIONS = ("epsilon", "v_prediction", "sample")
VARIANCE_TYPES = ("fixed_small", "fixed_large")


def beta_schedule(
    schedule: str, num_train_timesteps: int, *, beta_start: float, beta_end: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(betas, alphas, alphas_cumprod)``, float32 ``(T,)`` each.

    ``linear_beta``: betas linear in [beta_start, beta_end]; ``scaled_linear_beta``: sqrt(betas) linear (the
    latent-diffusion schedule); ``cosine``: Nichol & Dhariwal 2021 eq. 17 with ``s = 0.008`` (ignores beta_start/end).
    """
    big_t = num_train_timesteps
    if schedule == "linear_beta":
        betas = torch.linspace(beta_start, beta_end, big_t, dtype=torch.float32)
    elif schedule == "scaled_linear_beta":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, big_t, dtype=torch.float32) ** 2
    elif schedule == "cosine":
        s = 8e-3
        x = torch.linspace(0, big_t, big_t + 1)
        f = torch.cos(((x / big_t) + s) / (1 + s) * torch.pi * 0.5) ** 2
        f /= f[0].item()
        betas = torch.clip(1.0 - (f[1:] / f[:-1]), 0.0, 0.999)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    alphas = 1.0 - betas
    return betas, alphas, torch.cumprod(alphas, dim=0)


class DDPM(Scheduler):
    """DDPM scheduler with integer times ``t`` in ``{0, ..., T-1}`` and terminal time ``-1`` (clean data).

    Forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (Ho et al. eq. 4). Targets: ``epsilon`` -> noise,
    ``sample`` -> x0, ``v_prediction`` -> ``sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022).

    Args:
        num_train_timesteps: ``T``.
        beta_start: first beta (linear schedules).
        beta_end: last beta (linear schedules).
        schedule: ``"scaled_linear_beta"`` (MAISI), ``"linear_beta"`` or ``"cosine"``.
        clip_sample: clip the predicted x0 to [-1, 1] in :meth:`step`.
        prediction: what the network predicts: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        variance_type: reverse-step variance, ``"fixed_small"`` (posterior variance) or ``"fixed_large"`` (beta).
    """

    kind = "ddpm"

    def __init__(
        self,
        *,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0015,
        beta_end: float = 0.0195,
        schedule: str = "scaled_linear_beta",
        clip_sample: bool = False,
        prediction: str = "epsilon",
        variance_type: str = "fixed_small",
    ) -> None:
        if int(num_train_timesteps) != num_train_timesteps or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {num_train_timesteps!r}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        if not 0 < beta_start <= beta_end < 1:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
            )
        self.num_train_timesteps = int(num_train_timesteps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.schedule = schedule
        self.clip_sample = bool(clip_sample)
        self.prediction = prediction
        self.variance_type = variance_type
        self.betas, self.alphas, self.alphas_cumprod = beta_schedule(
            schedule, self.num_train_timesteps, beta_start=self.beta_start, beta_end=self.beta_end
        )

    def config(self) -> dict[str, Any]:
        return {
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
            "schedule": self.schedule,
            "clip_sample": self.clip_sample,
            "prediction": self.prediction,
            "variance_type": self.variance_type,
        }

    def timesteps(
        self, num_steps: int, *, spatial_numel: int | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """``num_steps + 1`` int64 times: ``round(linspace(T - 1, 0, num_steps))`` then the terminal ``-1``.
        ``spatial_numel`` is ignored."""
        n, big_t = int(num_steps), self.num_train_timesteps
        if n != num_steps or not 1 <= n <= big_t:
            raise ValueError(f"num_steps must be an integer in [1, {big_t}], got {num_steps!r}")
        ts = torch.linspace(big_t - 1, 0, n).round().long()
        return torch.cat([ts, torch.tensor([-1])]).to(device)

    def training_pair(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_t, target)`` for integer times ``t`` ``(B,)``; the target follows ``prediction``."""
        abar = self.alphas_cumprod.to(device=x0.device, dtype=x0.dtype)[t.to(x0.device).long()]
        signal = append_dims(abar**0.5, x0.ndim)
        sigma = append_dims((1 - abar) ** 0.5, x0.ndim)
        x_t = signal * x0 + sigma * noise
        if self.prediction == "epsilon":
            return x_t, noise
        if self.prediction == "sample":
            return x_t, x0
        return x_t, signal * noise - sigma * x0

    def sample_times(
        self,
        batch: int,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        spatial_numel: int | None = None,
    ) -> torch.Tensor:
        """``(batch,)`` int64 times uniform in ``{0, ..., T-1}``; ``spatial_numel`` is ignored."""
        if generator is None:
            raise ValueError("sample_times: generator is required (results must depend only on the seed)")
        t = torch.randint(0, self.num_train_timesteps, (batch,), generator=generator, device=generator.device)
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
        """Ancestral step: sample ``q(x_{t_next} | x_t, x0_pred)`` (Ho et al. eqs. 6, 7, 15).

        ``generator`` is required when ``t > 0`` (the step adds noise); one generator draws the whole batch as
        MONAI does, a sequence draws sample ``i`` from generator ``i``.
        """
        t, s = int(t), int(t_next)
        if not 0 <= t < self.num_train_timesteps or not -1 <= s < t:
            raise ValueError(
                f"step: need 0 <= t < {self.num_train_timesteps} and -1 <= t_next < t, got {t}, {s}"
            )
        abar_t = self.alphas_cumprod[t]
        abar_s = self.alphas_cumprod[s] if s >= 0 else torch.tensor(1.0)
        if s == t - 1:
            alpha, beta = self.alphas[t], self.betas[t]
        else:  # several training steps at once: alpha_{t|s} = abar_t / abar_s
            alpha = abar_t / abar_s
            beta = 1 - alpha
        one_minus_abar_t, one_minus_abar_s = 1 - abar_t, 1 - abar_s

        # x0 from the network output (eq. 15 for epsilon)
        if self.prediction == "epsilon":
            x0 = (x - one_minus_abar_t**0.5 * model_output) / abar_t**0.5
        elif self.prediction == "sample":
            x0 = model_output
        else:
            x0 = abar_t**0.5 * x - one_minus_abar_t**0.5 * model_output
        if self.clip_sample:
            x0 = torch.clamp(x0, -1.0, 1.0)

        # posterior mean, eq. 7
        x0_coef = (abar_s**0.5 * beta) / one_minus_abar_t
        x_coef = alpha**0.5 * one_minus_abar_s / one_minus_abar_t
        mean = x0_coef * x0 + x_coef * x
        if t == 0:
            return mean

        if generator is None:
            raise ValueError(
                "DDPM.step: generator is required for t > 0 (results must depend only on the seed)"
            )
        noise = randn(
            model_output.shape, generator=generator, device=model_output.device, dtype=model_output.dtype
        )
        if self.variance_type == "fixed_small":
            variance = torch.clamp(one_minus_abar_s / one_minus_abar_t * beta, min=1e-20)
        else:
            variance = beta
        return mean + variance**0.5 * noise
