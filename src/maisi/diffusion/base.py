"""The interface every noise scheduler implements, and the seeded noise they share.

A scheduler owns the forward (noising) process and one reverse step. Samplers and training code call only the
methods of :class:`Scheduler`, so they never ask which scheduler they hold.

Time convention (both schedulers): ``t`` runs from ``num_train_timesteps`` (or ``num_train_timesteps - 1``) =
pure noise down to the terminal time = clean data. Inference time sequences are descending.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, ClassVar

import torch

#: one generator for the whole batch, or one per sample (sample ``i`` draws only from generator ``i``)
Generators = torch.Generator | Sequence[torch.Generator]


def append_dims(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so a per-sample ``(B,)`` tensor broadcasts against ``(B, C, ...)``."""
    if v.ndim > ndim:
        raise ValueError(f"append_dims: tensor has {v.ndim} dims, more than the target {ndim}")
    return v.reshape(*v.shape, *([1] * (ndim - v.ndim)))


def randn(
    shape: Sequence[int],
    *,
    generator: Generators,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise that depends only on the generator state(s).

    Args:
        shape: ``(B, ...)``.
        generator: one ``torch.Generator`` (draws the whole tensor at once, as ``torch.randn`` does), or a sequence
            of ``B`` generators (sample ``i`` drawn from generator ``i``), so a batch equals its samples run one by
            one. Noise is drawn on each generator's device and then moved to ``device``.
        device: where the result lives (default: the generator's device).
        dtype: result dtype; the draw itself happens in this dtype.

    Returns:
        Tensor of ``shape``.
    """
    if generator is None:
        raise ValueError("randn: generator is required (results must depend only on the seed)")
    if isinstance(generator, torch.Generator):
        out = torch.randn(tuple(shape), generator=generator, device=generator.device, dtype=dtype)
        return out.to(device) if device is not None else out
    generators = list(generator)
    if len(generators) != shape[0]:
        raise ValueError(f"randn: got {len(generators)} generators for a batch of {shape[0]}")
    draws = [torch.randn(tuple(shape[1:]), generator=g, device=g.device, dtype=dtype) for g in generators]
    target = device if device is not None else generators[0].device
    return torch.stack([d.to(target) for d in draws])


class Scheduler(abc.ABC):
    """Noise scheduler interface shared by :class:`~maisi.diffusion.rflow.RectifiedFlow` and
    :class:`~maisi.diffusion.ddpm.DDPM`.

    Subclasses are stateless after construction: no method mutates the scheduler.
    """

    #: registry name, also the ``kind`` of a saved scheduler config
    kind: ClassVar[str]
    num_train_timesteps: int

    @abc.abstractmethod
    def timesteps(
        self, num_steps: int, *, spatial_numel: int | None = None, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """Inference times, descending, with ``num_steps + 1`` entries: the ``num_steps`` times at which the network
        is evaluated followed by the terminal (clean-data) time. A sampler loops over ``zip(ts[:-1], ts[1:])``.

        Args:
            num_steps: number of network evaluations, ``1 <= num_steps <= num_train_timesteps``.
            spatial_numel: product of the latent's spatial sizes (``X * Y * Z``), for resolution-dependent
                schedules; ignored by schedulers without one.
            device: device of the result.
        """

    @abc.abstractmethod
    def training_pair(
        self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The noised input and the regression target at per-sample times ``t``.

        Args:
            x0: clean latents ``(B, C, *spatial)``.
            noise: standard normal noise, same shape.
            t: ``(B,)`` training times as returned by :meth:`sample_times`.

        Returns:
            ``(x_t, target)``, both ``(B, C, *spatial)``.
        """

    @abc.abstractmethod
    def sample_times(
        self,
        batch: int,
        *,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        spatial_numel: int | None = None,
    ) -> torch.Tensor:
        """Random training times ``(batch,)``, drawn on the generator's device and moved to ``device``."""

    @abc.abstractmethod
    def step(
        self,
        model_output: torch.Tensor,
        t: torch.Tensor,
        t_next: torch.Tensor,
        x: torch.Tensor,
        *,
        generator: Generators | None = None,
    ) -> torch.Tensor:
        """One reverse step from time ``t`` to ``t_next`` (consecutive entries of :meth:`timesteps`).

        Args:
            model_output: network output at ``(x, t)``, shape of ``x``.
            t: current time (0-d tensor or number).
            t_next: next, smaller time.
            x: current sample ``(B, C, *spatial)``.
            generator: needed by stochastic schedulers (see :func:`randn` for the per-sample form).

        Returns:
            The sample at ``t_next``, shape of ``x``.
        """

    def model_time(self, t: torch.Tensor | float) -> torch.Tensor:
        """What the network receives as its ``timesteps`` input for scheduler time ``t``: ``t`` itself as float32,
        as the official MAISI scripts do (``torch.Tensor((t,))``)."""
        return torch.as_tensor(t).to(torch.float32)

    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments: ``type(s)(**s.config())`` rebuilds an equal scheduler."""

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.config() == other.config()  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]
