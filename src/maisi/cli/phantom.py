"""``maisi phantom``: write procedural CT phantoms (image + MAISI label map + metadata) and a datalist."""

from __future__ import annotations

import argparse

from maisi.data.phantom import write_phantoms


def register(subparsers) -> None:
    p = subparsers.add_parser("phantom", help="write procedural CT phantoms with paired label maps")
    p.add_argument("--num", type=int, default=1, help="number of phantoms")
    p.add_argument("--output-dir", required=True, help="folder for the NIfTI pairs and datalist.json")
    p.add_argument("--size", type=int, nargs=3, default=[128, 128, 128], metavar=("X", "Y", "Z"))
    p.add_argument("--spacing", type=float, nargs=3, default=[1.5, 1.5, 1.5], metavar=("SX", "SY", "SZ"))
    p.add_argument("--region", default="chest-abdomen", choices=["chest", "abdomen", "chest-abdomen"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--supersample",
        type=int,
        default=1,
        metavar="K",
        help="partial volume: render on a K-times finer lattice and average each voxel's K^3 sub-voxels (1: sharp)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace existing phantom files")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    entries = write_phantoms(
        num=args.num,
        output_dir=args.output_dir,
        size=tuple(args.size),
        spacing=tuple(args.spacing),
        region=args.region,
        seed=args.seed,
        overwrite=args.overwrite,
        supersample=args.supersample,
    )
    print(f"wrote {len(entries)} phantoms to {args.output_dir}")
    return 0
