"""maisi's own checkpoint format: one folder per component, and strict state-dict loading.

A component folder holds ``config.json`` (component name, its config, extras such as the training step) and
``model.safetensors``; the network is rebuilt from the folder alone. NVIDIA's official ``.pt`` files are read by
:mod:`maisi.networks.official`; folders of components (model sets) by :mod:`maisi.networks.model_set`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from maisi.config.loading import build_dataclass, to_dict
from maisi.config.schema import ModelConfig
from maisi.errors import CheckpointError
from maisi.io import default_permissions, read_json
from maisi.networks.builders import COMPONENTS, build, component_config

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


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
        default_permissions(tmp)
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
    meta = read_json(path, error=CheckpointError, what="component config", expect=dict)
    if meta.get("component") not in COMPONENTS:
        raise CheckpointError(
            f"{path}: 'component' must be one of {list(COMPONENTS)}, got {meta.get('component')!r}"
        )
    return meta


def network_config(directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> Any:
    """The network config a component folder declares (its ``config.json``; no weights are read)."""
    d = Path(directory)
    meta = read_component_config(d) if meta is None else meta
    cfg_cls = type(component_config(meta["component"], ModelConfig()))
    return build_dataclass(cfg_cls, meta.get("config", {}), f"{d / CONFIG_NAME}: config")


def load_component(
    directory: str | os.PathLike, *, device: str | torch.device = "cpu", fast: bool = True
) -> Component:
    """Rebuild a network from a component folder alone (config + safetensors), loaded strictly, in fp32."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(directory)
    meta = read_component_config(d)
    name, cfg = meta["component"], network_config(d, meta)
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
