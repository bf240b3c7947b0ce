"""The JSON sidecar of a generated sample: everything needed to know how it was made and to make it again.

Keys: version, index, base seed, attempt and the derived seeds, the full request, a digest of what determines the
sample (request minus output folder/count/device, weights identity, index), scheduler and latent scale, weights
identity, mask source and what was changed to fit it, output grid, quality check with every attempt, requested vs
realised organ sizes, the volume of every label, timings, device, rank and warnings.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from maisi import labels
from maisi.config.schema import GenerateConfig
from maisi.generation.masks.base import MaskSample
from maisi.generation.request import fov_warnings
from maisi.generation.seeds import derive_seed

#: request keys that do not change what a sample is (left out of the request digest)
NOT_IDENTITY = ("output_dir", "num_samples", "device", "preview")


def request_digest(gen: GenerateConfig, weights: dict[str, Any], index: int) -> str:
    """SHA-256 over what determines sample ``index``: the request (minus output folder / count) and the weights."""
    from maisi.config import to_dict

    request = {k: v for k, v in to_dict(gen).items() if k not in NOT_IDENTITY}
    blob = json.dumps({"request": request, "weights": weights, "index": index}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def organ_sizes(
    requested: dict[str, float], mask: MaskSample, label: np.ndarray
) -> tuple[dict[str, Any], dict[str, float]]:
    """Requested vs realised size of each requested organ, and the volume (mL) of every label present."""
    voxel_ml = float(np.prod(mask.spacing)) / 1000.0
    ids, counts = np.unique(label, return_counts=True)
    volumes = {labels.name_of(int(i)): round(float(c) * voxel_ml, 3) for i, c in zip(ids, counts) if i}
    sizes = {}
    for name, value in requested.items():
        facts = {"requested": value, **mask.requested.get(name, {})}
        facts.pop("relative", None)
        facts["realised_ml"] = volumes.get(name, 0.0)
        sizes[name] = facts
    return sizes, volumes


@dataclass
class Outcome:
    """What one sample ended with: its last attempt's mask, image and checks."""

    index: int
    attempt: int
    mask: MaskSample
    image: np.ndarray
    qc: dict[str, Any] | None
    history: list[dict[str, Any]]
    timings: dict[str, Any]


def build_sidecar(
    o: Outcome,
    *,
    gen: GenerateConfig,
    model_config: Any,
    weights: dict[str, Any],
    keep_ids: list[int],
    noise_source: str | None,
    device: str,
    rank: int,
    world: int,
) -> dict[str, Any]:
    """The sidecar content of one sample."""
    from maisi import __version__
    from maisi.config import to_dict

    label = o.mask.label
    sizes, volumes = organ_sizes(gen.organ_sizes, o.mask, label)
    seeds = {s: derive_seed(gen.seed, o.index, o.attempt, stream=s) for s in ("noise", "mask", "sampler")}
    if noise_source is not None:
        seeds["noise"] = None
    qc = o.qc
    return {
        "maisi_version": __version__,
        "index": o.index,
        "seed": gen.seed,
        "attempt": o.attempt,
        "seeds": seeds,
        "initial_noise": noise_source,
        "request": to_dict(gen),
        "request_digest": request_digest(gen, weights, o.index),
        "model": {
            "scheduler": to_dict(model_config.scheduler),
            "scale_factor": model_config.vae.scale_factor,
        },
        "weights": weights,
        "mask": {"source": o.mask.source, "info": o.mask.info, "changes": o.mask.changes},
        "output": {
            "size": list(label.shape),
            "spacing": list(o.mask.spacing),
            "affine": o.mask.affine.tolist(),
            "image_dtype": str(o.image.dtype),
            "label_ids": "MAISI",
            "keep_only": [labels.name_of(i) for i in keep_ids],
        },
        "qc": {
            "enabled": qc is not None,
            "passed": None if qc is None else qc["passed"],
            "organs": None if qc is None else qc["organs"],
            "attempts": o.history,
        },
        "organ_sizes": sizes,
        "volumes_ml": volumes,
        "timings_s": o.timings,
        "device": device,
        "dtype": gen.dtype,
        "rank": rank,
        "world_size": world,
        "warnings": fov_warnings(label.shape, o.mask.spacing) + o.mask.changes,
    }
