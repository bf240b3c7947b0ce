"""``maisi generate``: image/label pairs from a request, a user mask, a mask database, the mask model or phantoms.

Each option maps onto one field of :class:`maisi.config.GenerateConfig` (``--output-size`` -> ``output_size``,
...); ``--config`` also accepts NVIDIA's ``config_infer.json``. The command builds the config and calls
:func:`maisi.generation.generate`.
"""

from __future__ import annotations

import argparse
from typing import Any

from maisi.cli.common import (
    add_config_args,
    add_label_args,
    add_progress_args,
    label_overlay,
    print_config,
    resolve_config,
    show_progress,
)
from maisi.errors import RequestError

#: option dest -> GenerateConfig field, for options whose value is copied as given
_FIELDS = {
    "weights": "weights",
    "output_size": "output_size",
    "spacing": "spacing",
    "body_region": "body_region",
    "anatomy": "anatomy",
    "mask": "mask",
    "mask_source": "mask_source",
    "mask_database": "mask_database",
    "keep_only": "keep_only",
    "num_samples": "num_samples",
    "steps": "steps",
    "mask_steps": "mask_steps",
    "mask_guidance": "mask_guidance",
    "guidance": "guidance",
    "controlnet_scale": "controlnet_scale",
    "modality": "modality",
    "seed": "seed",
    "device": "device",
    "dtype": "dtype",
    "output_dir": "output_dir",
    "initial_noise": "initial_noise",
    "qc_retries": "qc_retries",
    "decode_window": "decode_window",
    "decode_overlap": "decode_overlap",
    "decode_splits": "decode_splits",
    "max_memory": "max_memory",
    "batch_size": "batch_size",
}


def register(subparsers) -> None:
    from maisi.generation.mr import describe_rules

    p = subparsers.add_parser(
        "generate",
        help="generate CT images with paired label maps (or MR images)",
        description="Generate CT image/label pairs, or images alone (--mask-source none; MR). Options override "
        "--config files (ours or config_infer.json).",
        epilog=describe_rules(),
    )
    add_config_args(p)
    g = p.add_argument_group("request")
    g.add_argument(
        "--weights",
        metavar="NAME|DIR",
        help="demo, rflow-ct, ddpm-ct, rflow-mr, rflow-mr-brain (after maisi download) or a folder; without "
        "--preset the request defaults follow them",
    )
    g.add_argument(
        "--output-size", nargs=3, type=int, metavar=("X", "Y", "Z"), help="voxels, multiples of 32"
    )
    g.add_argument("--spacing", nargs=3, type=float, metavar=("SX", "SY", "SZ"), help="voxel size in mm")
    g.add_argument("--body-region", nargs="+", metavar="REGION", help="head, chest, abdomen, lower")
    g.add_argument(
        "--anatomy",
        nargs="+",
        metavar="NAME",
        help="anatomy a database mask must contain (label_dict names; official CT presets: 'lung tumor', as in the "
        "official config_infer.json); 'none' asks for none (and so for a mask without tumours)",
    )
    g.add_argument(
        "--organ-size",
        nargs="+",
        metavar="NAME=VALUE",
        help='relative sizes, e.g. liver=0.5 "hepatic tumor"=0.3',
    )
    g.add_argument(
        "--demographics",
        nargs="+",
        metavar="NAME=VALUE",
        help="patient demographics for the v2 mask generator: age=63 sex=F weight=70 (kg) or bmi=24, height=175 "
        "(cm; untrained, flagged); trained ranges age 19-87, weight 22-144, BMI 18-63; not weight with bmi",
    )
    g.add_argument("--mask", metavar="FILE", help="your own label map (MAISI or TotalSegmentator ids)")
    g.add_argument(
        "--mask-source",
        choices=["auto", "file", "database", "model", "phantom", "none"],
        help="where the label map comes from; none: the image alone (no ControlNet, no label map)",
    )
    g.add_argument("--mask-database", metavar="DIR|JSON", help="mask folder indexed by `maisi masks index`")
    add_label_args(g, defaults=False)
    g.add_argument("--verbose", action="store_true", help="print the mapping table of a --mask file")
    g.add_argument("--keep-only", nargs="+", metavar="NAME", help="write only these labels (MAISI ids kept)")
    s = p.add_argument_group("sampling")
    s.add_argument("--num-samples", type=int, metavar="N")
    s.add_argument("--steps", type=int, metavar="K", help="sampling steps (rflow default 30)")
    s.add_argument(
        "--mask-steps",
        type=int,
        metavar="K",
        help="mask-generator steps (default: v1 1000 DDPM, v2 100 rflow)",
    )
    s.add_argument(
        "--mask-guidance", type=float, metavar="S", help="v2 mask generator's guidance scale (default 2.0)"
    )
    s.add_argument("--guidance", type=float, metavar="S", help="classifier-free guidance scale (0 = off)")
    s.add_argument(
        "--controlnet-scale",
        type=float,
        metavar="S",
        help="ControlNet residual scale (default 1 = as trained)",
    )
    s.add_argument("--modality", metavar="NAME", help="modality class (default ct)")
    s.add_argument("--seed", type=int, metavar="S")
    s.add_argument("--initial-noise", metavar="FILE", help="fixed initial latent (.pt, .npy or .safetensors)")
    s.add_argument(
        "--decode-window",
        nargs=3,
        type=int,
        metavar=("X", "Y", "Z"),
        help="decode window (latent voxels; default: the memory plan's, the whole latent where it fits; official "
        "48 48 48)",
    )
    s.add_argument(
        "--decode-overlap", type=float, metavar="F", help="window overlap (default 0.4; official 0.6666)"
    )
    s.add_argument(
        "--decode-splits",
        type=int,
        metavar="N",
        help="slabs the VAE decoder runs in (default: fewest that fit)",
    )
    s.add_argument("--batch-size", type=int, metavar="B", help="samples sampled together")
    r = p.add_argument_group("running and output")
    r.add_argument(
        "--device",
        metavar="auto|cpu|cuda|mps",
        help="default auto: this process's GPU where CUDA is available",
    )
    r.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="default auto: float16 on a CUDA GPU (the official precision), float32 elsewhere",
    )
    r.add_argument(
        "--max-memory",
        metavar="SIZE",
        help="memory the run may use on its device, e.g. 16GB (default: free GPU memory / available RAM); the "
        "decode is planned to fit, a request that cannot is refused at once; --dry-run shows the plan",
    )
    r.add_argument("--output-dir", metavar="DIR")
    r.add_argument("--qc-retries", type=int, metavar="N", help="new attempts when the quality check fails")
    r.add_argument("--no-qc", action="store_true", help="skip the organ median-HU quality check")
    r.add_argument("--no-preview", action="store_true", help="do not write PNG previews")
    add_progress_args(r)
    x = p.add_argument_group("training-set formats (written beside the NIfTI samples)")
    x.add_argument(
        "--format",
        choices=["nifti", "nnunet", "monai", "dicom"],
        help="also write each sample as an nnU-Net v2 dataset case, a MONAI datalist entry or a DICOM CT series + "
        "SEG (default nifti: the run folder only)",
    )
    x.add_argument(
        "--export-dir", metavar="DIR", help="where the format goes (default: by format, see maisi export)"
    )
    x.add_argument("--dataset-id", type=int, metavar="N", help="nnU-Net dataset id (1-999)")
    x.add_argument("--dataset-name", metavar="NAME", help="nnU-Net dataset name (no spaces)")
    p.set_defaults(func=run)


def parse_organ_sizes(items: list[str]) -> dict[str, float]:
    """``["liver=0.5", "hepatic tumor=0.3"]`` -> ``{"liver": 0.5, "hepatic tumor": 0.3}``."""
    out = {}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep or not name.strip():
            raise RequestError(f"--organ-size: expected NAME=VALUE, got {item!r}")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise RequestError(f"--organ-size: {item!r}: {value!r} is not a number") from None
    return out


def _number_or_text(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def overlay_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The options the user gave, as a config overlay."""
    gen: dict[str, Any] = {f: getattr(args, a) for a, f in _FIELDS.items() if getattr(args, a) is not None}
    if args.anatomy is not None and [a.lower() for a in args.anatomy] == ["none"]:
        gen["anatomy"] = []
    if args.organ_size is not None:
        gen["organ_sizes"] = parse_organ_sizes(args.organ_size)
    if args.demographics is not None:
        from maisi.generation.masks.conditions_v2 import parse_demographics

        gen["demographics"] = {name: _number_or_text(v) for name, v in parse_demographics(args.demographics)}
    if args.no_qc:
        gen["qc"] = False
    if args.no_preview:
        gen["preview"] = False
    export = {
        k: v
        for k, v in (
            ("format", args.format),
            ("output", args.export_dir),
            ("dataset_id", args.dataset_id),
            ("dataset_name", args.dataset_name),
        )
        if v is not None
    }
    if export:
        gen["export"] = export
    if args.mask is not None and (args.output_size is not None or args.spacing is not None):
        gen["fit_mask"] = True  # a grid asked for beside a mask: fit the mask to it
    out: dict[str, Any] = {"generate": gen} if gen else {}
    if label_overlay(args):
        out["data"] = label_overlay(args)
    return out


def open_export(gen: Any):
    """The exporter of ``generate.export`` (None for plain NIfTI), opened and checked before the run."""
    if gen.export.format == "nifti":
        return None
    from maisi.export import default_output, open_exporter

    e = gen.export
    return open_exporter(
        e.format,
        e.output or default_output(e.format, gen.output_dir),
        dataset_id=e.dataset_id,
        dataset_name=e.dataset_name,
        keep_only=gen.keep_only if e.format == "nnunet" else (),
        modality=gen.modality,
    )


def run(args: argparse.Namespace) -> int:
    from maisi.generation import describe_run, stream

    if args.preset is None and not args.config:
        from maisi.generation.weights import weights_preset

        # the request defaults that go with the weights: demo (128^3 at 3 mm), an official variant's
        args.preset = weights_preset(args.weights or "demo")
    cfg = resolve_config(args, overlay_from_args(args))
    if args.dry_run:
        print_config(cfg, plan=describe_run(cfg))
        return 0
    report = _Report(
        cfg, verbose=args.verbose, exporter=open_export(cfg.generate)
    )  # bad dataset: before work

    def say_plan(plan: Any) -> None:
        print(f"{plan.memory.summary()}; computing in {plan.request.dtype}", flush=True)

    for _ in stream(
        cfg, progress=show_progress(args), keep_arrays=False, on_written=report, on_plan=say_plan
    ):
        pass
    if report.exporter is not None:
        print(f"{cfg.generate.export.format}: {report.exporter.finish()}")
    if not report.made:
        print(f"nothing to do: every sample is already in {cfg.generate.output_dir}")
    return 0


class _Report:
    """Says each sample (and its label mapping with ``--verbose``) as soon as its files are complete, and adds it
    to the export; called from the writer's thread, one sample at a time."""

    def __init__(self, cfg: Any, *, verbose: bool, exporter: Any) -> None:
        self.cfg, self.verbose, self.exporter = cfg, verbose, exporter
        self.made, self.shown = 0, set()

    def __call__(self, s: Any) -> None:
        mapping = s.metadata["mask"]["info"].get("label_mapping")
        if self.verbose and mapping is not None and mapping.get("file") not in self.shown:
            from maisi.data.labelmaps import format_report

            self.shown.add(mapping.get("file"))
            print(format_report(mapping))
        qc = s.metadata["qc"]
        state = "qc off" if not qc["enabled"] else "qc passed" if qc["passed"] else "qc FAILED (kept)"
        print(f"sample {s.index}: {s.paths.get('image')} {s.paths.get('label')} ({state})", flush=True)
        if self.exporter is not None:
            from maisi.export import Sample as ExportSample

            self.exporter.add(ExportSample.from_files(s.paths["image"], s.paths["label"], s.metadata))
        self.made += 1
