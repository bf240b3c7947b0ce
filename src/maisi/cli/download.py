"""``maisi download VARIANT --dir DIR``: fetch NVIDIA's official checkpoints and datasets from the hub."""

from __future__ import annotations

import argparse
import sys

from maisi.networks.hub import FolderHub, download
from maisi.networks.variants import VARIANTS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "download", help="download the official MAISI checkpoints and datasets (size/hash checked, resumable)"
    )
    p.add_argument("variant", nargs="?", default="rflow-ct", choices=list(VARIANTS))
    p.add_argument(
        "--dir", default=None, help="target folder (default: $MAISI_HOME/VARIANT or ~/.cache/maisi/VARIANT)"
    )
    p.add_argument(
        "--models-only", action="store_true", help="the checkpoints only: no mask database or size conditions"
    )
    p.add_argument(
        "--repo",
        default=None,
        help="fetch every file from this hub repository (a mirror of the official paths)",
    )
    p.add_argument(
        "--hub-folder", default=None, help="serve files from a local mirror folder instead of the hub"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    hub = FolderHub(args.hub_folder) if args.hub_folder else None
    got = download(args.variant, directory=args.dir, hub=hub, repo=args.repo, models_only=args.models_only)
    for path in [*got.files, *got.extracted]:
        print(path)
    for name in got.missing_optional:
        print(f"maisi download: note: {name} is not on the hub (optional); skipped", file=sys.stderr)
    return 0
