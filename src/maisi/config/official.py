"""NVIDIA's official MAISI JSON files (network, inference, training, environment) translated into maisi overlays.

The translation is data only: a ``_target_`` is looked up in an allow-list of the classes MAISI's files name
(:data:`NETWORK_TARGETS`, :data:`SCHEDULER_TARGETS`) and is never imported, so a config file cannot make maisi
import or run code. Keys with no maisi counterpart (epoch-based training options, data-loader switches, paths of
the official folder layout) are accepted and reported in one warning per file naming each of them; any other key
is an error naming it and the file.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from maisi.config.schema import Config, ControlNetConfig, UNetConfig, VAEConfig
from maisi.errors import ConfigError

log = logging.getLogger(__name__)


def _maisi_vae() -> type:
    from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi

    return AutoencoderKlMaisi


def _maisi_unet() -> type:
    from monai.apps.generation.maisi.networks.diffusion_model_unet_maisi import DiffusionModelUNetMaisi

    return DiffusionModelUNetMaisi


def _monai_unet() -> type:
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet


def _maisi_controlnet() -> type:
    from monai.apps.generation.maisi.networks.controlnet_maisi import ControlNetMaisi

    return ControlNetMaisi


#: official network ``_target_`` -> (UNet variant or None, the MONAI class whose constructor defaults fill the keys a
#: definition leaves out). The AdaGN mask UNet of the 2026 release is MONAI's MAISI UNet plus AdaGN layers; its
#: other defaults are the MAISI UNet's.
NETWORK_TARGETS: dict[str, tuple[str | None, Callable[[], type]]] = {
    "monai.apps.generation.maisi.networks.autoencoderkl_maisi.AutoencoderKlMaisi": (None, _maisi_vae),
    "monai.apps.generation.maisi.networks.diffusion_model_unet_maisi.DiffusionModelUNetMaisi": (
        "maisi",
        _maisi_unet,
    ),
    "monai.networks.nets.diffusion_model_unet.DiffusionModelUNet": ("monai", _monai_unet),
    "monai.networks.nets.DiffusionModelUNet": ("monai", _monai_unet),
    "scripts.adagn_unet.DiffusionModelUNetMaisiAdaGN": ("adagn", _maisi_unet),  # ADAGN_TARGET
    "monai.apps.generation.maisi.networks.controlnet_maisi.ControlNetMaisi": (None, _maisi_controlnet),
}
ADAGN_TARGET = "scripts.adagn_unet.DiffusionModelUNetMaisiAdaGN"
#: official scheduler ``_target_`` -> scheduler kind
SCHEDULER_TARGETS: dict[str, str] = {
    "monai.networks.schedulers.rectified_flow.RFlowScheduler": "rflow",
    "monai.networks.schedulers.RFlowScheduler": "rflow",
    "monai.networks.schedulers.ddpm.DDPMScheduler": "ddpm",
    "monai.networks.schedulers.DDPMScheduler": "ddpm",
}

_NETWORK_KEYS = {
    "autoencoder_def": "vae",
    "diffusion_unet_def": "unet",
    "controlnet_def": "controlnet",
    "mask_generation_autoencoder_def": "mask_vae",
    "mask_generation_diffusion_def": "mask_unet",
}
_SCHEMAS = {
    "vae": VAEConfig,
    "mask_vae": VAEConfig,
    "unet": UNetConfig,
    "mask_unet": UNetConfig,
    "mask_unet_v2": UNetConfig,
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
    "mask_generation_cfg_guidance_scale": "mask_guidance",
    "random_seed": "seed",
}
#: keys of official files that reference other parts of the bundle and carry no value of their own
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
#: official training keys with no counterpart here, and why
_TRAIN_IGNORED = {
    "cache_rate": "maisi reads cases lazily",
    "cache": "maisi reads cases lazily",
    "n_epochs": "maisi trains by steps (train.max_steps)",
    "fold": "maisi splits train/validation itself",
    "val_batch_size": "validation runs one case at a time",
    "val_patch_size": "use train.val_patch",
    "val_interval": "use train.val_every (steps)",
    "val_sliding_window_patch_size": "validation decodes with the codec's window",
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


def _target(definition: Mapping[str, Any], where: str) -> tuple[str | None, Callable[[], type]] | None:
    target = definition.get("_target_")
    if target is None:
        return None
    if target not in NETWORK_TARGETS:
        known = ", ".join(sorted(NETWORK_TARGETS))
        raise ConfigError(f"{where}: unknown _target_ {target!r} (known network classes: {known})")
    return NETWORK_TARGETS[target]


def _class_defaults(cls: type) -> dict[str, Any]:
    """Constructor defaults of a known MONAI class (keys a definition leaves out take these)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _network_overlay(kind: str, definition: Mapping[str, Any], top: Mapping[str, Any], where: str) -> dict:
    fields = {f.name for f in dataclasses.fields(_SCHEMAS.get(kind, ControlNetConfig))}
    is_unet = kind in ("unet", "mask_unet", "mask_unet_v2")
    out: dict[str, Any] = {}
    target = _target(definition, where)
    if target is not None:
        variant, cls = target
        for key, value in _class_defaults(cls()).items():
            key = "num_channels" if key == "channels" else key
            if key in fields and key != "spatial_dims":
                out[key] = list(value) if isinstance(value, tuple) else value
        if is_unet:
            out["variant"] = variant
    for key, value in definition.items():
        if key == "_target_":
            continue
        value = _resolve_refs(value, top, f"{where}.{key}")
        if key == "channels" and is_unet:
            key = "num_channels"
        if (is_unet or kind == "controlnet") and key == "num_head_channels" and isinstance(value, int):
            value = [value]
        out[key] = value
    return out


def _scheduler_overlay(definition: Mapping[str, Any], where: str) -> dict:
    target = definition.get("_target_")
    if target not in SCHEDULER_TARGETS:
        known = ", ".join(sorted(SCHEDULER_TARGETS))
        raise ConfigError(f"{where}: unknown scheduler _target_ {target!r} (known: {known})")
    out: dict[str, Any] = {"kind": SCHEDULER_TARGETS[target]}
    for key, value in definition.items():
        if key != "_target_":
            out["prediction" if key == "prediction_type" else key] = value
    return out


class _Translation:
    """The overlay being built from one official file, and the keys it ignores."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.model: dict[str, Any] = {}
        self.generate: dict[str, Any] = {}
        self.train: dict[str, Any] = {}
        self.ignored: dict[str, list[str]] = {}  # reason -> keys

    def ignore(self, key: str, why: str) -> None:
        self.ignored.setdefault(why, []).append(key)

    def overlay(self) -> dict[str, Any]:
        parts = {"model": self.model, "generate": self.generate, "train": self.train}
        return {k: v for k, v in parts.items() if v}


def official_to_overlay(data: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """Translate an official MAISI JSON file (network, inference, training or environment) into an overlay.

    Keys maisi does not use are logged in one warning naming each (see the module docstring).

    Raises:
        ConfigError: naming the file and the key for any key we do not know, or a ``_target_`` outside the
            allow-list.
    """
    t = _Translation(source)
    # the 2026 files define the AdaGN mask generator (and its rectified-flow scheduler) under the v1 keys
    v2 = _target(data.get("mask_generation_diffusion_def", {}), source) == NETWORK_TARGETS[ADAGN_TARGET]
    for key, value in data.items():
        where = f"{source}: {key}"
        if key in _NETWORK_KEYS:
            name = "mask_unet_v2" if v2 and key == "mask_generation_diffusion_def" else _NETWORK_KEYS[key]
            t.model[name] = _network_overlay(name, value, data, where)
        elif key in ("noise_scheduler", "mask_generation_noise_scheduler"):
            name = (
                "scheduler" if key == "noise_scheduler" else "mask_scheduler_v2" if v2 else "mask_scheduler"
            )
            t.model[name] = _scheduler_overlay(value, where)
        elif key == "mask_generation_scale_factor":
            t.model.setdefault("mask_vae", {})["scale_factor"] = value
        elif key == "mask_generation_latent_shape":
            t.model["mask_latent_shape"] = value
        elif key == "include_body_region":
            t.model["include_body_region"] = value
        elif key in ("spatial_dims", "image_channels", "latent_channels"):
            continue  # resolved through "@" references in the network definitions
        elif key in _INFER_REFERENCES:
            continue  # "$@..._def": the network definitions themselves are translated
        else:
            _translate_run_key(t, key, value, where)
    if t.ignored:
        said = "; ".join(f"{', '.join(keys)} ({why})" for why, keys in t.ignored.items())
        log.warning("%s: official keys not used by maisi: %s", source, said)
    return t.overlay()


def _translate_run_key(t: _Translation, key: str, value: Any, where: str) -> None:
    """Inference, training and environment keys."""
    if key in _INFER_KEYS:
        t.generate[_INFER_KEYS[key]] = value
    elif key == "controllable_anatomy_size":
        t.generate["organ_sizes"] = {str(name): float(size) for name, size in value}
    elif key == "controllable_demographics":
        if value:  # null or [] in the official files: no demographics
            t.generate["demographics"] = {str(name): v for name, v in _pairs(value, where)}
    elif key == "modality":
        t.generate["modality"] = _modality_name(value, where)
    elif key in _TRAIN_SECTIONS:
        t.train["task"] = _TRAIN_SECTIONS[key]
        for k, v in value.items():
            if k in _TRAIN_IGNORED:
                t.ignore(f"{key}.{k}", _TRAIN_IGNORED[k])
            elif k not in _TRAIN_KEYS:
                raise ConfigError(f"{t.source}: unknown key {key}.{k!r}")
            else:
                t.train[_TRAIN_KEYS[k]] = ("fp16" if v else "none") if k == "amp" else v
    elif key in ("controlnet_infer", "diffusion_unet_inference"):
        for k, v in value.items():
            if k == "modality":
                t.generate["modality"] = _modality_name(v, f"{where}.{k}")
            elif k == "dim":
                t.generate["output_size"] = v
            elif k in ("top_region_index", "bottom_region_index"):
                t.ignore(f"{key}.{k}", "maisi derives body regions from generate.body_region and the mask")
            elif k in _INFER_KEYS:
                t.generate[_INFER_KEYS[k]] = v
            else:
                raise ConfigError(f"{t.source}: unknown key {key}.{k!r}")
    elif key == "data_option":
        t.ignore(key, "augmentation switches of the official VAE trainer; maisi's VAE task has its own")
    elif key == "output_dir":
        t.generate["output_dir"] = value
    elif key in _ENVIRONMENT_KEYS:
        t.ignore(
            key, "paths and switches of the official folder layout: weights are passed with --weights DIR"
        )
    else:
        raise ConfigError(f"{t.source}: unknown key {key!r}")


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


def _pairs(value: Any, where: str) -> list[tuple[str, Any]]:
    """An official ``[[name, value], ...]`` list (or a ``{name: value}`` object)."""
    items = value.items() if isinstance(value, Mapping) else value
    try:
        return [(str(name), v) for name, v in items]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: expected [[name, value], ...], got {value!r}") from None
