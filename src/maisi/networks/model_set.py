"""Model sets: the networks of one MAISI model (VAE, UNet, ControlNet, mask models) loaded from a folder in
maisi's layout (component folders, :mod:`maisi.networks.checkpoint`) or NVIDIA's (``.pt`` files,
:mod:`maisi.networks.official`), with one :class:`~maisi.config.schema.ModelConfig` that holds every component's
config and the latent scale factors (``vae.scale_factor``, ``mask_vae.scale_factor``: their one home).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from maisi.config.loading import build_dataclass, to_dict
from maisi.config.presets import preset
from maisi.config.schema import ModelConfig
from maisi.errors import CheckpointError
from maisi.io import read_json
from maisi.networks.builders import COMPONENTS
from maisi.networks.checkpoint import (
    CONFIG_NAME,
    Component,
    load_component,
    network_config,
    save_component,
)
from maisi.networks.official import load_official_components, official_dir, official_variant


@dataclass
class ModelSet:
    """The networks of one MAISI model set; ``config`` holds every component's config (scale factors included)."""

    config: ModelConfig
    components: dict[str, Component]
    layout: str  # "maisi" or "official"
    root: Path

    def __getitem__(self, name: str) -> nn.Module:
        if name not in self.components:
            raise CheckpointError(
                f"{self.root}: model set has no {name!r} component (has {sorted(self.components)})"
            )
        return self.components[name].model

    def __contains__(self, name: str) -> bool:
        return name in self.components


def detect_layout(directory: str | os.PathLike) -> str:
    """``'maisi'`` (component folders), ``'official'`` (NVIDIA ``.pt`` files) — or a CheckpointError."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"{d}: weights folder not found")
    if any((d / c / CONFIG_NAME).is_file() for c in COMPONENTS):
        return "maisi"
    if official_dir(d) is not None:
        return "official"
    raise CheckpointError(
        f"{d}: no weights found (expected component folders with {CONFIG_NAME}, or official files such as "
        f"models/autoencoder_v1.pt)"
    )


def _load_maisi_components(
    d: Path, cfg: ModelConfig, *, wanted: list[str] | None, device: str | torch.device, fast: bool
) -> tuple[ModelConfig, dict[str, Component]]:
    loaded: dict[str, Component] = {}
    for name in _present(d, wanted):
        loaded[name] = load_component(d / name, device=device, fast=fast)
        cfg = dataclasses.replace(cfg, **{name: loaded[name].config})
    return _with_model_facts(d, cfg, loaded), loaded


def _present(d: Path, wanted: list[str] | None) -> list[str]:
    """The components to load: every one with a folder, or the wanted ones."""
    if wanted is None:
        return [n for n in COMPONENTS if (d / n / CONFIG_NAME).is_file()]
    return [n for n in COMPONENTS if n in wanted]


def _with_model_facts(d: Path, cfg: ModelConfig, own: Iterable[str]) -> ModelConfig:
    """Model-level facts (schedulers, scale factors, mask latent shape) saved by :func:`save_model_set`; the
    configs of the components in ``own`` come from their own folders, the rest (a VAE's scale factor when only its
    UNet is loaded) from here."""
    top = d / CONFIG_NAME
    if not top.is_file():
        return cfg
    meta = read_json(top, error=CheckpointError, what="model-set config")
    own = set(own)
    model_meta = {k: v for k, v in meta.get("model", {}).items() if k not in own}
    return build_dataclass(ModelConfig, model_meta, f"{top}: model", base=cfg)


def read_model_config(
    directory: str | os.PathLike,
    *,
    components: Iterable[str] | None = None,
    base: ModelConfig | None = None,
) -> ModelConfig:
    """The :class:`ModelConfig` :func:`load_model_set` would build, from the config files alone (no weights read,
    no network built): what plans a run before its networks are loaded."""
    d = Path(directory)
    if detect_layout(d) != "maisi":
        return base or preset(official_variant(d)).model
    cfg = base or ModelConfig()
    names = _present(d, None if components is None else list(components))
    missing = [n for n in names if not (d / n / CONFIG_NAME).is_file()]
    if missing:
        raise CheckpointError(f"{d}: missing components {missing}")
    for name in names:
        cfg = dataclasses.replace(cfg, **{name: network_config(d / name)})
    return _with_model_facts(d, cfg, names)


def load_model_set(
    directory: str | os.PathLike,
    *,
    components: Iterable[str] | None = None,
    base: ModelConfig | None = None,
    device: str | torch.device = "cpu",
    fast: bool = True,
) -> ModelSet:
    """Load every component found in ``directory`` (ours or the official layout), strictly.

    Args:
        components: restrict to these names (each must be present).
        base: the network config for official files (default: the official preset of the variant found).
        fast: fused VAE numerics (default) or MONAI's own code (``False``; see :func:`maisi.networks.build_vae`).
    """
    d = Path(directory)
    layout = detect_layout(d)
    wanted = None if components is None else list(components)
    if layout == "maisi":
        cfg, loaded = _load_maisi_components(
            d, base or ModelConfig(), wanted=wanted, device=device, fast=fast
        )
    else:
        cfg = base or preset(official_variant(d)).model
        cfg, loaded = load_official_components(d, cfg, wanted=wanted, device=device, fast=fast)
    if wanted is not None:
        missing = [n for n in wanted if n not in loaded]
        if missing:
            raise CheckpointError(f"{d}: missing components {missing}")
    return ModelSet(config=cfg, components=loaded, layout=layout, root=d)


def save_model_set(
    directory: str | os.PathLike,
    model_set: ModelSet,
    *,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a model set in maisi's format: one component folder each plus the model-level ``config.json``."""
    from maisi.io import write_json

    d = Path(directory)
    for name, comp in model_set.components.items():
        save_component(
            d / name,
            comp.model,
            getattr(model_set.config, name),
            component=name,
            extra=comp.extra,
            dtype=dtype,
            overwrite=overwrite,
        )
    write_json(
        d / CONFIG_NAME,
        {"format": "maisi-model-set", "model": to_dict(model_set.config)},
        overwrite=overwrite,
    )
    return d
