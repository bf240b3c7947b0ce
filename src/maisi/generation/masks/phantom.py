"""Procedural phantoms (:mod:`maisi.data.phantom`) as a mask source, with relative organ/tumour sizes mapped onto
the phantom's physical ranges."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from maisi import labels
from maisi.generation.masks.base import MaskSample, as_label
from maisi.generation.seeds import derive_seed


def phantom_region(body_region: Sequence[str]) -> str:
    """The phantom's z-range for the requested body regions: chest, abdomen or chest-abdomen."""
    idx = {labels.region_index(r) for r in body_region} or {1}
    chest = bool(idx & {0, 1})
    abdomen = bool(idx & {2, 3})
    return "chest-abdomen" if chest and abdomen else "abdomen" if abdomen else "chest"


def phantom_size_request(
    organ_sizes: dict[str, float], anatomy: Sequence[str] = ()
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, Any]]]:
    """Translate relative sizes in [0, 1] into the phantom's physical request.

    An organ's relative size ``s`` maps linearly onto the phantom's population range of that organ:
    ``volume_ml = lo + s * (hi - lo)`` with ``(lo, hi) = maisi.data.phantom_anatomy.ORGAN_VOLUME_RANGE``; a
    tumour's onto its radius range (``TUMOR_SPECS``). A tumour named in ``anatomy`` without a size gets the
    middle radius. ``-1`` (unspecified) leaves the random draw.

    Returns:
        ``(organ_volumes_ml, tumor_radii_mm, requested facts for the sidecar)``.
    """
    from maisi.data.phantom_anatomy import ORGAN_VOLUME_RANGE, TUMOR_SPECS

    volumes, radii, facts = {}, {}, {}
    for name, s in organ_sizes.items():
        if not labels.size_is_set(s):
            continue
        if name in ORGAN_VOLUME_RANGE:
            lo, hi = ORGAN_VOLUME_RANGE[name]
            volumes[name] = lo + s * (hi - lo)
            facts[name] = {"relative": s, "requested_ml": round(volumes[name], 3), "range_ml": [lo, hi]}
        elif name in TUMOR_SPECS:
            lo, hi = TUMOR_SPECS[name][2]
            radii[name] = max(lo + s * (hi - lo), 0.5)
            facts[name] = {
                "relative": s,
                "requested_radius_mm": round(radii[name], 3),
                "range_radius_mm": [lo, hi],
            }
        else:  # a size slot the phantom cannot control
            facts[name] = {"relative": s, "note": "the phantom cannot control this size"}
    for name in anatomy:
        key = name.strip().lower()
        if key in TUMOR_SPECS and key not in radii:
            lo, hi = TUMOR_SPECS[key][2]
            radii[key] = 0.5 * (lo + hi)
    return volumes, radii, facts


class PhantomMaskSource:
    """Label maps of the procedural phantoms (:func:`maisi.data.phantom.make_phantom`) at the requested grid.

    Organ sizes map to the phantom's ``organ_volumes_ml`` (see :func:`phantom_size_request`); tumours are only
    those requested (by size or in ``anatomy``).
    """

    name = "phantom"

    def __init__(
        self,
        *,
        size: Sequence[int],
        spacing: Sequence[float],
        seed: int,
        body_region: Sequence[str] = ("chest",),
        organ_sizes: dict[str, float] | None = None,
        anatomy: Sequence[str] = (),
    ) -> None:
        self.size = tuple(int(s) for s in size)
        self.spacing = tuple(float(s) for s in spacing)
        self.seed = int(seed)
        self.region = phantom_region(body_region)
        self.volumes, self.radii, self.requested = phantom_size_request(dict(organ_sizes or {}), anatomy)

    def __call__(self, index: int, attempt: int = 0) -> MaskSample:
        from maisi.data.phantom import make_phantom

        mask_seed = derive_seed(self.seed, index, attempt, stream="mask")
        ph = make_phantom(
            size=self.size,
            spacing=self.spacing,
            region=self.region,
            seed=mask_seed,
            organ_volumes_ml=self.volumes or None,
            tumors=dict(self.radii),
            noise_hu=0.0,
        )
        info = {
            "seed": mask_seed,
            "region": self.region,
            "organ_volumes_ml": self.volumes,
            "tumor_radii_mm": self.radii,
        }
        return MaskSample(
            label=as_label(ph.label),
            affine=np.asarray(ph.affine, dtype=np.float64),
            spacing=self.spacing,  # type: ignore[arg-type]
            source=self.name,
            info=info,
            requested={k: dict(v) for k, v in self.requested.items()},
        )
