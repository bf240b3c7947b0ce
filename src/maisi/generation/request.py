"""Validation of a generation request: sizes, spacing, field of view, anatomy names, organ sizes, sampling options.

The rules follow the official MAISI ``check_input`` where they make sense for any size: each output axis is a
multiple of 32 (the latent, 4x smaller, must divide by the UNet's 8x downsampling), spacing is 0.5-3.0 mm in-plane
and 0.5-5.0 mm along z, organ sizes are in [0, 1] (or -1, "unspecified") with at most one tumour. The official
check refuses an in-plane field of view under 256 mm; it calls that a recommendation, so here it is a warning.
A request with an MR modality follows the official MR rules instead (:mod:`maisi.generation.mr`: the sizes and
spacing of ``check_input_mr``). Every error is one line that names the value and the nearest valid values.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from maisi import labels, resources
from maisi.config.schema import GenerateConfig
from maisi.data.intensity import is_mr
from maisi.errors import RequestError
from maisi.generation.mr import check_mr_grid
from maisi.runtime import compute_dtype

#: each output axis must be a multiple of this (latent / 8 for the UNet, x4 for the VAE)
SIZE_MULTIPLE = 32
#: in-plane (x, y) and through-plane (z) spacing ranges of the official check, mm
SPACING_XY_MM = (0.5, 3.0)
SPACING_Z_MM = (0.5, 5.0)
#: the official check's recommended minimum in-plane field of view, mm
MIN_FOV_XY_MM = 256.0
#: largest size per axis the official model was trained for (512 x 512 x 768); larger is allowed with a warning
MAX_SIZE = (512, 512, 768)


@dataclass
class Checked:
    """What validation found beyond errors: warnings for the sidecar and resolved ids."""

    anatomy_ids: list[int] = field(default_factory=list)
    keep_ids: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def nearest_multiples(n: int, multiple: int = SIZE_MULTIPLE) -> list[int]:
    """The valid sizes nearest to ``n`` (one if ``n`` is valid or equidistant candidates are not, else two)."""
    lo = max(multiple, (n // multiple) * multiple)
    hi = max(multiple, -(-n // multiple) * multiple)
    return sorted({lo, hi})


def nearest_size(n: int, multiple: int = SIZE_MULTIPLE) -> int:
    """The single valid size nearest to ``n`` (ties go up)."""
    return max(multiple, int(math.floor(n / multiple + 0.5)) * multiple)


def check_output_size(size: Sequence[int], *, source: str = "output_size") -> tuple[int, int, int]:
    """Each axis a positive multiple of :data:`SIZE_MULTIPLE`; the error names the nearest valid values."""
    if len(size) != 3:
        raise RequestError(f"{source}: expected 3 values (X Y Z), got {list(size)}")
    bad = [(i, int(n)) for i, n in enumerate(size) if int(n) != n or int(n) < 1 or int(n) % SIZE_MULTIPLE]
    if bad:
        axis, n = bad[0]
        suggestion = [nearest_size(int(s)) for s in size]
        raise RequestError(
            f"{source} {list(size)}: axis {'XYZ'[axis]} = {n} is not a multiple of {SIZE_MULTIPLE}; nearest valid "
            f"values {' or '.join(map(str, nearest_multiples(max(n, 1))))} (e.g. {suggestion})"
        )
    return tuple(int(n) for n in size)  # type: ignore[return-value]


def check_spacing(spacing: Sequence[float], *, source: str = "spacing") -> tuple[float, float, float]:
    """In-plane spacing in :data:`SPACING_XY_MM`, z in :data:`SPACING_Z_MM`; the error names the clipped value."""
    if len(spacing) != 3:
        raise RequestError(f"{source}: expected 3 values (SX SY SZ) in mm, got {list(spacing)}")
    values = tuple(float(s) for s in spacing)
    ranges = (SPACING_XY_MM, SPACING_XY_MM, SPACING_Z_MM)
    for axis, (s, (lo, hi)) in enumerate(zip(values, ranges)):
        if not (math.isfinite(s) and lo <= s <= hi):
            nearest = [min(max(v, r[0]), r[1]) if math.isfinite(v) else r[0] for v, r in zip(values, ranges)]
            raise RequestError(
                f"{source} {list(values)}: axis {'XYZ'[axis]} = {s:g} mm is outside [{lo:g}, {hi:g}] mm; nearest "
                f"valid spacing {nearest}"
            )
    return values  # type: ignore[return-value]


def fov_warnings(size: Sequence[int], spacing: Sequence[float], *, modality: int | None = None) -> list[str]:
    """Warnings for a field of view or size outside what the official CT models were trained on (none for an MR
    ``modality`` id: its sizes are a closed list and its field-of-view guidance is per MR model,
    :func:`maisi.generation.mr.fov_warning`)."""
    if modality is not None and is_mr(modality):
        return []
    out = []
    fov = [round(n * s, 3) for n, s in zip(size, spacing)]
    if min(fov[0], fov[1]) < MIN_FOV_XY_MM:
        out.append(
            f"in-plane field of view {fov[0]:g} x {fov[1]:g} mm is under the recommended {MIN_FOV_XY_MM:g} mm "
            "(official models were trained on >= 256 mm for the head, >= 384 mm elsewhere)"
        )
    if any(n > m for n, m in zip(size, MAX_SIZE)):
        out.append(f"output size {list(size)} exceeds the largest trained size {list(MAX_SIZE)}")
    return out


def request_grid(gen: GenerateConfig) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """The requested ``output_size`` and ``spacing`` checked by the rules of the request's modality: the official MR
    rules (:func:`maisi.generation.mr.check_mr_grid`) for an MR modality, else :func:`check_output_size` and
    :func:`check_spacing`."""
    if is_mr(modality_id(gen.modality)):
        return check_mr_grid(gen.output_size, gen.spacing, source=f"modality {gen.modality!r}")
    return check_output_size(gen.output_size), check_spacing(gen.spacing)


def check_anatomy(names: Sequence[str], *, source: str = "anatomy") -> list[int]:
    """MAISI ids of anatomy names; an unknown name raises naming the closest known names."""
    ids = []
    for name in names:
        try:
            ids.append(labels.id_of(name))
        except Exception:
            close = difflib.get_close_matches(
                name.lower(), [n.lower() for n in labels.LABELS], n=3, cutoff=0.5
            )
            hint = (
                f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; see label_dict.json"
            )
            raise RequestError(f"{source}: unknown anatomy name {name!r}{hint}") from None
    return ids


def check_organ_sizes(sizes: dict[str, float], *, source: str = "organ_sizes") -> dict[str, float]:
    """Names among :data:`maisi.labels.SIZE_SLOTS`, values in [0, 1] or -1, at most one tumour."""
    out = {}
    for name, value in sizes.items():
        key = name.strip().lower()
        if key not in labels.SIZE_SLOTS:
            close = difflib.get_close_matches(key, labels.SIZE_SLOTS, n=2, cutoff=0.5)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise RequestError(
                f"{source}: {name!r} is not a controllable anatomy (controllable: {', '.join(labels.SIZE_SLOTS)}){hint}"
            )
        v = float(value)
        if labels.size_is_set(v) and not 0.0 <= v <= 1.0:
            raise RequestError(
                f"{source}: {name}={v:g} must be in [0, 1] (relative size) or -1 (unspecified)"
            )
        out[key] = v
    tumors = [n for n, v in out.items() if n in labels.TUMORS and labels.size_is_set(v)]
    if len(tumors) > 1:
        raise RequestError(f"{source}: only one tumour size can be controlled at a time, got {tumors}")
    return out


def check_body_region(regions: Sequence[str], *, source: str = "body_region") -> list[int]:
    """Region indices (0 head .. 3 lower body) of region names."""
    out = []
    for r in regions:
        try:
            out.append(labels.region_index(r))
        except ValueError:
            raise RequestError(
                f"{source}: unknown body region {r!r}; expected one of {list(labels.REGIONS)}"
            ) from None
    return out


def modality_id(name: str, *, source: str = "modality") -> int:
    """Class id of a modality name in ``modality_mapping.json`` (CT = 1)."""
    mapping = resources.load_json("modality_mapping.json")
    if name not in mapping:
        close = difflib.get_close_matches(name, list(mapping), n=2, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise RequestError(f"{source}: unknown modality {name!r} (known: {', '.join(mapping)}){hint}")
    return int(mapping[name])


def validate_request(gen: GenerateConfig, *, check_grid: bool = True) -> Checked:
    """Check a whole request; raise :class:`RequestError` (one line) on the first problem.

    Args:
        gen: the request.
        check_grid: check ``output_size`` and ``spacing`` (off when a user mask decides the grid).

    Returns:
        Resolved anatomy / keep-only ids and warnings (field of view, size).
    """
    checked = Checked()
    if gen.num_samples < 1:
        raise RequestError(f"num_samples must be >= 1, got {gen.num_samples}")
    if gen.seed < 0:
        raise RequestError(f"seed must be >= 0, got {gen.seed}")
    if gen.batch_size < 1:
        raise RequestError(f"batch_size must be >= 1, got {gen.batch_size}")
    if not str(gen.output_dir).strip():
        raise RequestError("output_dir is empty; pass --output-dir DIR")
    if gen.steps < 1:
        raise RequestError(f"steps must be >= 1, got {gen.steps}")
    if gen.mask_steps is not None and gen.mask_steps < 1:
        raise RequestError(f"mask_steps must be >= 1, got {gen.mask_steps}")
    if not (math.isfinite(gen.mask_guidance) and gen.mask_guidance >= 0):
        raise RequestError(f"mask_guidance must be >= 0, got {gen.mask_guidance}")
    if not (math.isfinite(gen.guidance) and gen.guidance >= 0):
        raise RequestError(f"guidance must be >= 0, got {gen.guidance}")
    if not (math.isfinite(gen.controlnet_scale) and gen.controlnet_scale > 0):
        raise RequestError(f"controlnet_scale must be > 0, got {gen.controlnet_scale}")
    if gen.qc_retries < 0:
        raise RequestError(f"qc_retries must be >= 0, got {gen.qc_retries}")
    if gen.dtype != "auto":
        compute_dtype(gen.dtype)
    if gen.max_memory is not None:
        from maisi.memory import parse_memory

        parse_memory(gen.max_memory)
    if gen.decode_overlap is not None and not 0.0 <= gen.decode_overlap < 1.0:
        raise RequestError(f"decode_overlap must be in [0, 1), got {gen.decode_overlap}")
    if gen.decode_window is not None and any(int(w) < 1 for w in gen.decode_window):
        raise RequestError(f"decode_window must be positive, got {list(gen.decode_window)}")
    if gen.decode_splits is not None and gen.decode_splits < 1:
        raise RequestError(f"decode_splits must be >= 1, got {gen.decode_splits}")
    for ext, key in ((gen.image_ext, "image_ext"), (gen.label_ext, "label_ext")):
        if ext not in (".nii.gz", ".nii"):
            raise RequestError(f"{key} must be '.nii.gz' or '.nii', got {ext!r}")
    modality = modality_id(gen.modality)
    if check_grid:
        size, spacing = request_grid(gen)
        checked.warnings += fov_warnings(size, spacing, modality=modality)
    check_body_region(gen.body_region)
    checked.anatomy_ids = check_anatomy(gen.anatomy)
    checked.keep_ids = check_anatomy(gen.keep_only, source="keep_only")
    return checked
