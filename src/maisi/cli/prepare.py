"""``maisi prepare``: resample images (and label maps) to MAISI-ready volumes plus a datalist JSON."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from maisi.cli.common import add_label_args
from maisi.data.datalist import read_datalist
from maisi.data.labelmaps import format_report
from maisi.data.prepare import prepare


def register(subparsers) -> None:
    p = subparsers.add_parser("prepare", help="resample NIfTI images/labels and write a MAISI datalist")
    p.add_argument("--images", nargs="+", required=True, help="a folder of images, or image files")
    p.add_argument(
        "--labels", nargs="+", default=None, help="a folder of label maps, or label files (same order)"
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=None,
        metavar=("SX", "SY", "SZ"),
        help="target voxel spacing in mm (default: keep)",
    )
    p.add_argument(
        "--divisor", type=int, default=128, help="pad each axis to a multiple of this (0: no padding)"
    )
    p.add_argument(
        "--modality",
        default="ct",
        help="the images' modality, a name of modality_mapping.json (ct, mri, mri_t1, mri_t2_skull_stripped, ...): "
        "ct* use the [-1000, 1000] HU window, mri* the 0-99.5th percentile range",
    )
    add_label_args(p)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument(
        "--verbose", action="store_true", help="print each label map's mapping table (source id -> MAISI id)"
    )
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def _one_or_many(values: list[str] | None):
    if values is None:
        return None
    return values[0] if len(values) == 1 and Path(values[0]).is_dir() else values


def run(args: argparse.Namespace) -> int:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        datalist = prepare(
            images=_one_or_many(args.images),
            labels=_one_or_many(args.labels),
            output_dir=args.output_dir,
            spacing=args.spacing,
            divisor=args.divisor or None,
            modality=args.modality,
            label_set=args.label_set,
            folds=args.folds,
            unknown_labels=args.unknown_labels,
            one_hot=args.one_hot,
            overwrite=args.overwrite,
        )
    for w in caught:
        print(f"maisi prepare: warning: {w.message}", file=sys.stderr)
    if args.verbose:
        for entry in read_datalist(datalist):
            if "label_mapping" in entry:
                print(format_report(entry["label_mapping"]))
    print(datalist)
    return 0
