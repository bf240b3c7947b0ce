"""The interface between the generic training loop and one model's training recipe, and helpers tasks share."""

from __future__ import annotations

import abc
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from maisi.config.schema import Config, ModelConfig
from maisi.errors import ConfigError
from maisi.training.datasets import Case, CaseStore, find_cases, split_cases


@dataclass(frozen=True)
class Group:
    """One optimiser: ``name`` (e.g. ``"generator"``) updating network ``module`` from step ``start_step`` on."""

    name: str
    module: str
    start_step: int = 0


@dataclass
class SavedComponent:
    """A network to write into the final model set, with its config and extras."""

    model: nn.Module
    config: Any
    extra: dict[str, Any] = field(default_factory=dict)


class Task(abc.ABC):
    """One model's training recipe. The loop owns optimisation; a task owns data, networks, losses and metrics.

    After :meth:`setup`: ``models`` holds every network (on ``device``; trained ones in train mode, frozen ones in
    eval mode without gradients), ``train_cases`` / ``val_cases`` the data. Randomness comes only from the
    generators the loop passes in.
    """

    #: the CLI / config name (``train.task``)
    name: ClassVar[str]
    #: ``"volumes"`` or ``"latents"``: what ``--data`` must hold
    data_kind: ClassVar[str] = "volumes"
    #: the network this task trains, averages (EMA) and ships
    primary: ClassVar[str]

    def __init__(self, cfg: Config, *, device: torch.device) -> None:
        self.cfg = cfg
        self.device = device
        self.store = CaseStore()
        self.models: dict[str, nn.Module] = {}
        self.model_cfg: ModelConfig = cfg.model
        self.train_cases: list[Case] = []
        self.val_cases: list[Case] = []

    # ---------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Find and split the data, then build the networks (:meth:`build`)."""
        cases = find_cases(self.cfg.train.data, kind=self.data_kind)
        self.train_cases, self.val_cases = split_cases(cases)
        self.build()

    @abc.abstractmethod
    def build(self) -> None:
        """Build ``self.models`` (global RNG seeded by the loop, so initial weights depend only on the seed)."""

    def groups(self) -> list[Group]:
        """The optimisers: by default one, for the primary network."""
        return [Group(name=self.primary, module=self.primary)]

    def training_module(self, name: str) -> nn.Module:
        """The module the loop wraps in DDP and passes as ``nets[name]`` to :meth:`loss` (default: the network
        itself; a wrapper must share its parameters)."""
        return self.models[name]

    def bucket_key(self, case: Case) -> Hashable:
        """Cases with equal keys may share a batch (default: all)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Task facts to restore on resume (plain values)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`state_dict` saved (default: nothing)."""

    # ---------------------------------------------------------------- one step

    @abc.abstractmethod
    def make_batch(
        self, cases: Sequence[Case], generators: Sequence[torch.Generator]
    ) -> dict[str, torch.Tensor]:
        """CPU tensors for ``cases``; every random draw of case ``i`` comes from ``generators[i]``."""

    @abc.abstractmethod
    def loss(
        self,
        group: str,
        nets: Mapping[str, nn.Module],
        batch: dict[str, torch.Tensor],
        cache: dict,
        step: int,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The scalar loss of optimiser ``group`` on ``batch`` and its named parts (detached, for logging).

        Args:
            nets: networks as trained (trained ones possibly DDP-wrapped); ``self.models`` holds them unwrapped.
            cache: shared by the groups of one micro-batch (e.g. the VAE's reconstruction for the discriminator).
            step: the optimiser step (0-based).
        """

    # ---------------------------------------------------------------- evaluation

    @abc.abstractmethod
    def validate_case(self, nets: Mapping[str, nn.Module], case: Case, index: int) -> dict[str, float]:
        """Deterministic metrics of one validation case (``val_loss`` required) under ``torch.no_grad``.

        Args:
            nets: evaluation networks (the EMA weights for the primary one).
            index: the case's position in ``val_cases``, to seed its fixed draws.
        """

    def previews(
        self, nets: Mapping[str, nn.Module], batch: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """(X, Y, Z) volumes to show in TensorBoard (inputs, reconstructions, samples)."""
        return {}

    @abc.abstractmethod
    def saved_components(self, nets: Mapping[str, nn.Module]) -> dict[str, SavedComponent]:
        """The networks of the final model set (``nets`` has the EMA weights for the primary network)."""


# ----------------------------------------------------------------------------------------------------------------
# helpers shared by tasks


def random_patch(volume: torch.Tensor, size: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """A random ``size`` crop of a ``(C, X, Y, Z)`` tensor, zero-padded (at the far end) where it is smaller."""
    spatial = volume.shape[1:]
    pad = [max(int(s) - int(n), 0) for s, n in zip(size, spatial)]
    if any(pad):
        widths = [w for p in reversed(pad) for w in (0, p)]
        volume = torch.nn.functional.pad(volume, widths)
        spatial = volume.shape[1:]
    starts = [
        int(torch.randint(0, int(n) - int(s) + 1, (1,), generator=generator)) for s, n in zip(size, spatial)
    ]
    return volume[(slice(None), *(slice(a, a + int(s)) for a, s in zip(starts, size)))]


def center_patch(volume: torch.Tensor, size: Sequence[int] | None) -> torch.Tensor:
    """The central ``size`` crop of a ``(..., X, Y, Z)`` tensor (axes smaller than ``size`` kept whole); the
    tensor itself when ``size`` is None."""
    if size is None:
        return volume
    spatial = volume.shape[-3:]
    starts = [max((int(n) - int(s)) // 2, 0) for s, n in zip(size, spatial)]
    index = tuple(slice(a, a + min(int(s), int(n))) for a, s, n in zip(starts, size, spatial))
    return volume[(..., *index)]


class SampledVAE(nn.Module):
    """``forward(x, eps) -> (reconstruction, mu, sigma)`` with ``z = mu + sigma * eps``: MONAI's VAE forward with the
    reparameterisation noise supplied by the caller (MONAI draws it from the global RNG, which would make a batch
    depend on how it is split over ranks and on what else consumed random numbers)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, sigma = self.vae.encode(x)
        return self.vae.decode(mu + sigma * eps.to(sigma.dtype)), mu, sigma


def latent_noise(vae_cfg, patch: Sequence[int], generator: torch.Generator) -> torch.Tensor:
    """Standard normal reparameterisation noise ``(latent_channels, *patch / downsampling)`` from ``generator``."""
    d = vae_cfg.downsample
    shape = (vae_cfg.latent_channels, *(-(-int(s) // d) for s in patch))
    return torch.randn(shape, generator=generator)


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over latent voxels and channels, averaged over the batch (fp32)."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.square() + sigma.square() - torch.log(sigma.square().clamp_min(1e-12)) - 1.0)
    return kl.flatten(1).sum(1).mean()


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``mean + exp(logvar / 2) * eps`` with ``eps`` from ``generator``."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def estimate_scale_factor(
    posteriors: Sequence[tuple[torch.Tensor, torch.Tensor]], *, generator: torch.Generator
) -> float:
    """``1 / std`` of posterior samples pooled over every voxel and channel of up to all given latents.

    The official scripts take the std of one batch; pooling many latents makes the factor a property of the data
    set rather than of the first batch. Accumulated in float64.
    """
    if not posteriors:
        raise ValueError("estimate_scale_factor: no latents")
    total = total_sq = 0.0
    count = 0
    for mean, logvar in posteriors:
        z = sample_posterior(mean, logvar, generator).double()
        total += float(z.sum())
        total_sq += float(z.square().sum())
        count += z.numel()
    var = total_sq / count - (total / count) ** 2
    if not var > 0 or not math.isfinite(var):
        raise ConfigError(f"cannot estimate the latent scale factor: latent variance is {var}")
    return 1.0 / math.sqrt(var)


def load_init_model_set(
    cfg: Config, *, components: Sequence[str] | None = None, required: Sequence[str] = ()
):
    """The model set named by ``train.init_from`` (ours or the official layout), or None when unset.

    Raises:
        ConfigError: when ``init_from`` is unset but ``required`` is not empty, or a required component is absent.
    """
    from maisi.networks.model_set import detect_layout, load_model_set

    path = cfg.train.init_from
    if not path:
        if required:
            raise ConfigError(
                f"train.init_from: task {cfg.train.task!r} needs a model set holding {list(required)} "
                "(e.g. the model/ folder of an earlier run)"
            )
        return None
    layout = detect_layout(path)
    ms = load_model_set(path, base=cfg.model if layout == "official" else None)
    missing = [c for c in required if c not in ms]
    if missing:
        raise ConfigError(f"train.init_from: {path} has no {missing} component (has {sorted(ms.components)})")
    if components is not None:
        ms.components = {k: v for k, v in ms.components.items() if k in components}
    return ms


def load_matching(target: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Copy the entries of ``state`` whose names and shapes match ``target``'s (ControlNet from UNet); returns
    how many were copied."""
    own = target.state_dict()
    matched = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    own.update(matched)
    target.load_state_dict(own)
    return len(matched)


def with_scale_factor(model_cfg: ModelConfig, component: str, scale_factor: float) -> ModelConfig:
    """A copy of ``model_cfg`` whose ``component`` (``vae`` or ``mask_vae``) has ``scale_factor``."""
    return replace(
        model_cfg, **{component: replace(getattr(model_cfg, component), scale_factor=float(scale_factor))}
    )


def as_tensor_label(label: np.ndarray) -> torch.Tensor:
    """(X, Y, Z) ids -> (1, X, Y, Z) int64 tensor."""
    return torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))[None]
