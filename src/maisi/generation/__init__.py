"""Generation: request -> mask source -> latent sampling -> tiled decode -> quality check -> outputs.

Typical use::

    from maisi.config import load_config
    from maisi.generation import generate

    cfg = load_config(preset="tiny", overrides=["generate.weights=runs/tiny/model", "generate.num_samples=2"])
    samples = generate(cfg)          # writes cfg.generate.output_dir/sample_00000_image.nii.gz, ...
    samples[0].image, samples[0].label, samples[0].metadata
"""

from __future__ import annotations

from maisi.generation.masks import (
    FileMaskSource,
    MaskSample,
    MaskSource,
    PhantomMaskSource,
    make_mask_source,
)
from maisi.generation.pipeline import Sample, generate, stream
from maisi.generation.plan import Plan, describe_run, plan_generation
from maisi.generation.request import validate_request

__all__ = [
    "FileMaskSource",
    "MaskSample",
    "MaskSource",
    "PhantomMaskSource",
    "Plan",
    "Sample",
    "describe_run",
    "generate",
    "plan_generation",
    "stream",
    "make_mask_source",
    "validate_request",
]
