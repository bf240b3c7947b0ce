"""Strict config loading: dicts and JSON overlays into the typed schema, official MAISI JSON files, saving.

An overlay holds only the keys it changes. Every unknown key is an error naming the key and the file.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from maisi.config.presets import preset as make_preset
from maisi.config.schema import Config
from maisi.errors import ConfigError

# ----------------------------------------------------------------------------------------------------------------
# typed conversion


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert a JSON value to the annotated type ``tp`` or raise a ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return build_dataclass(tp, value, where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected an object, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover - schema bug


def build_dataclass(cls: type, data: Mapping[str, Any], where: str, base: Any = None) -> Any:
    """Build dataclass ``cls`` from ``data`` on top of ``base`` (or the defaults), rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}: unknown key {key!r} (known: {', '.join(sorted(names))})")
    obj = copy.deepcopy(base) if base is not None else cls()
    for key, value in data.items():
        current = getattr(obj, key)
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, Mapping):
            setattr(obj, key, build_dataclass(hints[key], value, f"{where}.{key}", base=current))
        else:
            setattr(obj, key, _coerce(value, hints[key], f"{where}.{key}"))
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def apply_overlay(cfg: Config, overlay: Mapping[str, Any], *, source: str = "overlay") -> Config:
    """Return a copy of ``cfg`` with the keys of ``overlay`` changed (nested objects merge key by key)."""
    return build_dataclass(Config, overlay, source, base=cfg)


def parse_assignments(assignments: Iterable[str]) -> dict[str, Any]:
    """Turn ``["train.lr=1e-3", "generate.output_size=[64,64,64]"]`` into a nested overlay dict.

    Values are parsed as JSON when possible, otherwise kept as strings.
    """
    out: dict[str, Any] = {}
    for item in assignments:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{item!r}: {p!r} is both a value and a section")
        node[parts[-1]] = value
    return out


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object, with errors naming the file."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a JSON object at top level")
    return data


def load_config(
    *, preset: str | None = None, files: Iterable[str | Path] = (), overrides: Iterable[str] = ()
) -> Config:
    """Resolve a config: preset, then each file (ours or official MAISI JSON), then ``key=value`` overrides.

    A file with a top-level ``preset`` key starts from that preset when none is given explicitly.
    """
    files = list(files)
    overlays: list[tuple[str, dict[str, Any]]] = []
    for f in files:
        data = read_json(f)
        overlays.append((str(f), official_to_overlay(data, source=str(f)) if is_official(data) else data))
    name = preset
    if name is None:
        name = next((o["preset"] for _, o in overlays if isinstance(o.get("preset"), str)), "rflow-ct")
    cfg = make_preset(name)
    for src, overlay in overlays:
        overlay = {k: v for k, v in overlay.items() if k != "preset"}
        cfg = apply_overlay(cfg, overlay, source=src)
    cfg = apply_overlay(cfg, parse_assignments(overrides), source="command line")
    cfg.preset = name
    return cfg


def save_config(cfg: Config, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write the resolved config as JSON (atomically)."""
    from maisi.io import write_json

    return write_json(path, to_dict(cfg), overwrite=overwrite)


def config_from_dict(data: Mapping[str, Any], *, source: str = "config") -> Config:
    """Rebuild a full config saved by :func:`save_config` (strict)."""
    name = data.get("preset", "rflow-ct")
    return build_dataclass(Config, data, source, base=make_preset(name) if isinstance(name, str) else None)


# ----------------------------------------------------------------------------------------------------------------
# official MAISI JSON files

_NETWORK_KEYS = {
    "autoencoder_def": "vae",
    "diffusion_unet_def": "unet",
    "controlnet_def": "controlnet",
    "mask_generation_autoencoder_def": "mask_vae",
    "mask_generation_diffusion_def": "mask_unet",
}
_INFER_KEYS = {
    "num_output_samples": "num_samples",
    "body_region": "body_region",
    "anatomy_list": "anatomy",
    "num_inference_steps": "steps",
    "mask_generation_num_inference_steps": "mask_steps",
    "output_size": "output_size",
    "image_output_ext": "image_ext",
    "label_output_ext": "label_ext",
    "spacing": "spacing",
    "autoencoder_sliding_window_infer_size": "decode_window",
    "autoencoder_sliding_window_infer_overlap": "decode_overlap",
    "cfg_guidance_scale": "guidance",
    "random_seed": "seed",
}
# keys of official files that reference other parts of the bundle and carry no value of their own
_INFER_REFERENCES = {
    "controlnet",
    "diffusion_unet",
    "autoencoder",
    "mask_generation_autoencoder",
    "mask_generation_diffusion",
}
_TRAIN_SECTIONS = {
    "autoencoder_train": "vae",
    "diffusion_unet_train": "diffusion",
    "controlnet_train": "controlnet",
}
_TRAIN_KEYS = {
    "batch_size": "batch_size",
    "lr": "lr",
    "patch_size": "patch_size",
    "perceptual_weight": "perceptual_weight",
    "kl_weight": "kl_weight",
    "adv_weight": "adv_weight",
    "recon_loss": "recon_loss",
    "weighted_loss_label": "weighted_loss_labels",
    "weighted_loss": "weighted_loss",
    "use_region_contrasive_loss": "use_region_contrastive_loss",
    "region_contrasive_loss_delta": "region_contrastive_loss_delta",
    "region_contrasive_loss_weight": "region_contrastive_loss_weight",
    "amp": "amp",
}
# official training keys that have no counterpart here (epoch-based schedules, caching): accepted, not used
_TRAIN_IGNORED = {
    "cache_rate",
    "cache",
    "n_epochs",
    "fold",
    "val_batch_size",
    "val_patch_size",
    "val_interval",
    "val_sliding_window_patch_size",
}
_ENVIRONMENT_KEYS = {
    "output_dir",
    "trained_autoencoder_path",
    "trained_diffusion_path",
    "trained_controlnet_path",
    "trained_mask_generation_autoencoder_path",
    "trained_mask_generation_diffusion_path",
    "all_mask_files_base_dir",
    "all_mask_files_json",
    "all_anatomy_size_conditions_json",
    "label_dict_json",
    "label_dict_remap_json",
    "model_dir",
    "tfevent_path",
    "exp_name",
    "data_base_dir",
    "json_data_list",
    "existing_ckpt_filepath",
    "modality_mapping_path",
    "embedding_base_dir",
    "model_filename",
    "output_prefix",
    "finetune",
}
_OFFICIAL_MARKERS = (
    set(_NETWORK_KEYS)
    | set(_INFER_KEYS)
    | set(_TRAIN_SECTIONS)
    | _ENVIRONMENT_KEYS
    | {"controlnet_infer", "diffusion_unet_inference", "data_option", "noise_scheduler", "spatial_dims"}
)


def is_official(data: Mapping[str, Any]) -> bool:
    """True when a JSON object looks like one of NVIDIA's MAISI config files rather than a maisi overlay."""
    ours = {f.name for f in dataclasses.fields(Config)}
    return not set(data) <= ours and bool(set(data) & _OFFICIAL_MARKERS)


def _resolve_refs(value: Any, top: Mapping[str, Any], where: str) -> Any:
    if isinstance(value, str) and value.startswith("@"):
        key = value[1:]
        if key not in top:
            raise ConfigError(f"{where}: reference {value!r} names no top-level key")
        return top[key]
    return value


def _class_defaults(target: str, where: str) -> dict[str, Any]:
    """Constructor defaults of the MONAI class an official definition names (keys it leaves out take these)."""
    import importlib
    import inspect

    module, _, name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise ConfigError(f"{where}: unknown _target_ {target!r}") from None
    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _network_overlay(kind: str, definition: Mapping[str, Any], top: Mapping[str, Any], where: str) -> dict:
    from maisi.config import schema

    fields = {
        f.name
        for f in dataclasses.fields(
            schema.UNetConfig
            if kind in ("unet", "mask_unet")
            else schema.ControlNetConfig
            if kind == "controlnet"
            else schema.VAEConfig
        )
    }
    out: dict[str, Any] = {}
    if "_target_" in definition:
        for key, value in _class_defaults(definition["_target_"], where).items():
            key = "num_channels" if key == "channels" else key
            if key in fields and key not in ("spatial_dims",):
                out[key] = list(value) if isinstance(value, tuple) else value
    for key, value in definition.items():
        if key == "_target_":
            if kind in ("unet", "mask_unet"):
                out["variant"] = (
                    "monai" if value.endswith("nets.diffusion_model_unet.DiffusionModelUNet") else "maisi"
                )
            continue
        value = _resolve_refs(value, top, f"{where}.{key}")
        if key == "channels" and kind in ("unet", "mask_unet"):
            key = "num_channels"
        if (
            kind in ("unet", "mask_unet", "controlnet")
            and key == "num_head_channels"
            and isinstance(value, int)
        ):
            value = [value]
        out[key] = value
    return out


def _scheduler_overlay(definition: Mapping[str, Any], where: str) -> dict:
    target = definition.get("_target_", "")
    out: dict[str, Any] = {"kind": "ddpm" if "ddpm" in target.lower() else "rflow"}
    for key, value in definition.items():
        if key == "_target_":
            continue
        if key == "prediction_type":
            key = "prediction"
        out[key] = value
    return out


def official_to_overlay(data: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Translate an official MAISI JSON file (network, inference, training or environment) into an overlay.

    Raises:
        ConfigError: naming the file and the key for any key we do not know.
    """
    model: dict[str, Any] = {}
    generate: dict[str, Any] = {}
    train: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{source}: {key}"
        if key in _NETWORK_KEYS:
            model[_NETWORK_KEYS[key]] = _network_overlay(_NETWORK_KEYS[key], value, data, where)
        elif key == "noise_scheduler":
            model["scheduler"] = _scheduler_overlay(value, where)
        elif key == "mask_generation_noise_scheduler":
            model["mask_scheduler"] = _scheduler_overlay(value, where)
        elif key == "mask_generation_scale_factor":
            model.setdefault("mask_vae", {})["scale_factor"] = value
        elif key == "mask_generation_latent_shape":
            model["mask_latent_shape"] = value
        elif key == "include_body_region":
            model["include_body_region"] = value
        elif key in ("spatial_dims", "image_channels", "latent_channels"):
            continue  # resolved through "@" references in the network definitions
        elif key in _INFER_KEYS:
            generate[_INFER_KEYS[key]] = value
        elif key == "controllable_anatomy_size":
            generate["organ_sizes"] = {str(name): float(size) for name, size in value}
        elif key == "modality":
            generate["modality"] = _modality_name(value, where)
        elif key in _INFER_REFERENCES:
            continue
        elif key in _TRAIN_SECTIONS:
            train["task"] = _TRAIN_SECTIONS[key]
            for k, v in value.items():
                if k in _TRAIN_IGNORED:
                    continue
                if k not in _TRAIN_KEYS:
                    raise ConfigError(f"{source}: unknown key {key}.{k!r}")
                if k == "amp":
                    v = "fp16" if v else "none"
                train[_TRAIN_KEYS[k]] = v
        elif key in ("controlnet_infer", "diffusion_unet_inference"):
            for k, v in value.items():
                if k == "modality":
                    generate["modality"] = _modality_name(v, f"{where}.{k}")
                elif k == "dim":
                    generate["output_size"] = v
                elif k in ("top_region_index", "bottom_region_index"):
                    continue  # derived from body_region in maisi
                elif k in _INFER_KEYS:
                    generate[_INFER_KEYS[k]] = v
                else:
                    raise ConfigError(f"{source}: unknown key {key}.{k!r}")
        elif key == "data_option":
            continue  # augmentation switches of the official VAE trainer; maisi's VAE task has its own
        elif key in _ENVIRONMENT_KEYS:
            if key == "output_dir":
                generate["output_dir"] = value
            continue  # paths of the official layout; weights are found by folder (see maisi.networks.checkpoint)
        else:
            raise ConfigError(f"{source}: unknown key {key!r}")
    out: dict[str, Any] = {}
    if model:
        out["model"] = model
    if generate:
        out["generate"] = generate
    if train:
        out["train"] = train
    return out


def _modality_name(value: Any, where: str) -> str:
    from maisi import resources

    mapping = resources.load_json("modality_mapping.json")
    if isinstance(value, str):
        if value not in mapping:
            raise ConfigError(f"{where}: unknown modality {value!r}")
        return value
    names = [k for k, v in mapping.items() if v == value]
    if not names:
        raise ConfigError(f"{where}: unknown modality id {value!r}")
    return names[0]
