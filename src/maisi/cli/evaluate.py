"""``maisi evaluate``: reconstruction, FID 2.5D, consistency, organ HU check, size control, memorisation, report,
and training of the segmenter that consistency uses (``maisi evaluate train-segmenter``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _common(p: argparse.ArgumentParser, *, out: bool = True, device: bool = False) -> None:
    if out:
        p.add_argument("--out", metavar="FILE", help="write the full result as JSON to FILE")
        p.add_argument("--overwrite", action="store_true", help="replace an existing output")
    if device:
        p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")


def _fid_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("FID")
    g.add_argument(
        "--extractor",
        default="random",
        choices=("random", "resnet50", "radimagenet"),
        help="2D feature extractor: random (weights-free, not comparable to published FIDs), resnet50 "
        "(ImageNet weights) or radimagenet (RadImageNet ResNet-50 weights)",
    )
    g.add_argument(
        "--extractor-weights", metavar="FILE", help="local ResNet-50 weights for resnet50/radimagenet"
    )
    g.add_argument(
        "--spacing", type=float, nargs=3, metavar=("SX", "SY", "SZ"), help="resample to this spacing (mm)"
    )
    g.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="pad/centre-crop to this size")
    g.add_argument("--no-pad", action="store_true", help="with --shape: do not pad smaller volumes")
    g.add_argument("--no-crop", action="store_true", help="with --shape: do not crop larger volumes")
    g.add_argument(
        "--center-slice-ratio", type=float, default=1.0, help="central fraction of slices used (0, 1]"
    )
    g.add_argument("--slice-step", type=int, default=1, help="use every k-th slice")
    g.add_argument(
        "--intensity",
        default="ct",
        choices=("ct", "ct-minmax", "mri", "unit"),
        help="intensity scaling: ct (fixed [-1000, 1000] HU window), ct-minmax (the official script's per-plane "
        "min-max after clipping), mri, unit",
    )
    g.add_argument("--batch-size", type=int, default=64, help="slices per extractor call")
    g.add_argument("--seed", type=int, default=0, help="seed of the weights-free extractor")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="evaluate synthetic data: recon, fid, consistency, qc, size, "
        "memorization, report, train-segmenter",
    )
    sub = p.add_subparsers(dest="evaluate_command", metavar="WHAT")

    q = sub.add_parser("recon", help="PSNR / SSIM / MS-SSIM of VAE reconstructions of whole volumes")
    q.add_argument("--weights", required=True, metavar="DIR", help="model-set folder with a vae")
    q.add_argument("--data", required=True, metavar="PATH", help="pairs folder, datalist JSON or NIfTI file")
    q.add_argument("--max-cases", type=int, default=None, help="evaluate the first N volumes only")
    q.add_argument("--intensity", default="ct", choices=("ct", "mri"))
    _common(q, device=True)

    q = sub.add_parser("fid", help="FID 2.5D over axial, coronal and sagittal slices")
    q.add_argument("--real", required=True, metavar="PATH")
    q.add_argument("--synthetic", required=True, metavar="PATH")
    q.add_argument("--cache-dir", metavar="DIR", help="per-volume feature cache")
    _fid_args(q)
    _common(q, device=True)

    q = sub.add_parser("consistency", help="Dice of re-segmented generated images against their masks")
    q.add_argument("--pairs", required=True, metavar="DIR", help="generated image/label pairs")
    q.add_argument(
        "--segmenter",
        required=True,
        metavar="SEG",
        help="segmenter folder (maisi evaluate train-segmenter, or a MONAI network config) or "
        "'totalsegmentator'",
    )
    q.add_argument(
        "--labels", type=int, nargs="+", metavar="ID", help="MAISI ids to score (default: all known)"
    )
    _common(q, device=True)

    q = sub.add_parser("qc", help="organ median-HU pass rate")
    q.add_argument("--pairs", required=True, metavar="DIR")
    _common(q)

    q = sub.add_parser("size", help="requested vs realised organ/tumour sizes (generation sidecars)")
    q.add_argument("--pairs", required=True, metavar="DIR")
    _common(q)

    q = sub.add_parser("memorization", help="nearest training volume of each synthetic volume")
    q.add_argument("--synthetic", required=True, metavar="PATH")
    q.add_argument("--training", required=True, metavar="PATH")
    q.add_argument(
        "--grid",
        type=int,
        nargs=3,
        default=(32, 32, 32),
        metavar=("X", "Y", "Z"),
        help="downsampled grid (default 32 32 32)",
    )
    q.add_argument(
        "--threshold", type=float, default=0.98, help="correlation at or above which a volume is flagged"
    )
    _common(q)

    q = sub.add_parser("report", help="HTML + Markdown report; computes missing results in DIR")
    q.add_argument("dir", metavar="DIR", help="evaluation folder (results are read from and written to it)")
    q.add_argument("--real", metavar="PATH", help="real pairs (phantom folders work)")
    q.add_argument("--synthetic", metavar="PATH", help="generated pairs")
    q.add_argument("--training", metavar="PATH", help="training set for memorisation (default --real)")
    q.add_argument("--segmenter", metavar="SEG", help="segmenter for the consistency section")
    q.add_argument("--examples", type=int, default=3, help="rows of example slices")
    q.add_argument("--no-compute", action="store_true", help="only render results already in DIR")
    q.add_argument("--overwrite", action="store_true", help="replace an existing report")
    q.add_argument("--device", default="cpu")
    q.add_argument("--dry-run", action="store_true", help="print the resolved options and exit")
    _fid_args(q)

    q = sub.add_parser("train-segmenter", help="train maisi's small 3D segmenter on image/label pairs")
    q.add_argument("--data", required=True, metavar="PATH", help="pairs folder or datalist JSON")
    q.add_argument("--run-dir", required=True, metavar="DIR", help="output folder (gets segmenter/)")
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
    _common(q, out=False, device=True)

    p.set_defaults(func=run, _parser=p)


def _fid_options(args: argparse.Namespace):
    from maisi.evaluation.fid import FIDOptions

    return FIDOptions(
        spacing=tuple(args.spacing) if args.spacing else None,
        shape=tuple(args.shape) if args.shape else None,
        pad=not args.no_pad,
        crop=not args.no_crop,
        center_slice_ratio=args.center_slice_ratio,
        slice_step=args.slice_step,
        intensity=args.intensity,
        batch_size=args.batch_size,
    )


def _init_distributed(device: str) -> None:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1) so FID features are sharded over ranks."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        if device.startswith("cuda"):
            import torch

            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")


def _print(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _recon(args: argparse.Namespace) -> None:
    from maisi.evaluation.recon import evaluate_recon

    r = evaluate_recon(
        args.weights,
        args.data,
        device=args.device,
        max_cases=args.max_cases,
        intensity=args.intensity,
        out=args.out,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    _print({k: v.get("mean") for k, v in r["summary"].items()})


def _fid(args: argparse.Namespace) -> None:
    from maisi.evaluation.fid import compute_fid

    _init_distributed(args.device)
    r = compute_fid(
        args.real,
        args.synthetic,
        extractor=args.extractor,
        weights=args.extractor_weights,
        options=_fid_options(args),
        cache_dir=args.cache_dir,
        seed=args.seed,
        device=args.device,
        out=args.out,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0):  # rank 0 speaks for all
        _print({k: r[k] for k in ("fid_2p5d", "planes", "n_real", "n_synthetic", "extractor")})


def _consistency(args: argparse.Namespace) -> None:
    from maisi.evaluation.consistency import evaluate_consistency

    r = evaluate_consistency(
        args.pairs,
        args.segmenter,
        label_ids=args.labels,
        device=args.device,
        out=args.out,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    _print(
        {
            "mean_dice": r["mean_dice"],
            "group_mean_dice": r["group_mean_dice"],
            "labels": {v["name"]: v.get("mean") for v in r["labels"].values()},
            "groups": {k: v.get("mean") for k, v in r["groups"].items()},
        }
    )


def _qc(args: argparse.Namespace) -> None:
    from maisi.evaluation.qc import evaluate_qc

    r = evaluate_qc(args.pairs, out=args.out, overwrite=args.overwrite)
    _print(
        {
            "pass_rate": r["pass_rate"],
            "n_checked": r["n_checked"],
            "organs": {k: v["pass_rate"] for k, v in r["organs"].items()},
        }
    )


def _size(args: argparse.Namespace) -> None:
    from maisi.evaluation.size import evaluate_size

    r = evaluate_size(args.pairs, out=args.out, overwrite=args.overwrite)
    _print(
        {
            k: {
                "n": v["n"],
                "mean_abs_relative_error": v["abs_relative_error"].get("mean"),
                "spearman": v["spearman"],
            }
            for k, v in r["anatomy"].items()
        }
    )


def _memorization(args: argparse.Namespace) -> None:
    from maisi.evaluation.memorization import evaluate_memorization

    r = evaluate_memorization(
        args.synthetic,
        args.training,
        grid=args.grid,
        threshold=args.threshold,
        out=args.out,
        overwrite=args.overwrite,
    )
    _print({k: r[k] for k in ("n_flagged", "synthetic_nearest", "training_nearest")})


def _report(args: argparse.Namespace) -> None:
    from maisi.evaluation.report import build_report

    written = build_report(
        args.dir,
        real=args.real,
        synthetic=args.synthetic,
        training=args.training,
        segmenter=args.segmenter,
        fid_extractor=args.extractor,
        fid_weights=args.extractor_weights,
        fid_options=_fid_options(args),
        examples=args.examples,
        compute=not args.no_compute,
        device=args.device,
        overwrite=args.overwrite,
    )
    print(f"report: {written['html']}  (Markdown: {written['markdown']})")


def _train_segmenter(args: argparse.Namespace) -> None:
    from maisi.evaluation.segmenter import train_segmenter
    from maisi.labels import LARGE_ORGANS

    folder = train_segmenter(
        args.data,
        args.run_dir,
        steps=args.steps,
        seed=args.seed,
        labels=args.labels,
        groups={"large-organs": LARGE_ORGANS}[args.groups] if args.groups else None,
        spacing=args.spacing,
        roi_size=args.roi_size,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),
    )
    print(f"segmenter: {folder}")


HANDLERS = {
    "recon": _recon,
    "fid": _fid,
    "consistency": _consistency,
    "qc": _qc,
    "size": _size,
    "memorization": _memorization,
    "report": _report,
    "train-segmenter": _train_segmenter,
}


def run(args: argparse.Namespace) -> int:
    if args.evaluate_command is None:
        args._parser.print_help()
        return 2
    if args.dry_run:
        print(
            json.dumps(
                {k: v for k, v in vars(args).items() if k not in ("func", "_parser", "dry_run")},
                indent=2,
                default=str,
            )
        )
        return 0
    HANDLERS[args.evaluate_command](args)
    return 0
