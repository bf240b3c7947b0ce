"""``maisi masks index DIR``: index a folder of label maps as a mask database for ``maisi generate``."""

from __future__ import annotations

import argparse

from maisi.cli.common import add_label_args, reading_from_args
from maisi.io import read_json


def register(subparsers) -> None:
    p = subparsers.add_parser("masks", help="mask databases: index a folder of label maps")
    sub = p.add_subparsers(dest="masks_command", metavar="ACTION", required=True)
    idx = sub.add_parser(
        "index", help="write DIR/masks_index.json (ids, size, spacing, regions per label map)"
    )
    idx.add_argument("folder", metavar="DIR")
    idx.add_argument("--output", metavar="FILE", help="index file (default DIR/masks_index.json)")
    idx.add_argument("--overwrite", action="store_true", help="replace an existing index")
    add_label_args(idx)
    idx.set_defaults(func=run_index)


def run_index(args: argparse.Namespace) -> int:
    from maisi.generation.masks.database import index_masks

    path = index_masks(
        args.folder, output=args.output, overwrite=args.overwrite, reading=reading_from_args(args)
    )
    data = read_json(path, what="mask index")
    print(f"{path}: {len(data['masks'])} masks indexed, {len(data['skipped'])} skipped")
    for item in data["skipped"]:
        print(f"  skipped {item['file']}: {item['reason']}")
    return 0
