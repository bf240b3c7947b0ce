"""Evaluation of synthetic data: reconstruction metrics, FID 2.5D, mask-image consistency, organ HU check, size
control, memorisation, and a readable report. Command line: ``maisi evaluate``."""

from __future__ import annotations

from maisi.evaluation.consistency import (
    dice,
    dice_per_group,
    dice_per_label,
    evaluate_consistency,
    load_segmenter,
)
from maisi.evaluation.fid import FIDOptions, compute_fid, fid_2p5d, fid_from_features, frechet_distance
from maisi.evaluation.memorization import evaluate_memorization
from maisi.evaluation.metrics import image_metrics, ms_ssim, psnr, ssim
from maisi.evaluation.qc import evaluate_qc
from maisi.evaluation.recon import evaluate_recon
from maisi.evaluation.report import build_report
from maisi.evaluation.segmenter import Segmenter
from maisi.evaluation.size import evaluate_size

__all__ = [
    "FIDOptions",
    "Segmenter",
    "build_report",
    "compute_fid",
    "dice",
    "dice_per_group",
    "dice_per_label",
    "evaluate_consistency",
    "evaluate_memorization",
    "evaluate_qc",
    "evaluate_recon",
    "evaluate_size",
    "fid_2p5d",
    "fid_from_features",
    "frechet_distance",
    "image_metrics",
    "load_segmenter",
    "ms_ssim",
    "psnr",
    "ssim",
]
