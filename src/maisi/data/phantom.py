"""Procedural CT phantoms: paired CT images (HU) and MAISI label maps with known organ and tumour sizes.

The anatomy is drawn in physical millimetres from the seed (:mod:`maisi.data.phantom_anatomy`,
:mod:`maisi.data.phantom_inserts`), then rasterised at the requested size and spacing
(:mod:`maisi.data.phantom_raster`) and given CT intensities (:mod:`maisi.data.phantom_texture`). The same
seed gives the same anatomy at any spacing and byte-identical arrays for the same request.

Orientation and affine: arrays are (X, Y, Z) in RAS (X towards the patient's right, Y anterior, Z superior).
The affine is ``diag(spacing)`` with the origin at ``-spacing * (size - 1) / 2``, so world (0, 0, 0) mm is the
centre of the volume. The centre sits on the trunk axis, at the middle of the region's body z-range;
``params["fov_center_mm"]`` is its position in the body frame (z = 0 at the T12/L1 disc).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from maisi import labels as L
from maisi.data.datalist import write_datalist
from maisi.data.nifti import save_nifti
from maisi.data.phantom_anatomy import ORGAN_VOLUME_RANGE, REGION_Z, TUMOR_SPECS, sample_anatomy
from maisi.data.phantom_inserts import sample_tumors, sample_vessels
from maisi.data.phantom_raster import rasterise
from maisi.data.phantom_shapes import Lattice
from maisi.data.phantom_texture import render_hu
from maisi.errors import DataError, RequestError
from maisi.io import OutputExistsError, write_json

#: Region names accepted by :func:`make_phantom`.
REGIONS: tuple[str, ...] = tuple(REGION_Z)
#: Organs whose volume can be requested (``organ_volumes_ml``) or scaled (``organ_scale``).
CONTROLLABLE_ORGANS: tuple[str, ...] = tuple(ORGAN_VOLUME_RANGE)
#: Tumour names accepted in ``tumors``.
TUMOR_NAMES: tuple[str, ...] = tuple(TUMOR_SPECS)
#: Region indices (top, bottom) used in a datalist when a tiny field of view shows no marker organ.
_FALLBACK_REGIONS = {"chest": (1, 1), "abdomen": (2, 2), "chest-abdomen": (1, 2)}


@dataclass(frozen=True, eq=False)  # arrays: compare fields explicitly, not with ==
class Phantom:
    """A generated CT phantom.

    Attributes:
        image: (X, Y, Z) int16 CT values in HU; air outside the body is -1000.
        label: (X, Y, Z) uint8 MAISI label ids (0 background, 200 body envelope).
        affine: (4, 4) float64 voxel -> world (RAS, mm); the volume is centred on world (0, 0, 0).
        spacing: voxel size (mm) along X, Y, Z.
        volumes_ml: realised volume (mL) of every label present, by MAISI label name.
        params: every randomised parameter and the request (JSON-serialisable), seed included.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    volumes_ml: dict[str, float]
    params: dict


def make_phantom(
    *,
    size: Sequence[int] = (128, 128, 128),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    region: str = "chest-abdomen",
    seed: int | Sequence[int] = 0,
    organ_volumes_ml: Mapping[str, float] | None = None,
    organ_scale: Mapping[str, float] | None = None,
    tumors: Mapping[str, float] | None = None,
    noise_hu: float = 15.0,
    supersample: int = 1,
) -> Phantom:
    """Generate one CT phantom with its label map.

    Args:
        size: (X, Y, Z) number of voxels.
        spacing: (X, Y, Z) voxel size in mm; the field of view is ``size * spacing``.
        region: ``"chest"``, ``"abdomen"`` or ``"chest-abdomen"``: the body z-range the scan covers. The
            volume is centred on that range; slices beyond it (when the field of view is longer) are air,
            label 0.
        seed: non-negative int or sequence of ints (``[seed, i]`` in :func:`write_phantoms`).
        organ_volumes_ml: requested volume (mL) per organ of :data:`CONTROLLABLE_ORGANS`; the organ's label
            then holds exactly that volume (to one voxel) when it lies inside the field of view.
        organ_scale: factor multiplying the randomly drawn volume of an organ (1.2 = 20% larger).
        tumors: tumour name (:data:`TUMOR_NAMES`) -> radius in mm. None draws tumours at random, ``{}`` gives
            none. A tumour is a ball at a seeded position inside its host organ, clipped to the host.
        noise_hu: standard deviation of the scanner noise per voxel (HU); 0 disables it.
        supersample: render the image on a lattice this many times finer along each axis and average each voxel's
            sub-voxels (the partial volume effect of real CT: organ and body edges become one-voxel ramps, as in a
            scan reconstructed at this spacing). 1 samples each voxel at its centre (sharp edges). The label map is
            always drawn at the requested spacing, so requested volumes stay exact. Costs ``supersample^3`` times
            the rendering time and memory.

    Returns:
        The :class:`Phantom`.

    Raises:
        RequestError: naming the argument, for an unknown region, organ or tumour name, or a bad value.
    """
    size = _check_triple("size", size, int)
    spacing = _check_triple("spacing", spacing, float)
    if region not in REGION_Z:
        raise RequestError(f"region must be one of {list(REGIONS)}, got {region!r}")
    if not (isinstance(noise_hu, int | float) and math.isfinite(noise_hu) and noise_hu >= 0):
        raise RequestError(f"noise_hu must be a non-negative number, got {noise_hu!r}")
    if not (isinstance(supersample, int) and not isinstance(supersample, bool) and 1 <= supersample <= 8):
        raise RequestError(f"supersample must be an integer from 1 to 8, got {supersample!r}")
    entropy = _check_seed(seed)

    anat_seq, tumor_seq, texture_seq, noise_seq = np.random.SeedSequence(entropy).spawn(4)
    rng = np.random.default_rng(anat_seq)
    anat = sample_anatomy(rng)
    anat["vessels"] = sample_vessels(rng, anat)
    anat["tumors"] = sample_tumors(np.random.default_rng(tumor_seq), anat)
    _apply_volumes(anat["organs"], organ_volumes_ml, organ_scale)
    anat["tumors"] = _select_tumors(anat["tumors"], tumors)

    hz = anat["body"]["height_scale"]
    z_range = (REGION_Z[region][0] * hz, REGION_Z[region][1] * hz)
    center = (0.0, -0.5 * anat["body"]["posterior_mm"], 0.5 * (z_range[0] + z_range[1]))
    half = [s * (n - 1) / 2.0 for s, n in zip(spacing, size)]
    lattice = Lattice(size, spacing, tuple(c - h for c, h in zip(center, half)))
    canvas = rasterise(anat, lattice, z_range)
    fine = None
    if supersample > 1:  # sub-voxel centres: the voxel's centre +- (j - (k - 1) / 2) * spacing / k
        k = supersample
        fine_lattice = Lattice(
            tuple(n * k for n in size),
            tuple(s / k for s in spacing),
            tuple(o - s * (k - 1) / (2 * k) for o, s in zip(lattice.origin, spacing)),
        )
        fine = rasterise(anat, fine_lattice, z_range)
    image = render_hu(
        canvas,
        anat["hu"],
        texture_seq=texture_seq,
        noise_rng=np.random.default_rng(noise_seq),
        noise_hu=float(noise_hu),
        fine=fine,
    )
    del fine
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-h for h in half]

    counts = np.bincount(canvas.label.ravel(), minlength=256)
    volumes = {L.name_of(i): round(float(n) * lattice.voxel_ml, 4) for i, n in enumerate(counts) if n and i}
    params = {
        "seed": entropy,
        "size": list(size),
        "spacing": list(spacing),
        "region": region,
        "noise_hu": float(noise_hu),
        "supersample": supersample,
        "fov_center_mm": [round(v, 4) for v in center],
        "scan_z_mm": [round(v, 4) for v in z_range],
        **anat,
    }
    return Phantom(
        image=image, label=canvas.label, affine=affine, spacing=spacing, volumes_ml=volumes, params=params
    )


def write_phantoms(
    *,
    num: int,
    output_dir: str | os.PathLike,
    size: Sequence[int] = (128, 128, 128),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    region: str = "chest-abdomen",
    seed: int = 0,
    overwrite: bool = False,
    **kw,
) -> list[dict]:
    """Write ``num`` phantoms and a MAISI datalist into ``output_dir``.

    Phantom ``i`` is ``make_phantom(seed=[seed, i], ...)`` and is written atomically as
    ``phantom_{i:04d}_image.nii.gz`` (int16), ``phantom_{i:04d}_label.nii.gz`` (uint8) and
    ``phantom_{i:04d}_meta.json`` (params and volumes). ``datalist.json`` holds ``{"training": [entry, ...]}``
    with paths relative to ``output_dir``.

    Args:
        num: number of phantoms (>= 1).
        output_dir: target folder (created if missing).
        size, spacing, region: as in :func:`make_phantom`.
        seed: base seed.
        overwrite: replace existing files; otherwise an existing target stops the run before anything is
            written.
        **kw: further :func:`make_phantom` options (``organ_volumes_ml``, ``organ_scale``, ``tumors``,
            ``noise_hu``, ``supersample``).

    Returns:
        The datalist entries: ``image``, ``label`` (relative paths), ``dim``, ``spacing``,
        ``top_region_index``, ``bottom_region_index`` (4-value one-hots from :func:`maisi.labels.regions_of`),
        ``modality`` ("ct") and ``fold`` (0).

    Raises:
        OutputExistsError: when a target exists and ``overwrite`` is False.
    """
    if not (isinstance(num, int) and not isinstance(num, bool) and num >= 1):
        raise RequestError(f"num must be a positive integer, got {num!r}")
    if region not in REGION_Z:
        raise RequestError(f"region must be one of {list(REGIONS)}, got {region!r}")
    out = Path(output_dir)
    stems = [f"phantom_{i:04d}" for i in range(num)]
    if not overwrite:
        targets = [
            out / f"{s}_{part}" for s in stems for part in ("image.nii.gz", "label.nii.gz", "meta.json")
        ]
        for target in [*targets, out / "datalist.json"]:
            if target.exists():
                raise OutputExistsError(f"{target}: already exists; refusing to overwrite")
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, stem in enumerate(tqdm(stems, desc="phantoms", disable=num <= 1)):
        ph = make_phantom(size=size, spacing=spacing, region=region, seed=[seed, i], **kw)
        image_path, label_path = out / f"{stem}_image.nii.gz", out / f"{stem}_label.nii.gz"
        save_nifti(image_path, ph.image, ph.affine, overwrite=overwrite)
        save_nifti(label_path, ph.label, ph.affine, overwrite=overwrite)
        write_json(
            out / f"{stem}_meta.json",
            {"label_ids": "MAISI", "volumes_ml": ph.volumes_ml, "params": ph.params},
            overwrite=overwrite,
        )
        try:
            top, bottom = L.regions_of(ph.label)
        except DataError:  # no marker organ in a tiny field of view
            top, bottom = _FALLBACK_REGIONS[region]
        entries.append(
            {
                "image": image_path.name,
                "label": label_path.name,
                "dim": list(ph.image.shape),
                "spacing": [float(s) for s in ph.spacing],
                "top_region_index": L.region_one_hot(top),
                "bottom_region_index": L.region_one_hot(bottom),
                "modality": "ct",
                "fold": 0,
            }
        )
    absolute = [
        {**e, "image": str(out.resolve() / e["image"]), "label": str(out.resolve() / e["label"])}
        for e in entries
    ]
    write_datalist(out / "datalist.json", absolute, overwrite=overwrite)
    return entries


# ------------------------------------------------------------------------------------------------ checks --
def _check_triple(name: str, value, kind) -> tuple:
    try:
        items = list(value)
    except TypeError:
        raise RequestError(f"{name} must be 3 positive numbers, got {value!r}") from None
    ok = len(items) == 3 and all(
        isinstance(v, int | float | np.integer | np.floating)
        and not isinstance(v, bool)
        and math.isfinite(v)
        and v > 0
        for v in items
    )
    if ok and kind is int:
        ok = all(float(v) == int(v) for v in items)
    if not ok:
        raise RequestError(
            f"{name} must be 3 positive {'integers' if kind is int else 'numbers'}, got {value!r}"
        )
    return tuple(kind(v) for v in items)


def _check_seed(seed) -> int | list[int]:
    items = [seed] if isinstance(seed, int | np.integer) else seed
    try:
        items = list(items)
    except TypeError:
        raise RequestError(f"seed must be a non-negative int or a sequence of them, got {seed!r}") from None
    if not items or not all(
        isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 0 for s in items
    ):
        raise RequestError(f"seed must be a non-negative int or a sequence of them, got {seed!r}")
    return int(items[0]) if isinstance(seed, int | np.integer) else [int(s) for s in items]


def _positive_map(name: str, mapping, known) -> dict[str, float]:
    if mapping is None:
        return {}
    out = {}
    for key, v in dict(mapping).items():
        if key not in known:
            raise RequestError(f"{name}: unknown name {key!r}; expected one of {list(known)}")
        if not (isinstance(v, int | float | np.integer | np.floating) and math.isfinite(v) and v > 0):
            raise RequestError(f"{name}[{key!r}] must be a positive number, got {v!r}")
        out[key] = float(v)
    return out


def _apply_volumes(organs: dict, volumes, scales) -> None:
    """Set requested / scaled target volumes and resize the organ's shape to match (before thresholding)."""
    volumes = _positive_map("organ_volumes_ml", volumes, CONTROLLABLE_ORGANS)
    scales = _positive_map("organ_scale", scales, CONTROLLABLE_ORGANS)
    both = sorted(set(volumes) & set(scales))
    if both:
        raise RequestError(
            f"organ_volumes_ml and organ_scale both set for {both}; give one of them per organ"
        )
    targets = {**volumes, **{k: organs[k]["volume_ml"] * s for k, s in scales.items()}}
    for name, target in targets.items():
        spec = organs[name]
        ratio = target / spec["volume_ml"]
        spec["volume_ml"] = round(target, 4)
        if "ellipsoid" in spec:
            spec["ellipsoid"]["axes"] = [round(a * ratio ** (1 / 3), 4) for a in spec["ellipsoid"]["axes"]]
        else:
            spec["tube"]["radii"] = [round(r * math.sqrt(ratio), 4) for r in spec["tube"]["radii"]]


def _select_tumors(drawn: dict, requested) -> dict:
    """Tumours to paint: the random draw (``requested`` None) or exactly the requested names and radii."""
    if requested is None:
        return {
            k: {"radius_mm": v["radius_mm"], "center": v["center"]} for k, v in drawn.items() if v["present"]
        }
    radii = _positive_map("tumors", requested, TUMOR_NAMES)
    return {k: {"radius_mm": round(r, 4), "center": drawn[k]["center"]} for k, r in radii.items()}
