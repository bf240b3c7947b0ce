"""Typed configuration: schema, presets and strict loading (including the official MAISI JSON files)."""

from __future__ import annotations

from maisi.config.loading import (
    apply_overlay,
    config_from_dict,
    load_config,
    official_to_overlay,
    parse_assignments,
    save_config,
    to_dict,
)
from maisi.config.presets import PRESETS, preset
from maisi.config.schema import (
    Config,
    ControlNetConfig,
    DataConfig,
    DiscriminatorConfig,
    GenerateConfig,
    ModelConfig,
    SchedulerConfig,
    TrainConfig,
    UNetConfig,
    VAEConfig,
)

__all__ = [
    "PRESETS",
    "Config",
    "ControlNetConfig",
    "DataConfig",
    "DiscriminatorConfig",
    "GenerateConfig",
    "ModelConfig",
    "SchedulerConfig",
    "TrainConfig",
    "UNetConfig",
    "VAEConfig",
    "apply_overlay",
    "config_from_dict",
    "load_config",
    "official_to_overlay",
    "parse_assignments",
    "preset",
    "save_config",
    "to_dict",
]
