"""Size control: the organ and tumour sizes a generation request asked for against the sizes realised.

Read from each generated sample's JSON sidecar (``organ_sizes``: name -> ``{"requested": relative size in [0, 1],
"requested_ml"? , "requested_radius_mm"?, ...}``) and measured on its label map (voxel count x voxel volume).
A tumour request given as a radius is compared as the volume of that ball. Per anatomy the summary gives the
relative volume error where an absolute target exists, and the Spearman rank correlation between the relative
request and the realised volume (does asking for "bigger" give bigger?) where at least three samples differ.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from maisi import labels as maisi_labels
from maisi.evaluation.volumes import find_cases, summarize


def requested_ml(facts: dict[str, Any]) -> float | None:
    """Absolute volume target (mL) of one sidecar size entry, or None when only a relative size was given."""
    if facts.get("requested_ml") is not None:
        return float(facts["requested_ml"])
    if facts.get("requested_radius_mm") is not None:
        return 4.0 / 3.0 * math.pi * float(facts["requested_radius_mm"]) ** 3 / 1000.0
    return None


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None for fewer than 3 points or a constant input."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return None
    from scipy.stats import rankdata

    rx, ry = rankdata(x), rankdata(y)
    return float(np.corrcoef(rx, ry)[0, 1])


def evaluate_size(
    pairs: str | os.PathLike, *, out: str | os.PathLike | None = None, overwrite: bool = False
) -> dict[str, Any]:
    """Requested vs realised sizes of every sample with a sidecar that lists ``organ_sizes``.

    Returns:
        ``{"n", "anatomy": {name: {"n", "relative_error": summary, "spearman", ...}}, "cases": [...]}``.
    """
    from maisi.data.nifti import load_nifti

    rows = []
    for case in find_cases(pairs):
        sizes = case.read_sidecar().get("organ_sizes") or {}
        if not sizes or case.label is None:
            continue
        label = load_nifti(case.label, kind="label", allow_empty=True)
        voxel_ml = float(np.prod(label.spacing)) / 1000.0
        counts = np.bincount(label.array.ravel().astype(np.int64), minlength=256)
        for name, facts in sizes.items():
            facts = facts if isinstance(facts, dict) else {"requested": facts}
            realised = float(counts[maisi_labels.id_of(name)]) * voxel_ml
            target = requested_ml(facts)
            rows.append(
                {
                    "name": case.name,
                    "anatomy": name,
                    "requested": facts.get("requested"),
                    "requested_ml": target,
                    "realised_ml": round(realised, 4),
                    "relative_error": None if not target else (realised - target) / target,
                }
            )
    anatomy: dict[str, Any] = {}
    for name in sorted({r["anatomy"] for r in rows}):
        mine = [r for r in rows if r["anatomy"] == name]
        rel = [r["relative_error"] for r in mine if r["relative_error"] is not None]
        ranked = [
            (float(r["requested"]), r["realised_ml"])
            for r in mine
            if isinstance(r["requested"], int | float) and r["requested"] >= 0
        ]
        anatomy[name] = {
            "n": len(mine),
            "relative_error": summarize(rel),
            "abs_relative_error": summarize([abs(v) for v in rel]),
            "realised_ml": summarize([r["realised_ml"] for r in mine]),
            "spearman": spearman([a for a, _ in ranked], [b for _, b in ranked]),
        }
    result = {"pairs": str(pairs), "n": len({r["name"] for r in rows}), "anatomy": anatomy, "cases": rows}
    if out is not None:
        from maisi.io import write_json

        write_json(out, result, overwrite=overwrite)
    return result


#: a mask model "follows" a size slot when the mean over noise seeds of the Spearman correlation between requested
#: and realised volume reaches this
FOLLOWS_SIZES_SPEARMAN = 0.8


def slot_range_requests(weights: str | os.PathLike | None, anatomy: str = "liver", n: int = 5) -> list[float]:
    """``n`` relative sizes evenly spaced over the values of ``anatomy``'s size slot in the size-condition database
    beside ``weights`` (a mask model cannot be asked for sizes it never saw); 0.3-0.9 without one."""
    from maisi.generation.masks.model import find_size_conditions, load_size_conditions

    if anatomy not in maisi_labels.SIZE_SLOTS:
        raise ValueError(f"anatomy {anatomy!r} has no size slot; expected one of {maisi_labels.SIZE_SLOTS}")
    path = find_size_conditions(weights)
    seen = load_size_conditions(path)[:, maisi_labels.SIZE_SLOTS.index(anatomy)] if path else np.zeros(0)
    seen = seen[seen >= 0]
    lo, hi = (float(seen.min()), float(seen.max())) if len(seen) and seen.max() > seen.min() else (0.3, 0.9)
    return [round(float(v), 4) for v in np.linspace(lo, hi, n)]


def mask_model_size_response(
    model_set: Any,
    *,
    anatomy: str = "liver",
    sizes: list[float] | None = None,
    seeds: tuple[int, ...] = (0, 1),
    steps: int = 100,
    device: str = "cpu",
) -> dict[str, Any]:
    """Does the mask-generation model of ``model_set`` follow the size vector? Realised volume of ``anatomy`` over
    requested relative sizes, with the noise held fixed per seed.

    Each seed draws one noise latent, denoised (``steps`` DDPM steps) once per requested size, so only the request
    varies along a row. Maps are measured on the model's native grid.

    Args:
        sizes: requested values of the anatomy's slot; default :func:`slot_range_requests` of the weights.

    Returns:
        ``{"anatomy", "requested", "realised_ml": [per seed: [per size]], "spearman": [per seed], "mean_spearman",
        "follows_sizes", "threshold", "steps", "seeds"}``; ``follows_sizes`` is ``mean_spearman >=``
        :data:`FOLLOWS_SIZES_SPEARMAN` (a seed whose volumes do not vary counts as 0).
    """
    from maisi.generation.masks.model import ModelMaskSource

    if sizes is None:
        sizes = slot_range_requests(getattr(model_set, "root", None), anatomy)
    label_id = maisi_labels.id_of(anatomy)
    realised, rhos = [], []
    for seed in seeds:
        row = []
        for value in sizes:
            # size and spacing are those of a request's resampling, which is not done here
            src = ModelMaskSource(
                model_set,
                size=(1, 1, 1),
                spacing=(1.0, 1.0, 1.0),
                seed=seed,
                organ_sizes={anatomy: value},
                steps=steps,
                device=device,
            )
            label = src.decode(src.sample_latent(0))
            row.append(round(float((label == label_id).sum()) * src.native_spacing**3 / 1000.0, 3))
        realised.append(row)
        rho = spearman(list(sizes), row)
        rhos.append(0.0 if rho is None else rho)
    mean = float(np.mean(rhos))
    return {
        "anatomy": anatomy,
        "requested": list(sizes),
        "realised_ml": realised,
        "spearman": rhos,
        "mean_spearman": mean,
        "follows_sizes": mean >= FOLLOWS_SIZES_SPEARMAN,
        "threshold": FOLLOWS_SIZES_SPEARMAN,
        "steps": int(steps),
        "seeds": list(seeds),
    }
