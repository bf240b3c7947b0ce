"""``maisi export FORMAT RUN_DIR``: a generation run as an nnU-Net v2 dataset, a MONAI datalist or DICOM CT + SEG."""

from __future__ import annotations

import argparse

from maisi.export import FORMATS, export_run


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a generation run as an nnU-Net dataset, a MONAI datalist or DICOM CT series + SEG",
        description="Export the complete samples of a 'maisi generate' output folder. Exporting again skips "
        "what is already exported; nothing is overwritten.",
    )
    p.add_argument("format", choices=FORMATS, help="nnunet, monai or dicom")
    p.add_argument("run_dir", metavar="RUN_DIR", help="output folder of 'maisi generate'")
    p.add_argument(
        "--output",
        metavar="DIR",
        help="nnunet: the nnUNet_raw folder (default $nnUNet_raw, else RUN_DIR/nnUNet_raw); "
        "monai: folder of datalist.json (default RUN_DIR); dicom: default RUN_DIR/dicom",
    )
    g = p.add_argument_group("nnunet")
    g.add_argument("--dataset-id", type=int, metavar="N", help="nnU-Net dataset id, 1-999")
    g.add_argument("--dataset-name", metavar="NAME", help="nnU-Net dataset name (letters, digits, - and _)")
    g.add_argument(
        "--keep-only",
        nargs="+",
        default=[],
        metavar="NAME",
        help="labels to keep, renumbered 1..K (default: the run's own --keep-only, else every MAISI label)",
    )
    g.add_argument(
        "--first-case",
        type=int,
        default=0,
        metavar="N",
        help="case number of sample 0 (to append another run)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options = {}
    if args.format == "nnunet" or args.dataset_id is not None or args.dataset_name is not None:
        options = {"dataset_id": args.dataset_id, "dataset_name": args.dataset_name}
    if args.first_case:
        options["first_case"] = args.first_case
    summary = export_run(args.run_dir, args.format, output=args.output, keep_only=args.keep_only, **options)
    counts = f"{summary['added']} added, {summary['skipped']} already there"
    total = f"; {summary['numTraining']} training cases" if "numTraining" in summary else ""
    print(f"{args.format}: {summary['path']} ({counts}{total})")
    return 0
