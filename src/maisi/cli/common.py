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


LABEL_SET_HELP = (
    "vocabulary of the label maps: auto (decided from the map's anatomy, or refused), maisi, totalsegmentator-v1, "
    "totalsegmentator-v2 (= totalsegmentator), totalsegmentator-<task>, or a names file: nnU-Net dataset.json, "
    "id->name or id->MAISI-id JSON, ITK-SNAP label description, 3D Slicer color table or .seg.nrrd"
)


def add_label_args(parser, *, defaults: bool = True) -> None:
    """``--label-set``, ``--unknown-labels``, ``--one-hot``: how a user's label maps are read (``defaults=False``
    leaves them None, so a config file decides)."""
    from maisi.data.labelmaps import UNKNOWN_LABELS

    parser.add_argument("--label-set", default="auto" if defaults else None, help=LABEL_SET_HELP)
    parser.add_argument(
        "--unknown-labels",
        default="error" if defaults else None,
        choices=UNKNOWN_LABELS,
        help="ids with no single MAISI id (unknown, no MAISI counterpart, or a whole MAISI splits): refuse, make "
        "them background, or make them body (200); each is listed in the mapping report",
    )
    parser.add_argument(
        "--one-hot",
        action="store_true",
        default=False if defaults else None,
        help="label files are 4-D one-hot stacks (channel k -> id k)",
    )


def label_overlay(args: argparse.Namespace) -> dict:
    """The label-reading options the user gave, as a ``data`` overlay."""
    given = {
        "label_set": args.label_set,
        "unknown_labels": args.unknown_labels,
        "one_hot": args.one_hot or None,
    }
    return {k: v for k, v in given.items() if v is not None}


def reading_from_args(args: argparse.Namespace):
    """A :class:`~maisi.generation.masks.LabelReading` of the label-reading options."""
    from maisi.generation.masks import LabelReading

    return LabelReading(args.label_set, args.unknown_labels, bool(args.one_hot))


def add_progress_args(parser) -> None:
    """``--quiet``: no progress bars (they show by default when stderr is a terminal, and never in logs)."""
    parser.add_argument(
        "--quiet",
        "--no-progress",
        dest="quiet",
        action="store_true",
        help="no progress bars (default: on a terminal)",
    )


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars: on a terminal unless ``--quiet``."""
    import sys

    return not getattr(args, "quiet", False) and sys.stderr.isatty()
