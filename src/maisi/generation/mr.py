"""The official MR request rules: which sizes and spacings an MR request may have, which modality names go with
which weights, and the field of view the MR models were trained on.

Facts, all from NVIDIA-Medtech/NV-Generate-CTMR (facts only, no code taken):

* Sizes and spacing, ``scripts/sample_mask.py`` ``check_input_mr`` (the rules the repository's docs and skills
  state for both ``rflow-mr`` and ``rflow-mr-brain``): z in {128, 256}; z = 128 -> x = y in {128, 256, 384, 512};
  z = 256 -> (x, y) in {(128, 256), (256, 128), (256, 256)}; every spacing in [0.4, 5.0] mm.
* Modalities, ``configs/modality_mapping.json``: ids >= 8 are MR (the samplers' own rule). The brain model covers
  T1, T2, FLAIR, SWI whole-brain and skull-stripped (README §2.2) and MRA (the per-plane FOV table of
  ``skills/infer_image-only.md`` counts MRA training images); the body model covers ``mri``, T1, T2 and FLAIR
  (``docs/inference.md`` "MR Modality Control"; contrast-enhanced MRI is not supported).
* Fields of view: the median training FOV per (contrast, acquisition plane) of ``rflow-mr-brain``
  (``skills/infer_image-only.md``, MR-RATE) and per (body region, contrast) of ``rflow-mr`` (``docs/inference.md``).
  The repository calls these recommendations ("stay close to them"), the validator accepts other FOVs: here a FOV
  far from every row of the requested contrast is a warning naming the nearest row and the spacing that gives it.
* Guidance: MR needs classifier-free guidance on the modality class; at 0 the output does not commit to the
  requested contrast (``skills/infer_image-only.md``, official issue #29); the shipped configs use 15 (``rflow-mr``)
  and 10 (``rflow-mr-brain``).

Where they are enforced: :func:`check_modality_weights` from :func:`maisi.generation.plan.plan_generation`, first
(the modality against the weights, MR weights image-only; the FOV, contrast and guidance warnings), then
:func:`check_mr_grid` from :func:`maisi.generation.request.validate_request` (every request with an MR modality). Every error is one line naming the
nearest valid request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from maisi import labels, resources
from maisi.data.intensity import is_mr
from maisi.errors import RequestError

if TYPE_CHECKING:
    from maisi.config.schema import GenerateConfig
    from maisi.generation.weights import WeightsInfo

#: every spacing of an MR request, mm (``check_input_mr``)
MR_SPACING_MM = (0.4, 5.0)
#: the sizes ``check_input_mr`` accepts, (X, Y, Z)
MR_SIZES: tuple[tuple[int, int, int], ...] = (
    *((n, n, 128) for n in (128, 256, 384, 512)),
    (128, 256, 256),
    (256, 128, 256),
    (256, 256, 256),
)
#: the official MR variants
MR_VARIANTS = ("rflow-mr", "rflow-mr-brain")
#: a requested FOV further than this (relative, on any axis) from every training row of its contrast is warned about
FOV_TOLERANCE = 0.25


@dataclass(frozen=True)
class FovRow:
    """One median training field of view: what it is (``"T1 axial"``, ``"prostate T2"``) and the FOV in mm."""

    name: str
    contrast: str
    fov_mm: tuple[float, float, float]


#: rflow-mr-brain: median FOV per (contrast, plane) over MR-RATE (``skills/infer_image-only.md``)
BRAIN_FOV: tuple[FovRow, ...] = tuple(
    FovRow(f"{contrast} {plane}", contrast, fov)
    for contrast, rows in {
        "T1": ((240, 240, 174), (176, 250, 250), (240, 200, 240)),
        "T2": ((240, 240, 158), (162, 240, 240), (200, 180, 200)),
        "FLAIR": ((250, 250, 175), (176, 250, 250), (250, 200, 250)),
        "SWI": ((230, 230, 145), (140, 230, 230), (230, 155, 230)),
        "MRA": ((220, 220, 158), (158, 250, 250), (240, 179, 240)),
    }.items()
    for plane, fov in zip(("axial", "sagittal", "coronal"), rows)
)
#: rflow-mr: median FOV per (body region, contrast) of its training data (``docs/inference.md``)
BODY_FOV: tuple[FovRow, ...] = (
    FovRow("brain T1", "T1", (160.0, 256.0, 256.0)),
    FovRow("brain T2", "T2", (240.0, 240.0, 162.5)),
    FovRow("brain FLAIR", "FLAIR", (199.9, 250.0, 250.0)),
    FovRow("prostate T2", "T2", (170.0, 170.0, 90.0)),
    FovRow("breast T1", "T1", (174.0, 200.0, 200.0)),
    FovRow("abdomen T1", "T1", (380.0, 308.8, 288.0)),
    FovRow("abdomen T2", "T2", (350.0, 350.0, 245.6)),
)
#: modality names each MR variant is documented for (``mri``: no contrast specified)
DOCUMENTED: Mapping[str, tuple[str, ...]] = {
    "rflow-mr-brain": (
        "mri",
        "mri_t1",
        "mri_t2",
        "mri_flair",
        "mri_swi",
        "mri_mra",
        "mri_t1_skull_stripped",
        "mri_t2_skull_stripped",
        "mri_flair_skull_stripped",
        "mri_swi_skull_stripped",
        "mri_mra_skull_stripped",
    ),
    "rflow-mr": ("mri", "mri_t1", "mri_t2", "mri_flair"),
}
#: the contrast of a modality name, for the FOV tables (names not listed match every row)
_CONTRASTS = {"t1": "T1", "t2": "T2", "flair": "FLAIR", "swi": "SWI", "mra": "MRA"}


def contrast_of(name: str) -> str | None:
    """``"mri_t2_skull_stripped"`` -> ``"T2"``; None for ``mri`` and names of other contrasts."""
    parts = name.split("_")
    return _CONTRASTS.get(parts[1]) if len(parts) > 1 and parts[0] == "mri" else None


# ----------------------------------------------------------------------------------------------------------------
# sizes and spacing


def _fmt(values: Sequence[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def nearest_mr_size(size: Sequence[int]) -> tuple[int, int, int]:
    """The allowed MR size closest to ``size`` (sum of per-axis log2 ratios; ties go to the larger volume)."""

    def cost(valid: tuple[int, int, int]) -> tuple[float, int]:
        ratio = sum(abs(math.log2(max(int(n), 1) / v)) for n, v in zip(size, valid))
        return round(ratio, 9), -math.prod(valid)

    return min(MR_SIZES, key=cost)


def _clip_spacing(spacing: Sequence[float]) -> list[float]:
    lo, hi = MR_SPACING_MM
    return [round(min(max(float(s), lo), hi), 4) if math.isfinite(s) else lo for s in spacing]


def check_mr_grid(
    size: Sequence[int], spacing: Sequence[float], *, source: str = "MR request"
) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """An MR request's size and spacing under the official rules; the error is one line naming the nearest valid
    request (for a size, the spacing that keeps the requested field of view).

    Raises:
        RequestError: a size outside :data:`MR_SIZES` or a spacing outside :data:`MR_SPACING_MM`.
    """
    if len(size) != 3 or len(spacing) != 3:
        raise RequestError(
            f"{source}: expected 3 sizes and 3 spacings (X Y Z), got {list(size)}, {list(spacing)}"
        )
    size_t = tuple(int(n) for n in size)
    values = tuple(float(s) for s in spacing)
    lo, hi = MR_SPACING_MM
    if size_t not in MR_SIZES:
        valid = nearest_mr_size(size_t)
        same_fov = _clip_spacing([s * n / v for s, n, v in zip(values, size_t, valid)])
        raise RequestError(
            f"{source}: output_size {list(size_t)} is not an MR size (Z 128 with X = Y in 128, 256, 384 or 512; Z "
            f"256 with X x Y = 128 x 256, 256 x 128 or 256 x 256); nearest valid request --output-size "
            f"{' '.join(map(str, valid))} --spacing {' '.join(f'{s:g}' for s in same_fov)} (same field of view)"
        )
    for axis, s in enumerate(values):
        if not (math.isfinite(s) and lo <= s <= hi):
            raise RequestError(
                f"{source}: spacing {_fmt(values)}: axis {'XYZ'[axis]} = {s:g} mm is outside the MR range "
                f"[{lo:g}, {hi:g}] mm; nearest valid spacing {_fmt(_clip_spacing(values))}"
            )
    return size_t, values  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------------------
# modality and weights


def weights_modality(info: WeightsInfo) -> str | None:
    """``"mr"`` or ``"ct"``: what the weights generate, from positive evidence only; None when unknown.

    Official folders: their variant (:data:`maisi.networks.variants.VARIANTS`). maisi folders: the modality ids the
    diffusion UNet declares it was trained on (its ``modalities`` extra), when it declares them.
    """
    from maisi.networks.variants import VARIANTS

    if info.layout == "official" and info.variant in VARIANTS:
        return VARIANTS[info.variant].modality
    declared = [int(m) for m in info.extras.get("unet", {}).get("modalities", ()) if int(m) != 0]
    if declared and all(is_mr(m) for m in declared):
        return "mr"
    if declared and not any(is_mr(m) for m in declared):
        return "ct"
    return None


def mr_variant(info: WeightsInfo, preset: str | None = None) -> str | None:
    """The official MR variant whose documented facts apply: the weights' own, else the preset's; None otherwise."""
    if info.layout == "official" and info.variant in MR_VARIANTS:
        return info.variant
    return preset if preset in MR_VARIANTS else None


def _weights_name(info: WeightsInfo) -> str:
    return f"{info.variant} weights" if info.variant else f"the weights in {info.root}"


def check_modality_weights(
    gen: GenerateConfig, info: WeightsInfo, kind: str, *, preset: str | None = None
) -> list[str]:
    """The modality against the weights (a CT modality with MR weights, or the reverse, is an error), MR weights
    image-only, then the MR guidance, contrast and field-of-view warnings.

    Args:
        gen: the request.
        info: the weights, inspected.
        kind: the mask source chosen.
        preset: the config's preset (its MR facts apply to maisi folders trained from it).

    Returns:
        Warnings (documented contrasts, guidance, field of view).

    Raises:
        RequestError: one line naming a valid choice.
    """
    mapping = resources.load_json("modality_mapping.json")
    if gen.modality not in mapping:
        return []  # validate_request names the unknown modality
    mid = int(mapping[gen.modality])
    family = weights_modality(info)
    if family == "mr" and not is_mr(mid):
        names = DOCUMENTED.get(mr_variant(info, preset) or "", DOCUMENTED["rflow-mr"])
        raise RequestError(
            f"modality {gen.modality!r} (id {mid}) is not an MR modality, and {_weights_name(info)} generate MR; "
            f"pass --modality with one of {', '.join(names)}"
        )
    if family == "ct" and is_mr(mid):
        raise RequestError(
            f"modality {gen.modality!r} (id {mid}) is an MR modality, and {_weights_name(info)} generate CT; pass "
            f"--modality ct, or MR weights (--weights rflow-mr or rflow-mr-brain)"
        )
    if family == "mr" and kind != "none":
        raise RequestError(
            f"mask source {kind!r}: {_weights_name(info)} have no ControlNet, so MR generation is image-only; "
            "drop --mask, --mask-database and --organ-size, or pass --mask-source none"
        )
    if not is_mr(mid):
        return []
    return mr_warnings(gen, mr_variant(info, preset))


def image_only_for_mr(gen: GenerateConfig, info: WeightsInfo, kind: str) -> str:
    """The mask source of a request ``choose_source_kind`` decided: ``none`` when the weights generate MR and the
    request names no source of its own (MR weights have no ControlNet), else ``kind`` unchanged."""
    sized = any(labels.size_is_set(v) for v in gen.organ_sizes.values())
    asked = gen.mask_source != "auto" or gen.mask or gen.mask_database or sized
    if weights_modality(info) == "mr" and not asked:
        return "none"
    return kind


# ----------------------------------------------------------------------------------------------------------------
# warnings


def mr_warnings(gen: GenerateConfig, variant: str | None) -> list[str]:
    """Guidance, documented contrasts and field of view of an MR request (``variant``: whose facts apply)."""
    out = []
    if gen.guidance == 0:
        out.append(
            "MR with guidance 0: the image does not commit to the requested contrast (the official MR "
            "configs use guidance 15 for rflow-mr and 10 for rflow-mr-brain); pass --guidance"
        )
    name = gen.modality
    if variant in DOCUMENTED and name not in DOCUMENTED[variant]:
        out.append(
            f"modality {name!r} is not among the contrasts {variant} is documented for "
            f"({', '.join(DOCUMENTED[variant])})"
        )
    fov = fov_warning(gen.output_size, gen.spacing, name, variant)
    return out + ([fov] if fov else [])


def fov_warning(
    size: Sequence[int], spacing: Sequence[float], modality: str, variant: str | None
) -> str | None:
    """A warning when the requested field of view is further than :data:`FOV_TOLERANCE` from every median training
    FOV of the variant for this contrast, naming the nearest and the spacing that gives it at this size."""
    table = {"rflow-mr-brain": BRAIN_FOV, "rflow-mr": BODY_FOV}.get(variant or "")
    if table is None:
        return None
    contrast = contrast_of(modality)
    rows = [r for r in table if contrast is None or r.contrast == contrast] or list(table)
    fov = [float(n) * float(s) for n, s in zip(size, spacing)]

    def off(row: FovRow) -> float:
        return max(abs(f / r - 1.0) for f, r in zip(fov, row.fov_mm))

    best = min(rows, key=off)
    if off(best) <= FOV_TOLERANCE:
        return None
    advised = _clip_spacing([r / float(n) for r, n in zip(best.fov_mm, size)])
    return (
        f"field of view {' x '.join(f'{f:g}' for f in fov)} mm is far from what {variant} was trained on "
        f"(nearest median: {best.name}, {' x '.join(f'{r:g}' for r in best.fov_mm)} mm); at this size "
        f"--spacing {' '.join(f'{s:g}' for s in advised)} gives it"
    )


def describe_rules() -> str:
    """The MR rules in a few lines, for ``--help``."""
    sizes = ", ".join("x".join(map(str, s)) for s in MR_SIZES)
    return (
        f"MR requests (an mri* --modality; weights rflow-mr / rflow-mr-brain): --output-size one of {sizes}; "
        f"--spacing {MR_SPACING_MM[0]:g}-{MR_SPACING_MM[1]:g} mm on every axis; image-only (no mask); guidance "
        "> 0 (presets: 15 rflow-mr, 10 rflow-mr-brain). A field of view (size x spacing) far from the models' "
        "training data is warned about, naming the nearest median and the spacing that gives it (brain: per "
        "contrast and plane, e.g. T1 axial 240 x 240 x 174 mm; body: per region, e.g. prostate T2 170 x 170 x "
        "90 mm). A CT modality with MR weights, or the reverse, is an error."
    )
