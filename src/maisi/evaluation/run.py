"""One evaluation from the typed config (``cfg.evaluate``): :func:`evaluate` runs the one ``what`` names and
:func:`summary` gives the short form ``maisi evaluate`` prints. Each row of :data:`EVALUATIONS` says which
library function computes it, which config fields it needs, and what its summary holds."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from maisi.config.schema import Config, EvaluateConfig
from maisi.errors import ConfigError


@dataclass(frozen=True)
class Evaluation:
    """An evaluation: the fields it requires, the call computing it, and its summary."""

    requires: tuple[str, ...]
    compute: Callable[[EvaluateConfig, bool], dict[str, Any]]
    summarize: Callable[[dict[str, Any]], Any]


def _fid_options(e: EvaluateConfig):
    from maisi.evaluation.fid import FIDOptions

    f = e.fid
    return FIDOptions(
        spacing=f.spacing,
        shape=f.shape,
        pad=f.pad,
        crop=f.crop,
        center_slice_ratio=f.center_slice_ratio,
        slice_step=f.slice_step,
        intensity=f.intensity,
        batch_size=f.batch_size,
    )


def _recon(e: EvaluateConfig, progress: bool) -> dict[str, Any]:
    from maisi.evaluation.recon import evaluate_recon

    return evaluate_recon(
        e.weights,
        e.data,
        device=e.device,
        max_cases=e.max_cases,
        intensity=e.intensity,
        out=e.out,
        overwrite=e.overwrite,
        progress=progress,
    )


def _fid(e: EvaluateConfig, progress: bool) -> dict[str, Any]:
    from maisi.evaluation.fid import compute_fid

    _join_process_group(e.device)
    return compute_fid(
        e.real,
        e.synthetic,
        extractor=e.fid.extractor,
        weights=e.fid.extractor_weights,
        options=_fid_options(e),
        cache_dir=e.fid.cache_dir,
        seed=e.fid.seed,
        device=e.device,
        out=e.out,
        overwrite=e.overwrite,
        progress=progress,
    )


def _consistency(e: EvaluateConfig, progress: bool) -> dict[str, Any]:
    from maisi.evaluation.consistency import evaluate_consistency

    return evaluate_consistency(
        e.synthetic,
        e.segmenter,
        label_ids=list(e.labels) or None,
        label_set=e.label_set,
        device=e.device,
        out=e.out,
        overwrite=e.overwrite,
        progress=progress,
    )


def _qc(e: EvaluateConfig, progress: bool) -> dict[str, Any]:
    from maisi.evaluation.qc import evaluate_qc

    return evaluate_qc(e.synthetic, label_set=e.label_set, out=e.out, overwrite=e.overwrite)


def _size(e: EvaluateConfig, progress: bool) -> dict[str, Any]:
    from maisi.evaluation.size import evaluate_size

    return evaluate_size(e.synthetic, out=e.out, overwrite=e.overwrite)


def _memorization(e: EvaluateConfig, progress: bool) -> dict[str, Any]:
    from maisi.evaluation.memorization import evaluate_memorization

    return evaluate_memorization(
        e.synthetic, e.training, grid=e.grid, threshold=e.threshold, out=e.out, overwrite=e.overwrite
    )


def _report(e: EvaluateConfig, progress: bool) -> dict[str, Any]:
    from maisi.evaluation.report import build_report

    written = build_report(
        e.dir,
        real=e.real,
        synthetic=e.synthetic,
        training=e.training,
        segmenter=e.segmenter,
        fid_extractor=e.fid.extractor,
        fid_weights=e.fid.extractor_weights,
        fid_options=_fid_options(e),
        examples=e.examples,
        compute=e.compute,
        device=e.device,
        overwrite=e.overwrite,
    )
    return {k: str(v) for k, v in written.items()}


EVALUATIONS: dict[str, Evaluation] = {
    "recon": Evaluation(
        ("weights", "data"), _recon, lambda r: {k: v.get("mean") for k, v in r["summary"].items()}
    ),
    "fid": Evaluation(
        ("real", "synthetic"),
        _fid,
        lambda r: {k: r[k] for k in ("fid_2p5d", "planes", "n_real", "n_synthetic", "extractor")},
    ),
    "consistency": Evaluation(
        ("synthetic", "segmenter"),
        _consistency,
        lambda r: {
            "mean_dice": r["mean_dice"],
            "group_mean_dice": r["group_mean_dice"],
            "labels": {v["name"]: v.get("mean") for v in r["labels"].values()},
            "groups": {k: v.get("mean") for k, v in r["groups"].items()},
        },
    ),
    "qc": Evaluation(
        ("synthetic",),
        _qc,
        lambda r: {
            "pass_rate": r["pass_rate"],
            "n_checked": r["n_checked"],
            "organs": {k: v["pass_rate"] for k, v in r["organs"].items()},
        },
    ),
    "size": Evaluation(
        ("synthetic",),
        _size,
        lambda r: {
            k: {
                "n": v["n"],
                "mean_abs_relative_error": v["abs_relative_error"].get("mean"),
                "spearman": v["spearman"],
            }
            for k, v in r["anatomy"].items()
        },
    ),
    "memorization": Evaluation(
        ("synthetic", "training"),
        _memorization,
        lambda r: {k: r[k] for k in ("n_flagged", "synthetic_nearest", "training_nearest")},
    ),
    "report": Evaluation(("dir",), _report, lambda r: r),
}


def evaluate(cfg: Config, *, progress: bool = False) -> dict[str, Any]:
    """Run ``cfg.evaluate.what`` and return its full result (also written to ``cfg.evaluate.out`` when set).

    Raises:
        ConfigError: a field the evaluation needs is unset (named).
    """
    e = cfg.evaluate
    spec = EVALUATIONS[e.what]
    missing = [f"evaluate.{name}" for name in spec.requires if not getattr(e, name)]
    if missing:
        raise ConfigError(f"maisi evaluate {e.what} needs {', '.join(missing)}")
    return spec.compute(e, progress)


def summary(what: str, result: dict[str, Any]) -> Any:
    """The short form of a result that ``maisi evaluate`` prints."""
    return EVALUATIONS[what].summarize(result)


def _join_process_group(device: str) -> None:
    """Join the process group ``torchrun`` describes (WORLD_SIZE > 1) so FID features are sharded over ranks."""
    import torch.distributed as dist

    from maisi.runtime import process_env, resolve_device

    env = process_env()
    if env.world_size > 1 and dist.is_available() and not dist.is_initialized():
        dev = resolve_device(device, env.local_rank)
        if dev.type == "cuda":
            import torch

            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")


def is_main_process() -> bool:
    """False on the torchrun ranks other than 0 (which speaks for all)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized() and dist.get_rank() != 0)
