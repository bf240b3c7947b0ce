"""The JSON sidecar of a generated sample: everything needed to know how it was made and to make it again.

Keys: version, index, base seed, attempt and the seeds its draws used, the full request, a digest of what determines
the sample (request minus output folder/count/device, weights identity, index), scheduler and latent scale, weights
identity, mask source and what was changed to fit it, output grid, quality check with every attempt, requested vs
realised organ sizes, the volume of every label, timings, device, rank and warnings. Everything here was recorded
while the sample was made (:class:`Outcome`); nothing is derived again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from maisi import labels
from maisi.generation.masks.base import MaskSample


def organ_sizes(
    requested: dict[str, float], mask: MaskSample, label: np.ndarray
) -> tuple[dict[str, Any], dict[str, float]]:
    """Requested vs realised size of each requested organ, and the volume (mL) of every label present (none
    without a label map)."""
    voxel_ml = float(np.prod(mask.spacing)) / 1000.0
    ids, counts = np.unique(label, return_counts=True) if label is not None else ((), ())
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
    """What one sample ended with: its last attempt's mask, image, checks and the facts recorded on the way.

    Attributes:
        seeds: the seed of each random stream the last attempt drew from (None: a stream not drawn from).
        history: one record per attempt (``attempt``, ``passed``, ``mask_source``).
        warnings: what differs from the request or from the trained range (grid changes, field of view).
    """

    index: int
    attempt: int
    seeds: dict[str, int | None]
    mask: MaskSample
    image: np.ndarray
    qc: dict[str, Any] | None
    history: list[dict[str, Any]]
    timings: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def build_sidecar(o: Outcome, *, plan: Any, run: dict[str, Any]) -> dict[str, Any]:
    """The sidecar content of one sample.

    Args:
        plan: the run's :class:`~maisi.generation.plan.Plan`.
        run: facts of the run known once: ``model_config``, ``weights`` (identity), ``digest`` (this sample's),
            ``noise_source``.
    """
    from maisi import __version__
    from maisi.config import to_dict
    from maisi.data.intensity import unit_to_output

    gen, label = plan.request, o.mask.label
    sizes, volumes = organ_sizes(gen.organ_sizes, o.mask, label)
    qc = o.qc
    return {
        "maisi_version": __version__,
        "index": o.index,
        "seed": gen.seed,
        "attempt": o.attempt,
        "seeds": dict(o.seeds),
        "initial_noise": run["noise_source"],
        "request": to_dict(gen),
        "request_digest": run["digest"],
        "model": {
            "scheduler": to_dict(run["model_config"].scheduler),
            "scale_factor": run["model_config"].vae.scale_factor,
        },
        "weights": run["weights"],
        "mask": {"source": o.mask.source, "info": o.mask.info, "changes": o.mask.changes},
        "output": {
            "size": list(o.mask.shape),
            "spacing": list(o.mask.spacing),
            "affine": o.mask.affine.tolist(),
            "image_dtype": str(o.image.dtype),
            "intensity": unit_to_output(np.zeros(1, np.float32), plan.modality)[1],
            "modality": {"name": gen.modality, "id": plan.modality},
            "label_ids": "MAISI" if label is not None else None,
            "keep_only": [labels.name_of(i) for i in plan.keep_ids],
        },
        "qc": {
            "enabled": qc is not None,
            "reason": run.get("qc_reason"),
            "passed": None if qc is None else qc["passed"],
            "organs": None if qc is None else qc["organs"],
            "attempts": o.history,
        },
        "organ_sizes": sizes,
        "volumes_ml": volumes,
        "timings_s": o.timings,
        "device": plan.device,
        "dtype": gen.dtype,
        "memory": plan.memory.describe() if plan.memory is not None else None,
        "rank": plan.process.rank,
        "world_size": plan.process.world_size,
        "warnings": list(o.warnings),
    }
