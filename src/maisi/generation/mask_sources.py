"""Where the label map that conditions generation comes from, behind one interface.

A mask source is a callable ``source(index, attempt=0) -> MaskSample`` giving a MAISI label map on a valid
generation grid. Four sources exist:

- :class:`FileMaskSource` — the user's own mask (MAISI or TotalSegmentator ids), body 200 added when missing,
  fitted to the nearest valid grid (or to the requested one);
- :class:`~maisi.generation.mask_database.DatabaseMaskSource` — retrieval from an indexed folder of masks with
  tumour augmentation;
- :class:`~maisi.generation.mask_model.ModelMaskSource` — the mask-generation diffusion model driven by the organ
  size vector;
- :class:`PhantomMaskSource` — the procedural phantoms of :mod:`maisi.data.phantom`.

:func:`make_mask_source` picks one from the request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from maisi import labels
from maisi.config.schema import GenerateConfig
from maisi.errors import DataError, RequestError
from maisi.generation.grid import fit_to_grid
from maisi.generation.request import check_output_size, check_spacing
from maisi.generation.seeds import derive_seed


@dataclass
class MaskSample:
    """A label map ready to condition generation.

    Attributes:
        label: (X, Y, Z) uint8 MAISI ids, each axis a multiple of 32.
        affine: (4, 4) RAS voxel -> world (mm).
        spacing: voxel size (mm).
        source: which source made it (``file``, ``database``, ``model``, ``phantom``).
        info: JSON-ready facts for the sidecar (file, seed, parameters).
        changes: what was changed to fit the grid, in words (also emitted as warnings).
        requested: requested organ/tumour sizes as the source understood them (name -> facts).
    """

    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    source: str
    info: dict[str, Any] = field(default_factory=dict)
    changes: list[str] = field(default_factory=list)
    requested: dict[str, dict[str, Any]] = field(default_factory=dict)


class MaskSource(Protocol):
    """``source(index, attempt=0) -> MaskSample``; ``name`` says which kind it is."""

    name: str

    def __call__(self, index: int, attempt: int = 0) -> MaskSample: ...


def _as_label(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# (a) the user's own mask


def read_user_mask(path: str | os.PathLike, *, label_set: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """Read a mask file and translate it to MAISI ids.

    Args:
        path: NIfTI label map.
        label_set: ``"auto"`` (detect MAISI vs TotalSegmentator), ``"maisi"``, ``"totalsegmentator"`` or a mapping
            JSON file (see :class:`maisi.data.label_mapping.LabelMapping`).

    Returns:
        ``(label in MAISI ids, affine, vocabulary used)``.

    Raises:
        DataError: unreadable file, or ids that belong to no known vocabulary (listed).
    """
    from maisi.data.label_mapping import LabelMapping, detect_label_set
    from maisi.data.nifti import load_nifti

    vol = load_nifti(path, kind="label")
    array = vol.array
    vocab = str(label_set)
    if vocab == "auto":
        vocab = detect_label_set(array, vol.affine)
        if vocab == "unknown":
            present = set(np.unique(array).tolist()) - {0}
            unknown = sorted(present - labels.VALID_IDS)
            if not unknown:
                vocab = "maisi"  # valid MAISI ids whose laterality test was undecided
            else:
                raise DataError(
                    f"{path}: label ids {unknown[:12]}{' ...' if len(unknown) > 12 else ''} are neither MAISI nor "
                    "TotalSegmentator ids; give a mapping file (data.label_set=FILE)"
                )
    if vocab == "maisi":
        labels.check_ids(np.unique(array).tolist(), source=str(path))
        mapped = array
    else:
        mapped = LabelMapping.for_label_set(vocab).apply(array, source=str(path))
        vocab = "totalsegmentator" if vocab == "totalsegmentator" else f"mapping {vocab}"
    return _as_label(mapped), vol.affine, vocab


class FileMaskSource:
    """The user's mask, translated to MAISI ids, with body 200 added when missing, fitted onto a valid grid.

    Args:
        path: the mask file.
        size: target size; None fits to the nearest valid size at the mask's own (range-clipped) spacing.
        spacing: target spacing; None keeps the mask's spacing clipped into the valid ranges.
        label_set: vocabulary of the file (see :func:`read_user_mask`).
    """

    name = "file"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        size: Sequence[int] | None = None,
        spacing: Sequence[float] | None = None,
        label_set: str = "auto",
    ) -> None:
        from maisi.data.body import add_body_from_label

        label, affine, vocab = read_user_mask(path, label_set=label_set)
        native_spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
        added_body = not bool(np.any(label == labels.BODY))
        if added_body:
            label = add_body_from_label(label, native_spacing)
        fitted = fit_to_grid(label, affine, native_spacing, size=size, new_spacing=spacing)
        self.path = str(path)
        self.sample = MaskSample(
            label=_as_label(fitted.label),
            affine=fitted.affine,
            spacing=fitted.spacing,
            source=self.name,
            info={
                "file": self.path,
                "vocabulary": vocab,
                "input_shape": list(label.shape),
                "input_spacing": list(native_spacing),
                "body_added": added_body,
            },
            changes=fitted.changes,
        )

    def __call__(self, index: int, attempt: int = 0) -> MaskSample:
        """The same fitted mask for every sample (copies, so callers may modify them)."""
        s = self.sample
        return MaskSample(
            label=s.label.copy(),
            affine=s.affine.copy(),
            spacing=s.spacing,
            source=s.source,
            info=dict(s.info),
            changes=list(s.changes),
        )


# ----------------------------------------------------------------------------------------------------------------
# (d) phantoms


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
        if s == -1.0:
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
            label=_as_label(ph.label),
            affine=np.asarray(ph.affine, dtype=np.float64),
            spacing=self.spacing,  # type: ignore[arg-type]
            source=self.name,
            info=info,
            requested={k: dict(v) for k, v in self.requested.items()},
        )


# ----------------------------------------------------------------------------------------------------------------
# choosing a source


def has_mask_model(model_set: Any) -> bool:
    return model_set is not None and "mask_vae" in model_set and "mask_unet" in model_set


def mask_model_follows_sizes(model_set: Any) -> bool:
    """Whether the mask model of ``model_set`` follows the size vector, as its weights declare: the ``mask_unet``
    component's ``size_response`` extra (written by :func:`maisi.evaluation.size.mask_model_size_response`, e.g.
    by the demo recipe's export). Weights that declare nothing (the official ones) are taken to follow it."""
    comp = model_set.components.get("mask_unet") if has_mask_model(model_set) else None
    response = (comp.extra or {}).get("size_response") if comp is not None else None
    return not isinstance(response, dict) or bool(response.get("follows_sizes", True))


def choose_source_kind(gen: GenerateConfig, *, model_set: Any = None) -> str:
    """``file`` when a mask is given, ``database`` when a database is given, ``model`` when organ sizes are
    requested and the weights include a mask-generation model that follows them, else ``phantom``.

    A mask model whose weights declare that it does not follow the size vector (the demo set's, trained on 40 maps
    on a CPU: ``mask_unet`` extra ``size_response``) gives way to phantom masks, which honour sizes exactly.
    ``--mask-source model`` still selects it."""
    if gen.mask_source != "auto":
        return gen.mask_source
    if gen.mask:
        return "file"
    if gen.mask_database:
        return "database"
    sized = any(v != -1.0 for v in gen.organ_sizes.values())
    if sized and has_mask_model(model_set) and mask_model_follows_sizes(model_set):
        return "model"
    return "phantom"


def make_mask_source(
    gen: GenerateConfig,
    *,
    kind: str | None = None,
    model_set: Any = None,
    label_set: str = "auto",
    fit_mask_to_request: bool = False,
    device: str = "cpu",
    progress: bool = False,
) -> MaskSource:
    """Build the mask source a request asks for.

    Args:
        gen: the request (sizes, spacing, regions, anatomy, organ sizes, mask file or database).
        kind: override :func:`choose_source_kind`.
        model_set: loaded weights (needed by the ``model`` source).
        label_set: vocabulary of a user mask file.
        fit_mask_to_request: fit a user mask to ``gen.output_size`` / ``gen.spacing`` instead of its nearest valid
            grid.
    """
    kind = kind or choose_source_kind(gen, model_set=model_set)
    if kind == "file":
        if not gen.mask:
            raise RequestError("mask_source 'file' needs a mask file (--mask FILE)")
        if fit_mask_to_request:
            return FileMaskSource(
                gen.mask,
                size=check_output_size(gen.output_size),
                spacing=check_spacing(gen.spacing),
                label_set=label_set,
            )
        return FileMaskSource(gen.mask, label_set=label_set)
    size, spacing = check_output_size(gen.output_size), check_spacing(gen.spacing)
    if kind == "database":
        from maisi.generation.mask_database import DatabaseMaskSource

        if not gen.mask_database:
            raise RequestError(
                "mask_source 'database' needs a mask database (--mask-database DIR or index JSON)"
            )
        return DatabaseMaskSource(
            gen.mask_database,
            size=size,
            spacing=spacing,
            seed=gen.seed,
            body_region=gen.body_region,
            anatomy=gen.anatomy,
        )
    if kind == "model":
        from maisi.generation.mask_model import ModelMaskSource

        if not has_mask_model(model_set):
            raise RequestError(
                "mask_source 'model' needs weights with the mask-generation model (mask_vae and mask_unet)"
            )
        return ModelMaskSource(
            model_set,
            size=size,
            spacing=spacing,
            seed=gen.seed,
            organ_sizes=gen.organ_sizes,
            steps=gen.mask_steps,
            decode_window=gen.decode_window,
            decode_overlap=gen.decode_overlap,
            device=device,
            progress=progress,
        )
    if kind == "phantom":
        return PhantomMaskSource(
            size=size,
            spacing=spacing,
            seed=gen.seed,
            body_region=gen.body_region,
            organ_sizes=gen.organ_sizes,
            anatomy=gen.anatomy,
        )
    raise RequestError(f"unknown mask source {kind!r}; expected file, database, model or phantom")
