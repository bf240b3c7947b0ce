"""``maisi download [rflow-ct|ddpm-ct] --dir DIR``: fetch NVIDIA's official checkpoints from the hub."""

from __future__ import annotations

import argparse

from maisi.networks.hub import HUB_REPO, FolderHub, download


def register(subparsers) -> None:
    p = subparsers.add_parser("download", help="download the official MAISI checkpoints")
    p.add_argument("variant", nargs="?", default="rflow-ct", choices=["rflow-ct", "ddpm-ct"])
    p.add_argument(
        "--dir", default=None, help="target folder (default: $MAISI_HOME/VARIANT or ~/.cache/maisi)"
    )
    p.add_argument("--repo", default=HUB_REPO, help=f"hub repository (default {HUB_REPO})")
    p.add_argument(
        "--hub-folder", default=None, help="serve files from a local mirror folder instead of the hub"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    hub = FolderHub(args.hub_folder) if args.hub_folder else None
    for path in download(args.variant, directory=args.dir, hub=hub, repo=args.repo):
        print(path)
    return 0
