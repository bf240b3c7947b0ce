"""Strict config loading: dicts and JSON overlays into the typed schema, presets, ``key=value`` overrides, saving.

An overlay holds only the keys it changes. Every unknown key is an error naming the key and the file. NVIDIA's
official MAISI JSON files are translated into overlays by :mod:`maisi.config.official` first.
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

from maisi.config.official import is_official, official_to_overlay
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
    """Read a config file's JSON object, with errors naming the file."""
    from maisi.io import read_json as read

    return read(path, error=ConfigError, what="config file", expect=dict)


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
