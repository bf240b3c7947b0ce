"""Scheduler registry: build a scheduler from its ``kind`` and constructor arguments (or a saved config)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from typing import Any

from .base import Scheduler
from .ddpm import DDPM
from .rflow import RectifiedFlow

SCHEDULERS: dict[str, type[Scheduler]] = {RectifiedFlow.kind: RectifiedFlow, DDPM.kind: DDPM}


def build_scheduler(kind: str, **kwargs: Any) -> Scheduler:
    """``build_scheduler("rflow", num_train_timesteps=1000)``; unknown kinds and keys raise ``ValueError``."""
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler kind must be one of {sorted(SCHEDULERS)}, got {kind!r}")
    cls = SCHEDULERS[kind]
    accepted = _parameters(cls)
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"scheduler {kind!r} has no option {unknown[0]!r} (options: {sorted(accepted)})")
    return cls(**kwargs)


def scheduler_from_config(config: Mapping[str, Any] | Any) -> Scheduler:
    """Build from a mapping or dataclass holding ``kind`` plus fields of one or both kinds.

    Fields that belong only to the other kind are dropped (``maisi.config.SchedulerConfig`` holds both), so
    ``scheduler_from_config({"kind": "ddpm", **s.config()})`` round-trips any scheduler ``s``.
    """
    values = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    if "kind" not in values:
        raise ValueError(
            "scheduler config has no 'kind' (expected one of " + ", ".join(sorted(SCHEDULERS)) + ")"
        )
    kind = values.pop("kind")
    if kind not in SCHEDULERS:
        raise ValueError(f"scheduler kind must be one of {sorted(SCHEDULERS)}, got {kind!r}")
    accepted = _parameters(SCHEDULERS[kind])
    return build_scheduler(kind, **{k: v for k, v in values.items() if k in accepted})


def _parameters(cls: type[Scheduler]) -> set[str]:
    return {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.kind is p.KEYWORD_ONLY}
