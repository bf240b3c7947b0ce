"""Argument helpers shared by the sub-commands: config resolution, --dry-run, devices."""

from __future__ import annotations

import argparse
import json

from maisi.config import Config, apply_overlay, load_config, parse_assignments, to_dict


def add_config_args(parser: argparse.ArgumentParser) -> None:
    """``--config FILE`` (repeatable; ours or official MAISI JSON), ``--preset NAME``, ``key=value`` overrides,
    ``--dry-run``."""
    parser.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="FILE",
        help="config overlay or official MAISI JSON file (repeatable, applied in order)",
    )
    parser.add_argument(
        "--preset",
        default=None,
        help="starting preset: rflow-ct, ddpm-ct, tiny or demo (generate: demo when --weights is demo)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides such as train.lr=1e-4 or generate.output_size=[64,64,64]",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")


def resolve_config(args: argparse.Namespace, extra: dict | None = None) -> Config:
    """Preset, then ``--config`` files, then command-line options (``extra``, a nested overlay holding only the
    options the user gave), then ``key=value`` overrides."""
    cfg = load_config(preset=args.preset, files=args.config)
    if extra:
        cfg = apply_overlay(cfg, extra, source="command-line options")
    return apply_overlay(cfg, parse_assignments(args.overrides), source="command line")


def print_config(cfg: Config, **extra: object) -> None:
    """The resolved config as JSON; ``extra`` sections (e.g. a run's ``plan``) are printed beside it."""
    print(json.dumps({**to_dict(cfg), **extra}, indent=2))
