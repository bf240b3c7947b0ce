"""NVIDIA's official MAISI checkpoint files: the layout, the ``.pt`` reader (never unpickles code), and the
translation of what those files hold besides weights (the latent scale factors) into the typed config, once.

The official layout is a folder ``models/`` holding the files of one or more variants (the table in
:mod:`maisi.networks.variants`): ``autoencoder_v1.pt``, ``diff_unet_3d_{rflow,ddpm}-ct.pt``,
``controlnet_3d_{rflow,ddpm}-ct.pt``, ``mask_generation_autoencoder.pt`` and ``mask_generation_diffusion_unet.pt`` for
CT; ``autoencoder_v2.pt`` and ``diff_unet_3d_rflow-mr.pt`` for body MR; ``autoencoder_v1.pt`` and
``diff_unet_3d_rflow-mr-brain_v1.pt`` for brain MR.
Each latent scale factor lives in the diffusion checkpoint that consumes the latents (``scale_factor``); at load it
is written into the VAE's config (``vae.scale_factor`` / ``mask_vae.scale_factor``), its one home in maisi.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maisi.config.schema import ModelConfig
from maisi.errors import CheckpointError
from maisi.io import numpy_safe_globals, read_torch_file
from maisi.networks.builders import build, component_config
from maisi.networks.checkpoint import Component, load_state_strict
from maisi.networks.variants import VARIANTS

#: variant -> component -> file name in ``models/``, for the networks maisi's model sets load (from the variant table)
OFFICIAL_FILES: dict[str, dict[str, str]] = {
    name: {component: f.name for component, f in spec.models.items()} for name, spec in VARIANTS.items()
}
#: keys under which official files nest their state dict (some autoencoder files use ``unet_state_dict`` too)
NESTED_STATE_KEYS = ("unet_state_dict", "controlnet_state_dict", "state_dict", "model_state_dict")
#: the VAE whose latents each diffusion network consumes (its checkpoint holds that VAE's scale factor)
SCALE_FACTOR_OWNERS = (("vae", "unet"), ("mask_vae", "mask_unet"), ("mask_vae", "mask_unet_v2"))


def split_state(obj: Any, *, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate an official checkpoint object into (state dict, extras such as ``scale_factor``)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for key in NESTED_STATE_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            extras = {k: _plain(v) for k, v in obj.items() if k != key}
            return dict(obj[key]), extras
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
    raise CheckpointError(
        f"{source}: no state dict found (non-tensor keys {bad}; expected one of {NESTED_STATE_KEYS})"
    )


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def official_dir(directory: str | os.PathLike) -> Path | None:
    """The folder holding official ``.pt`` files (``directory`` itself or its ``models/``), or None."""
    d = Path(directory)
    for cand in (d, d / "models"):
        if cand.is_dir() and any(
            (cand / f).is_file() for files in OFFICIAL_FILES.values() for f in files.values()
        ):
            return cand
    return None


def _evidence() -> dict[str, set[str]]:
    """Per variant, the model files no other variant has (its diffusion UNet, ControlNet, the MR VAE)."""
    names = {v: set(files.values()) for v, files in OFFICIAL_FILES.items()}
    return {v: own - set().union(*(o for w, o in names.items() if w != v)) for v, own in names.items()}


def official_variants(directory: str | os.PathLike) -> list[str]:
    """Every variant an official folder holds a file of that is that variant's alone, in table order."""
    d = official_dir(directory) or Path(directory)
    return [v for v, own in _evidence().items() if any((d / f).is_file() for f in sorted(own))]


def official_variant(directory: str | os.PathLike) -> str:
    """The variant of an official folder (``'rflow-ct'``, ``'ddpm-ct'``, ``'rflow-mr'``, ``'rflow-mr-brain'``) from
    the files only it uses; the first in table order when several are present; ``'rflow-ct'`` when none is."""
    found = official_variants(directory)
    return found[0] if found else "rflow-ct"


def official_extras(path: Path) -> dict[str, Any]:
    """The non-tensor entries (``scale_factor``, ...) of an official file, memory-mapped: no weights are read."""
    with torch.serialization.safe_globals(numpy_safe_globals()):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, pickle.UnpicklingError, OSError) as e:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint ({str(e).splitlines()[0][:160]})"
            ) from None
    if not isinstance(obj, Mapping):
        return {}
    return {k: _plain(v) for k, v in obj.items() if not isinstance(v, Mapping)}


def load_official_component(
    path: str | os.PathLike,
    name: str,
    model_cfg: ModelConfig,
    *,
    device: str | torch.device = "cpu",
    fast: bool = True,
) -> Component:
    """Load one official ``.pt`` file strictly into the network ``name`` built from ``model_cfg``."""
    obj = read_torch_file(path)
    state, extras = split_state(obj, source=str(path))
    model = build(name, model_cfg, fast=fast)
    load_state_strict(model, state, source=str(path))
    model.to(device).eval()
    return Component(
        name=name, model=model, config=component_config(name, model_cfg), path=Path(path), extra=extras
    )


def load_official_components(
    directory: str | os.PathLike,
    cfg: ModelConfig,
    *,
    wanted: Iterable[str] | None,
    device: str | torch.device = "cpu",
    fast: bool = True,
) -> tuple[ModelConfig, dict[str, Component]]:
    """The components of an official folder (all present, or ``wanted``), and ``cfg`` with the scale factors the
    diffusion files hold written into the VAE configs (read without loading weights when the diffusion network
    itself is not wanted)."""
    odir = official_dir(directory)
    if odir is None:
        raise CheckpointError(f"{directory}: no official MAISI .pt files found")
    files = OFFICIAL_FILES[official_variant(directory)]
    wanted = None if wanted is None else set(wanted)
    loaded: dict[str, Component] = {}
    for name, fname in files.items():
        path = odir / fname
        if (wanted is None and path.is_file()) or (wanted is not None and name in wanted):
            loaded[name] = load_official_component(path, name, cfg, device=device, fast=fast)
    for vae_name, unet_name in SCALE_FACTOR_OWNERS:
        if unet_name in loaded:
            extra = loaded[unet_name].extra
        elif unet_name in files and (odir / files[unet_name]).is_file():  # MR variants have no mask networks
            extra = official_extras(odir / files[unet_name])
        else:
            continue
        if "scale_factor" in extra:
            vae_cfg = dataclasses.replace(getattr(cfg, vae_name), scale_factor=float(extra["scale_factor"]))
            cfg = dataclasses.replace(cfg, **{vae_name: vae_cfg})
            if vae_name in loaded:
                loaded[vae_name].config = vae_cfg
    return cfg, loaded
