"""The evaluation report: one self-contained HTML file (also Markdown + PNG files) a person can read.

:func:`build_report` gathers the results in an evaluation folder — ``recon.json``, ``fid.json``,
``consistency.json``, ``qc.json`` (and ``qc_real.json``), ``size.json``, ``memorization.json``, as the
``maisi evaluate`` commands write them — computes the ones that are missing and can be computed from the inputs
given (FID with the chosen extractor, QC, size, memorisation, and consistency when a segmenter is given), and writes
``report.html``, ``report.md`` and ``report_files/*.png``. A section whose result is missing says which command
produces it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from maisi import labels as maisi_labels
from maisi.errors import MaisiError
from maisi.evaluation import plots
from maisi.evaluation.document import Section, cell, write_document
from maisi.evaluation.volumes import Case, find_cases

RESULT_FILES = {
    "recon": "recon.json",
    "fid": "fid.json",
    "consistency": "consistency.json",
    "qc": "qc.json",
    "qc_real": "qc_real.json",
    "size": "size.json",
    "memorization": "memorization.json",
}
SECTION_IDS = ("summary", "data", "recon", "fid", "consistency", "qc", "size", "memorization", "examples")


def _load(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None


def gather_results(
    out_dir: Path,
    *,
    real: str | os.PathLike | None,
    synthetic: str | os.PathLike | None,
    training: str | os.PathLike | None = None,
    segmenter: str | os.PathLike | None = None,
    fid_extractor: str = "random",
    fid_weights: str | os.PathLike | None = None,
    fid_options: Any = None,
    device: str = "cpu",
    compute: bool = True,
) -> dict[str, dict[str, Any] | None]:
    """Results found in ``out_dir``, computing (and saving) missing ones that the inputs allow."""
    from maisi.evaluation.consistency import evaluate_consistency
    from maisi.evaluation.fid import compute_fid
    from maisi.evaluation.memorization import evaluate_memorization
    from maisi.evaluation.qc import evaluate_qc
    from maisi.evaluation.size import evaluate_size

    training = training or real
    makers = {
        "fid": (
            real and synthetic,
            lambda p: compute_fid(
                real,
                synthetic,
                extractor=fid_extractor,
                weights=fid_weights,
                options=fid_options,
                cache_dir=out_dir / "fid_cache",
                device=device,
                out=p,
            ),
        ),
        "consistency": (
            synthetic and segmenter,
            lambda p: evaluate_consistency(synthetic, segmenter, device=device, out=p),
        ),
        "qc": (synthetic, lambda p: evaluate_qc(synthetic, out=p)),
        "qc_real": (real, lambda p: evaluate_qc(real, out=p)),
        "size": (synthetic, lambda p: evaluate_size(synthetic, out=p)),
        "memorization": (synthetic and training, lambda p: evaluate_memorization(synthetic, training, out=p)),
    }
    results: dict[str, dict[str, Any] | None] = {}
    for key, name in RESULT_FILES.items():
        path = out_dir / name
        results[key] = _load(path)
        if results[key] is None and compute and key in makers and makers[key][0]:
            if key in ("qc", "qc_real", "consistency") and not _has_labels(
                synthetic if key != "qc_real" else real
            ):
                continue
            results[key] = makers[key][1](path)
    return results


def _has_labels(source: Any) -> bool:
    try:
        return all(c.label is not None for c in find_cases(source))
    except MaisiError:
        return False


# ----------------------------------------------------------------------------------------------------------------
# sections


def _missing(section: Section, command: str) -> Section:
    section.note(f"Not computed. Run: {command}")
    return section


def _data_section(real: list[Case], synthetic: list[Case]) -> Section:
    from maisi.data.nifti import load_nifti

    s = Section("data", "Data")
    rows = []
    for name, cases in (("real", real), ("synthetic", synthetic)):
        if not cases:
            continue
        shapes, spacings = set(), set()
        for c in cases:
            v = load_nifti(c.image, kind="image")
            shapes.add("x".join(map(str, v.shape)))
            spacings.add("x".join(f"{x:.3g}" for x in v.spacing))
        rows.append(
            [
                name,
                len(cases),
                sum(c.label is not None for c in cases),
                ", ".join(sorted(shapes)[:3]),
                ", ".join(sorted(spacings)[:3]),
            ]
        )
    s.table(["set", "volumes", "with labels", "shapes (voxels)", "spacings (mm)"], rows)
    return s


def _recon_section(r: dict | None) -> Section:
    s = Section("recon", "Autoencoder reconstruction")
    if r is None:
        return _missing(s, "maisi evaluate recon --weights W --data D --out DIR/recon.json")
    rows = [
        [k, v.get("n"), v.get("mean"), v.get("std"), v.get("min"), v.get("max")]
        for k, v in r["summary"].items()
    ]
    s.table(["metric", "n", "mean", "std", "min", "max"], rows)
    s.note(f"weights: {r.get('weights')}; PSNR/SSIM on [0, 1] (CT window [-1000, 1000] HU).")
    return s


def _fid_section(r: dict | None) -> Section:
    s = Section("fid", "FID 2.5D")
    if r is None:
        return _missing(s, "maisi evaluate fid --real R --synthetic S --out DIR/fid.json")
    s.table(["plane", "FID"], [[p, v] for p, v in r["planes"].items()] + [["mean (FID 2.5D)", r["fid_2p5d"]]])
    s.note(
        f"extractor {r['extractor']}; {r['n_real']} real and {r['n_synthetic']} synthetic volumes; options "
        f"{json.dumps(r.get('options', {}))}"
    )
    if not r.get("comparable_to_published", False):
        s.note(
            "The weights-free extractor was used: values rank models on this data but are not comparable to "
            "published FIDs (give RadImageNet/ImageNet ResNet-50 weights for those)."
        )
    s.image(
        "fid_planes.png",
        plots.bar_png(list(r["planes"]), list(r["planes"].values()), title="FID per plane", ylabel="FID"),
        "FID of each plane's slice features.",
    )
    return s


def _consistency_section(r: dict | None) -> Section:
    s = Section("consistency", "Mask–image consistency (Dice of re-segmentation)")
    if r is None:
        return _missing(s, "maisi evaluate consistency --pairs S --segmenter SEG --out DIR/consistency.json")
    s.text(
        f"Mean Dice over labels: {cell(r['mean_dice']) if r.get('mean_dice') is not None else '—'}; "
        "over the large-organ groups: "
        f"{cell(r['group_mean_dice']) if r.get('group_mean_dice') is not None else '—'} "
        f"(segmenter: {r.get('segmenter')})."
    )
    if r["labels"]:
        rows = [
            [v["name"], v.get("n"), v.get("mean"), v.get("std"), v.get("min")] for v in r["labels"].values()
        ]
        s.table(["label", "n", "mean Dice", "std", "min"], rows)
    if r.get("groups"):
        s.table(["group", "n", "mean Dice"], [[k, v.get("n"), v.get("mean")] for k, v in r["groups"].items()])
    if r["labels"]:
        s.image(
            "consistency_dice.png",
            plots.bar_png(
                [v["name"] for v in r["labels"].values()],
                [v.get("mean", 0.0) for v in r["labels"].values()],
                title="Mean Dice per label",
                ylabel="Dice",
                ylim=(0.0, 1.0),
            ),
            "Dice between the segmenter's output on each generated image and its conditioning mask.",
        )
    return s


def _qc_section(r: dict | None, ref: dict | None) -> Section:
    s = Section("qc", "Organ intensity check (median HU)")
    if r is None:
        return _missing(s, "maisi evaluate qc --pairs S --out DIR/qc.json")
    rate = r.get("pass_rate")
    s.text(
        f"Pass rate (every checked organ within range): {'—' if rate is None else f'{rate:.1%}'} of "
        f"{r.get('n_checked')} volumes."
    )
    rows = []
    for organ, v in r["organs"].items():
        ref_rate = ref["organs"].get(organ, {}).get("pass_rate") if ref else None
        rows.append(
            [organ, v["n"], v["pass_rate"], v["median_hu"].get("median"), v["low"], v["high"], ref_rate]
        )
    s.table(["organ", "n", "pass rate", "median HU (median)", "low", "high", "real pass rate"], rows)
    if r["organs"]:
        s.image(
            "qc_pass_rate.png",
            plots.bar_png(
                list(r["organs"]),
                [v["pass_rate"] for v in r["organs"].values()],
                title="Pass rate per organ",
                ylabel="rate",
                ylim=(0.0, 1.0),
            ),
            "Fraction of synthetic volumes whose organ median HU lies in the real-CT range.",
        )
    return s


def size_sets(out_dir: Path, main: dict | None) -> dict[str, dict | None]:
    """The size results to report: ``size.json`` (key ``""``) and every ``size_<name>.json`` beside it (key
    ``name``), e.g. one per mask source of a size sweep."""
    sets: dict[str, dict | None] = {"": main}
    for path in sorted(out_dir.glob("size_*.json")):
        sets[path.stem[len("size_") :]] = _load(path)
    return sets


def _size_section(sets: dict[str, dict | None]) -> Section:
    s = Section("size", "Size control (requested vs realised)")
    found = {name: r for name, r in sets.items() if r is not None and r.get("anatomy")}
    if not found:
        return _missing(
            s,
            "maisi evaluate size --pairs S --out DIR/size.json (needs generation sidecars with organ_sizes)",
        )
    rows = [
        [
            name or "generated",
            k,
            v["n"],
            v["abs_relative_error"].get("mean"),
            v["realised_ml"].get("mean"),
            v.get("spearman"),
        ]
        for name, r in found.items()
        for k, v in r["anatomy"].items()
    ]
    s.table(
        ["set", "anatomy", "n", "mean |relative error|", "mean realised mL", "Spearman (request vs size)"],
        rows,
    )
    per_request = [
        [name or "generated", c["anatomy"], c.get("requested"), c.get("requested_ml"), c["realised_ml"]]
        for name, r in found.items()
        if name
        for c in sorted(r["cases"], key=lambda c: (c["anatomy"], c.get("requested") or 0.0))
    ]
    if per_request:
        s.table(["set", "anatomy", "requested (relative)", "requested mL", "realised mL"], per_request)
    for name, r in found.items():
        pts = [c for c in r["cases"] if c.get("requested_ml") is not None]
        if pts:
            s.image(
                f"size_scatter_{name}.png" if name else "size_scatter.png",
                plots.scatter_png(
                    [c["requested_ml"] for c in pts],
                    [c["realised_ml"] for c in pts],
                    title=f"Requested vs realised volume{f' ({name})' if name else ''}",
                    xlabel="requested (mL)",
                    ylabel="realised (mL)",
                    diagonal=True,
                    groups=[c["anatomy"] for c in pts],
                ),
                "Each point is one anatomy of one sample; the grey line is y = x.",
            )
    return s


def _memorization_section(r: dict | None) -> Section:
    s = Section("memorization", "Memorisation (nearest training volume)")
    if r is None:
        return _missing(
            s, "maisi evaluate memorization --synthetic S --training T --out DIR/memorization.json"
        )
    s.text(
        f"{r['n_flagged']} of {len(r['cases'])} synthetic volumes have a training volume with normalised "
        f"correlation >= {r['threshold']} (likely copies)."
    )
    train = r.get("training_nearest") or {}
    s.table(
        ["set", "n", "mean", "max"],
        [
            [
                "synthetic -> nearest training",
                r["synthetic_nearest"].get("n"),
                r["synthetic_nearest"].get("mean"),
                r["synthetic_nearest"].get("max"),
            ],
            ["training -> nearest other training", train.get("n"), train.get("mean"), train.get("max")],
        ],
    )
    s.table(
        ["synthetic", "nearest training", "correlation", "flagged"],
        [[c["name"], c["nearest"], c["correlation"], c["flagged"]] for c in r["cases"][:50]],
    )
    series = {"synthetic": [c["correlation"] for c in r["cases"]]}
    if r.get("training_nearest_values"):
        series["training (LOO)"] = r["training_nearest_values"]
    s.image(
        "memorization_hist.png",
        plots.histogram_png(series, title="Nearest-neighbour correlation", xlabel="normalised correlation"),
        "Synthetic volumes much closer to a training volume than training volumes are to each other suggest "
        "memorisation.",
    )
    return s


def _example_tiles(case: Case, tag: str) -> list[tuple[str, np.ndarray, tuple[float, float]]]:
    from maisi.data.nifti import load_nifti

    image = load_nifti(case.image, kind="image")
    label = load_nifti(case.label, kind="label", allow_empty=True).array if case.label is not None else None
    sx, sy, sz = image.spacing
    tiles = []
    for plane, spacing in (("axial", (sy, sx)), ("coronal", (sz, sx)), ("sagittal", (sz, sy))):
        if label is not None and np.any((label > 0) & (label != maisi_labels.BODY)):
            axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
            organ = (label > 0) & (label != maisi_labels.BODY)
            index = int(np.argmax(organ.sum(axis=tuple(a for a in range(3) if a != axis))))
        else:
            index = None
        sl = plots.display_slice(image.array, plane, index)
        lab = plots.display_slice(label, plane, index) if label is not None else None
        tiles.append((f"{tag} {case.name} {plane}", plots.slice_rgb(sl, lab), spacing))
    return tiles


def _examples_section(real: list[Case], synthetic: list[Case], count: int) -> Section:
    s = Section("examples", "Example slices (real | synthetic)")
    n = min(count, max(len(real), len(synthetic)))
    if n == 0:
        return _missing(s, "maisi evaluate report DIR --real R --synthetic S")
    tiles = []
    for i in range(n):
        for tag, cases in (("real", real), ("synth", synthetic)):
            if i < len(cases):
                tiles += _example_tiles(cases[i], tag)
            else:
                tiles += [(f"{tag} —", np.zeros((8, 8, 3), np.uint8), (1.0, 1.0))] * 3
    s.image(
        "examples.png",
        plots.panel_png(tiles, columns=6, tile_size=180),
        "Each row: a real volume (axial, coronal, sagittal) and a synthetic volume, at the slice with the most "
        "labelled organ voxels; labels blended in colour, body envelope not drawn; window [-400, 600] HU.",
    )
    return s


def _summary_section(results: dict[str, Any]) -> Section:
    s = Section("summary", "Summary")
    rows = []
    if results.get("recon"):
        summ = results["recon"]["summary"]
        rows += [
            ["reconstruction PSNR (dB)", summ["psnr"].get("mean")],
            ["reconstruction SSIM", summ["ssim"].get("mean")],
        ]
    if results.get("fid"):
        rows.append([f"FID 2.5D ({results['fid']['extractor']})", results["fid"]["fid_2p5d"]])
    if results.get("consistency"):
        for key, name in (
            ("mean_dice", "mean Dice (re-segmentation)"),
            ("group_mean_dice", "mean Dice, large organs (groups)"),
        ):
            if results["consistency"].get(key) is not None:
                rows.append([name, results["consistency"][key]])
    if results.get("qc"):
        rows.append(["organ HU pass rate", results["qc"].get("pass_rate")])
    if results.get("size") and results["size"].get("anatomy"):
        errs = [v["abs_relative_error"].get("mean") for v in results["size"]["anatomy"].values()]
        errs = [e for e in errs if e is not None]
        rows.append(["mean |relative size error|", float(np.mean(errs)) if errs else None])
    if results.get("memorization"):
        m = results["memorization"]
        rows.append(["flagged as copies", f"{m['n_flagged']} / {len(m['cases'])}"])
    s.table(["metric", "value"], rows or [["(no results)", None]])
    return s


def build_report(
    out_dir: str | os.PathLike,
    *,
    real: str | os.PathLike | None = None,
    synthetic: str | os.PathLike | None = None,
    training: str | os.PathLike | None = None,
    segmenter: str | os.PathLike | None = None,
    fid_extractor: str = "random",
    fid_weights: str | os.PathLike | None = None,
    fid_options: Any = None,
    examples: int = 3,
    compute: bool = True,
    device: str = "cpu",
    overwrite: bool = False,
    title: str = "maisi evaluation report",
) -> dict[str, Path]:
    """Write the report into ``out_dir`` (see the module docstring).

    Args:
        real: real (training or held-out) pairs folder; phantom folders work.
        synthetic: generated pairs folder (with sidecars for the size section).
        training: training set for memorisation (default ``real``).
        segmenter: segmenter for consistency (see :func:`maisi.evaluation.consistency.load_segmenter`).
        examples: rows of example slices.
        compute: compute missing results (False: only render what ``out_dir`` holds).
        overwrite: replace an existing report (result JSON files are reused, not recomputed).

    Returns:
        name -> written path (``html``, ``markdown`` and each PNG).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = gather_results(
        out,
        real=real,
        synthetic=synthetic,
        training=training,
        segmenter=segmenter,
        fid_extractor=fid_extractor,
        fid_weights=fid_weights,
        fid_options=fid_options,
        device=device,
        compute=compute,
    )
    real_cases = find_cases(real) if real else []
    synth_cases = find_cases(synthetic) if synthetic else []
    sections = [
        _summary_section(results),
        _data_section(real_cases, synth_cases),
        _recon_section(results["recon"]),
        _fid_section(results["fid"]),
        _consistency_section(results["consistency"]),
        _qc_section(results["qc"], results["qc_real"]),
        _size_section(size_sets(out, results["size"])),
        _memorization_section(results["memorization"]),
        _examples_section(real_cases, synth_cases, examples),
    ]
    subtitle = f"real: {real or '—'}; synthetic: {synthetic or '—'}"
    return write_document(out, title, sections, subtitle=subtitle, overwrite=overwrite)
