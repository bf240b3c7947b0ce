"""``maisi evaluate``: reconstruction, FID 2.5D, consistency, organ HU check, size control, memorisation, report,
and training of the segmenter that consistency uses (``maisi evaluate train-segmenter``).

Every option maps onto one field of the typed config (``evaluate.*``, ``evaluate.fid.*``; the segmenter onto
``model.segmenter.*`` and ``train.*``), so ``--dry-run`` prints the resolved config and ``--config`` / ``key=value``
work as for every command. The evaluation itself is :func:`maisi.evaluation.run.evaluate`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from maisi.cli.common import add_config_args, add_progress_args, print_config, resolve_config, show_progress


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="FILE", help="write the full result as JSON to FILE")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace an existing output")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="torch device (cpu, cuda, cuda:1)")


def _label_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--label-set",
        help="vocabulary of label maps maisi did not generate (default auto: decided from the anatomy, or refused)",
    )


def _fid(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("FID (evaluate.fid.*)")
    g.add_argument(
        "--extractor",
        choices=("random", "resnet50", "radimagenet"),
        help="2D feature extractor: random (weights-free, not comparable to published FIDs), resnet50 "
        "(ImageNet weights) or radimagenet (RadImageNet ResNet-50 weights)",
    )
    g.add_argument(
        "--extractor-weights", metavar="FILE", help="local ResNet-50 weights for resnet50/radimagenet"
    )
    g.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), help="resample (mm)")
    g.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="pad/centre-crop to this size")
    g.add_argument(
        "--no-pad", dest="pad", action="store_false", default=None, help="with --shape: do not pad"
    )
    g.add_argument(
        "--no-crop", dest="crop", action="store_false", default=None, help="with --shape: do not crop"
    )
    g.add_argument("--center-slice-ratio", type=float, help="central fraction of slices used (0, 1]")
    g.add_argument("--slice-step", type=int, help="use every k-th slice")
    g.add_argument(
        "--intensity",
        dest="fid_intensity",
        choices=("ct", "ct-minmax", "mri", "unit"),
        help="intensity scaling: ct (fixed [-1000, 1000] HU window), ct-minmax (the official script's per-plane "
        "min-max after clipping), mri, unit",
    )
    g.add_argument("--batch-size", type=int, help="slices per extractor call")
    g.add_argument("--seed", type=int, help="seed of the weights-free extractor")
    g.add_argument("--cache-dir", metavar="DIR", help="per-volume feature cache")


#: command -> (help, option adders); each option's dest is an ``evaluate`` field (``fid`` ones: ``evaluate.fid``)
COMMANDS: dict[str, tuple[str, list[Callable[[argparse.ArgumentParser], None]]]] = {
    "recon": (
        "PSNR / SSIM / MS-SSIM of VAE reconstructions of whole volumes",
        [
            lambda p: p.add_argument("--weights", metavar="DIR", help="model-set folder with a vae"),
            lambda p: p.add_argument(
                "--data", metavar="PATH", help="pairs folder, datalist JSON or NIfTI file"
            ),
            lambda p: p.add_argument("--max-cases", type=int, help="evaluate the first N volumes only"),
            lambda p: p.add_argument(
                "--intensity", choices=("ct", "mri"), help="input scaling (MR: percentiles)"
            ),
            lambda p: p.add_argument(
                "--modality",
                metavar="NAME",
                help="the images' modality (mri*: the MR normalisation); sets --intensity",
            ),
            _device,
            _output,
        ],
    ),
    "fid": (
        "FID 2.5D over axial, coronal and sagittal slices",
        [
            lambda p: p.add_argument("--real", metavar="PATH"),
            lambda p: p.add_argument("--synthetic", metavar="PATH"),
            _fid,
            _device,
            _output,
        ],
    ),
    "consistency": (
        "Dice of re-segmented generated images against their masks",
        [
            lambda p: p.add_argument("--pairs", dest="synthetic", metavar="DIR", help="image/label pairs"),
            lambda p: p.add_argument(
                "--segmenter",
                metavar="SEG",
                help="segmenter folder or run (maisi evaluate train-segmenter) or 'totalsegmentator'",
            ),
            lambda p: p.add_argument(
                "--labels", type=int, nargs="+", metavar="ID", help="MAISI ids to score"
            ),
            _label_set,
            _device,
            _output,
        ],
    ),
    "qc": (
        "organ median-HU pass rate",
        [lambda p: p.add_argument("--pairs", dest="synthetic", metavar="DIR"), _label_set, _output],
    ),
    "size": (
        "requested vs realised organ/tumour sizes (generation sidecars)",
        [lambda p: p.add_argument("--pairs", dest="synthetic", metavar="DIR"), _output],
    ),
    "memorization": (
        "nearest training volume of each synthetic volume",
        [
            lambda p: p.add_argument("--synthetic", metavar="PATH"),
            lambda p: p.add_argument("--training", metavar="PATH"),
            lambda p: p.add_argument(
                "--grid",
                type=int,
                nargs=3,
                metavar=("X", "Y", "Z"),
                help="downsampled grid (default 32 32 32)",
            ),
            lambda p: p.add_argument(
                "--threshold", type=float, help="correlation flagging a copy (default 0.98)"
            ),
            _output,
        ],
    ),
    "report": (
        "HTML + Markdown report; computes missing results in DIR",
        [
            lambda p: p.add_argument(
                "dir", metavar="DIR", help="evaluation folder (results read and written)"
            ),
            lambda p: p.add_argument("--real", metavar="PATH", help="real pairs (phantom folders work)"),
            lambda p: p.add_argument("--synthetic", metavar="PATH", help="generated pairs"),
            lambda p: p.add_argument(
                "--training", metavar="PATH", help="memorisation training set (default --real)"
            ),
            lambda p: p.add_argument(
                "--segmenter", metavar="SEG", help="segmenter for the consistency section"
            ),
            lambda p: p.add_argument("--examples", type=int, help="rows of example slices"),
            lambda p: p.add_argument(
                "--no-compute", dest="compute", action="store_false", default=None, help="only render results"
            ),
            lambda p: p.add_argument(
                "--overwrite", action="store_true", default=None, help="replace the report"
            ),
            _device,
            _fid,
        ],
    ),
}
#: options that belong to ``evaluate.fid`` (dest -> field)
FID_FIELDS = {
    "extractor": "extractor",
    "extractor_weights": "extractor_weights",
    "spacing": "spacing",
    "shape": "shape",
    "pad": "pad",
    "crop": "crop",
    "center_slice_ratio": "center_slice_ratio",
    "slice_step": "slice_step",
    "fid_intensity": "intensity",
    "batch_size": "batch_size",
    "seed": "seed",
    "cache_dir": "cache_dir",
}
_NOT_CONFIG = {
    "func",
    "_parser",
    "dry_run",
    "config",
    "preset",
    "overrides",
    "command",
    "evaluate_command",
    "quiet",
}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate synthetic data: " + ", ".join([*COMMANDS, "train-segmenter"]),
    )
    sub = p.add_subparsers(dest="evaluate_command", metavar="WHAT")
    for name, (text, options) in COMMANDS.items():
        q = sub.add_parser(name, help=text)
        for add in options:
            add(q)
        add_config_args(q)
        add_progress_args(q)
    _register_train_segmenter(sub)
    p.set_defaults(func=run, _parser=p)


def _register_train_segmenter(sub) -> None:
    q = sub.add_parser("train-segmenter", help="train maisi's small 3D segmenter on image/label pairs")
    q.add_argument("--data", required=True, metavar="PATH", help="pairs folder or datalist JSON")
    q.add_argument("--run-dir", required=True, metavar="DIR", help="output folder (gets model/segmenter/)")
    q.add_argument("--steps", type=int, default=500)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument(
        "--labels", type=int, nargs="+", metavar="ID", help="MAISI ids to learn (default: all but body)"
    )
    q.add_argument(
        "--groups",
        choices=("large-organs",),
        help="learn merged groups instead of ids: large-organs = liver, spleen, kidneys, lungs, vertebrae "
        "(consistency is then scored per group)",
    )
    q.add_argument("--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"))
    q.add_argument("--roi-size", type=int, nargs=3, default=(64, 64, 64), metavar=("X", "Y", "Z"))
    q.add_argument("--batch-size", type=int, default=2)
    q.add_argument("--lr", type=float, default=1e-3)
    q.add_argument("--overwrite", action="store_true")
    q.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    q.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    add_progress_args(q)


def overlay_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave, as an ``evaluate`` overlay (``what`` set from the sub-command)."""
    given = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG and v is not None}
    if "modality" in given:  # a modality name decides the scaling: MR percentiles or the CT window
        from maisi.data.intensity import is_mr
        from maisi.generation.request import modality_id

        given["intensity"] = "mri" if is_mr(modality_id(given.pop("modality"), source="--modality")) else "ct"
    fid = {FID_FIELDS[k]: v for k, v in given.items() if k in FID_FIELDS}
    rest = {k: v for k, v in given.items() if k not in FID_FIELDS}
    return {"evaluate": {"what": args.evaluate_command, **rest, **({"fid": fid} if fid else {})}}


def run(args: argparse.Namespace) -> int:
    if args.evaluate_command is None:
        args._parser.print_help()
        return 2
    if args.evaluate_command == "train-segmenter":
        return _train_segmenter(args)
    from maisi.evaluation.run import evaluate, is_main_process, summary

    cfg = resolve_config(args, overlay_from_args(args))
    if args.dry_run:
        print_config(cfg)
        return 0
    result = evaluate(cfg, progress=show_progress(args))
    if is_main_process():  # under torchrun, rank 0 speaks for all
        out = summary(cfg.evaluate.what, result)
        if cfg.evaluate.what == "report":
            print(f"report: {out['html']}  (Markdown: {out['markdown']})")
        else:
            print(json.dumps(out, indent=2, default=str))
    return 0


def _train_segmenter(args: argparse.Namespace) -> int:
    from maisi.labels import LARGE_ORGANS
    from maisi.training.tasks.segmenter import segmenter_config, train_segmenter

    options = dict(
        steps=args.steps,
        seed=args.seed,
        labels=args.labels,
        groups={"large-organs": LARGE_ORGANS}[args.groups] if args.groups else None,
        spacing=args.spacing,
        roi_size=args.roi_size,
        batch_size=args.batch_size,
        lr=args.lr,
    )
    if args.dry_run:
        print_config(segmenter_config(args.data, args.run_dir, **options))
        return 0
    folder = train_segmenter(
        args.data,
        args.run_dir,
        **options,
        device=args.device,
        overwrite=args.overwrite,
        progress=show_progress(args),
    )
    print(f"segmenter: {folder}")
    return 0
