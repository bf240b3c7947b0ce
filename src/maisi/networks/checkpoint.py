"""Checkpoint IO: NVIDIA's official ``.pt`` files (read strictly, never unpickled) and maisi's own folders.

Our format is one folder per component holding ``config.json`` (component name, its config, extras such as the
latent scale factor) and ``model.safetensors``; the network is rebuilt from the folder alone. A model set is a folder
of such component folders (``vae/``, ``unet/``, ``controlnet/``, ``mask_vae/``, ``mask_unet/``).

The official layout is a folder ``models/`` holding ``autoencoder_v1.pt``, ``diff_unet_3d_{rflow,ddpm}-ct.pt``,
``controlnet_3d_{rflow,ddpm}-ct.pt``, ``mask_generation_autoencoder.pt`` and ``mask_generation_diffusion_unet.pt``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maisi.config.loading import build_dataclass, to_dict
from maisi.config.presets import preset
from maisi.config.schema import ModelConfig
from maisi.errors import CheckpointError
from maisi.networks.builders import COMPONENTS, build, component_config

OFFICIAL_FILES: dict[str, dict[str, str]] = {
    "rflow-ct": {
        "vae": "autoencoder_v1.pt",
        "unet": "diff_unet_3d_rflow-ct.pt",
        "controlnet": "controlnet_3d_rflow-ct.pt",
        "mask_vae": "mask_generation_autoencoder.pt",
        "mask_unet": "mask_generation_diffusion_unet.pt",
    },
    "ddpm-ct": {
        "vae": "autoencoder_v1.pt",
        "unet": "diff_unet_3d_ddpm-ct.pt",
        "controlnet": "controlnet_3d_ddpm-ct.pt",
        "mask_vae": "mask_generation_autoencoder.pt",
        "mask_unet": "mask_generation_diffusion_unet.pt",
    },
}
#: keys under which official files nest their state dict (some autoencoder files use ``unet_state_dict`` too)
_NESTED_STATE_KEYS = ("unet_state_dict", "controlnet_state_dict", "state_dict", "model_state_dict")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _numpy_safe_globals() -> list[Any]:
    """The numpy types official files may hold as scalars (e.g. ``scale_factor``): allow-listed, nothing else."""
    allowed: list[Any] = [np.dtype]
    try:
        allowed.append(np._core.multiarray.scalar)
    except AttributeError:  # numpy < 2
        allowed.append(np.core.multiarray.scalar)
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "float16", "int64", "int32")]
    return allowed


def read_torch_file(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)`` with numpy scalars allow-listed; never runs pickled code.

    Raises:
        CheckpointError: missing file, corrupt file, or a file that needs arbitrary unpickling.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint file not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if "Unsupported global" in ln or "GLOBAL" in ln]
        if not lines:  # not a pickle that asks for globals: the bytes are simply not a checkpoint
            raise CheckpointError(
                f"{p}: not a readable PyTorch checkpoint (corrupt or not a .pt file)"
            ) from None
        first = lines[0]
        raise CheckpointError(
            f"{p}: refused to load: the file holds pickled Python objects that could run code ({first[:160]})"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{p}: not a readable PyTorch checkpoint ({str(e).splitlines()[0][:160]})"
        ) from None


def split_state(obj: Any, *, source: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Separate an official checkpoint object into (state dict, extras such as ``scale_factor``)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a dict of tensors, got {type(obj).__name__}")
    for key in _NESTED_STATE_KEYS:
        if key in obj and isinstance(obj[key], Mapping):
            extras = {k: _plain(v) for k, v in obj.items() if k != key}
            return dict(obj[key]), extras
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), {}
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)][:5]
    raise CheckpointError(
        f"{source}: no state dict found (non-tensor keys {bad}; expected one of {_NESTED_STATE_KEYS})"
    )


def _plain(v: Any) -> Any:
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        return v.item()
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_state_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], *, source: str, allowed_missing: Iterable[str] = ()
) -> None:
    """Load ``state`` into ``model`` requiring the exact key set and shapes.

    Args:
        allowed_missing: the only keys that may be absent from ``state`` (an explicit list, never a pattern).

    Raises:
        CheckpointError: listing missing keys, unexpected keys and shape mismatches.
    """
    own = model.state_dict()
    allowed = set(allowed_missing)
    missing = sorted(set(own) - set(state) - allowed)
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs network {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys {_short(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys {_short(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches {_short(shapes)}")
        raise CheckpointError(f"{source}: does not match the network: " + "; ".join(parts))
    model.load_state_dict(state, strict=not allowed)


def _short(items: list[str], n: int = 5) -> str:
    return "[" + ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "") + "]"


# ----------------------------------------------------------------------------------------------------------------
# maisi's own format


def save_component(
    directory: str | os.PathLike,
    model: nn.Module,
    cfg: Any,
    *,
    component: str,
    extra: Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory``, atomically (temp folder + rename).

    Args:
        cfg: the component's config dataclass (e.g. :class:`~maisi.config.schema.VAEConfig`).
        extra: JSON-serialisable facts saved beside the config (training step, data, ...).
        dtype: store floating tensors in this dtype (e.g. ``torch.float16`` for shipped weights).
    """
    from safetensors.torch import save_file

    target = Path(directory)
    if target.exists() and not overwrite:
        raise CheckpointError(f"{target}: already exists; refusing to overwrite")
    state = {}
    for k, v in model.state_dict().items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        state[k] = v.clone().contiguous()
    meta = {"format": "maisi", "component": component, "config": to_dict(cfg), "extra": dict(extra or {})}
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_NAME), metadata={"component": component})
        (tmp / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        _replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return target


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst``; an existing ``dst`` is swapped out first and removed only after."""
    if not dst.exists():
        os.replace(src, dst)
        return
    old = dst.with_name(f".{dst.name}.old")
    if old.exists():
        shutil.rmtree(old)
    os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old)


@dataclass
class Component:
    """A loaded network with its config and provenance."""

    name: str
    model: nn.Module
    config: Any
    path: Path
    extra: dict[str, Any] = field(default_factory=dict)


def read_component_config(directory: str | os.PathLike) -> dict[str, Any]:
    """Read and check a component folder's ``config.json``."""
    d = Path(directory)
    path = d / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{d}: not a maisi component folder (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e.msg})") from None
    if meta.get("component") not in COMPONENTS:
        raise CheckpointError(
            f"{path}: 'component' must be one of {list(COMPONENTS)}, got {meta.get('component')!r}"
        )
    return meta


def load_component(
    directory: str | os.PathLike, *, device: str | torch.device = "cpu", fast: bool = True
) -> Component:
    """Rebuild a network from a component folder alone (config + safetensors), loaded strictly, in fp32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    meta = read_component_config(d)
    name = meta["component"]
    cfg_cls = type(component_config(name, ModelConfig()))
    cfg = build_dataclass(cfg_cls, meta.get("config", {}), f"{d / CONFIG_NAME}: config")
    model_cfg = dataclasses.replace(ModelConfig(), **{name: cfg})
    model = build(name, model_cfg, fast=fast)
    weights = d / WEIGHTS_NAME
    if not weights.is_file():
        raise CheckpointError(f"{d}: missing {WEIGHTS_NAME}")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({e})") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(model, state, source=str(weights))
    model.to(device).eval()
    return Component(name=name, model=model, config=cfg, path=d, extra=dict(meta.get("extra", {})))


# ----------------------------------------------------------------------------------------------------------------
# model sets (a folder of components, ours or official)


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


def official_dir(directory: str | os.PathLike) -> Path | None:
    """The folder holding official ``.pt`` files (``directory`` itself or its ``models/``), or None."""
    d = Path(directory)
    for cand in (d, d / "models"):
        if cand.is_dir() and any(
            (cand / f).is_file() for files in OFFICIAL_FILES.values() for f in files.values()
        ):
            return cand
    return None


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


def official_variant(directory: str | os.PathLike) -> str:
    """``'rflow-ct'`` or ``'ddpm-ct'``, from which diffusion file an official folder holds."""
    d = official_dir(directory) or Path(directory)
    for variant in ("rflow-ct", "ddpm-ct"):
        if (d / OFFICIAL_FILES[variant]["unet"]).is_file() or (
            d / OFFICIAL_FILES[variant]["controlnet"]
        ).is_file():
            return variant
    return "rflow-ct"


def _official_extras(path: Path) -> dict[str, Any]:
    """The non-tensor entries (``scale_factor``, ...) of an official file, memory-mapped: no weights are read."""
    with torch.serialization.safe_globals(_numpy_safe_globals()):
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
    loaded: dict[str, Component] = {}
    if layout == "maisi":
        cfg = base or ModelConfig()
        for name in COMPONENTS:
            sub = d / name
            if (wanted is None and (sub / CONFIG_NAME).is_file()) or (wanted is not None and name in wanted):
                loaded[name] = load_component(sub, device=device, fast=fast)
                cfg = dataclasses.replace(cfg, **{name: loaded[name].config})
        for vae_name, unet_name in (("vae", "unet"), ("mask_vae", "mask_unet")):
            extra = loaded[unet_name].extra if unet_name in loaded else {}
            if (
                vae_name not in loaded and "scale_factor" in extra
            ):  # the UNet records the scale it was trained at
                vae_cfg = dataclasses.replace(
                    getattr(cfg, vae_name), scale_factor=float(extra["scale_factor"])
                )
                cfg = dataclasses.replace(cfg, **{vae_name: vae_cfg})
        top = d / CONFIG_NAME
        if top.is_file():  # model-level facts (schedulers, mask latent shape) saved by save_model_set
            meta = json.loads(top.read_text(encoding="utf-8"))
            model_meta = {k: v for k, v in meta.get("model", {}).items() if k not in COMPONENTS}
            cfg = build_dataclass(ModelConfig, model_meta, f"{top}: model", base=cfg)
    else:
        odir = official_dir(d)
        variant = official_variant(d)
        cfg = base or preset(variant).model
        files = OFFICIAL_FILES[variant]
        for name, fname in files.items():
            path = odir / fname
            if (wanted is None and path.is_file()) or (wanted is not None and name in wanted):
                loaded[name] = load_official_component(path, name, cfg, device=device, fast=fast)
        # the official files keep each latent scale factor in the diffusion checkpoint that consumes the latents
        for vae_name, unet_name in (("vae", "unet"), ("mask_vae", "mask_unet")):
            if unet_name in loaded:
                extra = loaded[unet_name].extra
            elif (odir / files[unet_name]).is_file():
                extra = _official_extras(odir / files[unet_name])
            else:
                continue
            if "scale_factor" in extra:
                vae_cfg = dataclasses.replace(
                    getattr(cfg, vae_name), scale_factor=float(extra["scale_factor"])
                )
                cfg = dataclasses.replace(cfg, **{vae_name: vae_cfg})
                if vae_name in loaded:
                    loaded[vae_name].config = vae_cfg
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
