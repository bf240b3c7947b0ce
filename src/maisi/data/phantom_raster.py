"""Rasterise a phantom anatomy (:mod:`maisi.data.phantom_anatomy`) into MAISI label and tissue-class maps.

Structures are painted in a fixed order; each one only claims voxels that are still unclaimed soft tissue
(tissue ``filler``) or, for bones, still body. Organs with a target volume are thresholded at the level of
their implicit field that gives exactly the target number of voxels among the voxels they may claim, so the
realised volume equals the request to one voxel whenever the organ lies inside the field of view. Parts of an
organ outside the volume (or outside the region's scan range) are counted on a coarser copy of the lattice
with an analytic stand-in for "claimable", so a truncated organ keeps its physical shape rather than growing
inside.
"""

from __future__ import annotations

import math

import numpy as np

from maisi import labels as L
from maisi.data.phantom_anatomy import (
    TISSUE_IDS,
    cavity_axes,
    diaphragm_z,
    fat_thickness,
    spine_table,
    vertebral_body_y,
)
from maisi.data.phantom_shapes import Box, Ellipsoid, Lattice, Tube, grids, shape_from_params

T = TISSUE_IDS
_F32 = np.float32
#: Most lattice points evaluated for the out-of-volume part of a truncated organ.
_COARSE_POINTS = 80_000
#: Tissue class of an organ label where it differs from the label name.
_ORGAN_TISSUE = {
    "heart": "myocardium",
    "right kidney": "kidney",
    "left kidney": "kidney",
    "gallbladder": "bile",
    "colon": "colon wall",
}


class Canvas:
    """Label and tissue-class maps being painted, with the lattice and the region's scan range."""

    def __init__(self, lattice: Lattice, z_range: tuple[float, float]):
        self.lattice = lattice
        self.label = np.zeros(lattice.shape, dtype=np.uint8)
        self.tissue = np.zeros(lattice.shape, dtype=np.uint8)
        self.xs, self.ys, self.zs = (lattice.axis(a) for a in range(3))
        self.in_scan = (self.zs >= z_range[0]) & (self.zs <= z_range[1])
        self.cavity2: np.ndarray | None = None  # normalised squared cavity radius, kept for the ribs

    def clip(self, box: Box) -> Box | None:
        return box.clip(self.lattice.shape)


def rasterise(anat: dict, lattice: Lattice, z_range: tuple[float, float]) -> Canvas:
    """Paint every structure of ``anat`` on ``lattice``; slices outside ``z_range`` (body frame) stay air."""
    c = Canvas(lattice, z_range)
    organs, vessels, tumors = anat["organs"], anat["vessels"], anat["tumors"]
    _paint_body(c, anat["body"])
    _paint_spine(c, anat)
    _paint_ribs(c, anat)
    c.cavity2 = None  # only the ribs need it
    if "bone lesion" in tumors:
        _paint_tumor(c, tumors["bone lesion"], L.VERTEBRAE, "bone lesion")

    def cavity(xs, ys, zs):
        a, b = cavity_axes(anat["body"], zs)
        x, y, _ = grids(xs, ys, zs)
        ia, ib = ((1.0 / (v * v)).astype(_F32)[None, None, :] for v in (a, b))
        return (x * x) * ia + (y * y) * ib <= 1.0

    def abdomen(xs, ys, zs):
        dz = diaphragm_z(anat["diaphragm"], xs[:, None], ys[None, :]).astype(_F32)
        return cavity(xs, ys, zs) & (zs[None, None, :] < dz[:, :, None] - 1.0)

    heart = _paint_organ(c, organs["heart"], "heart", cavity)
    if heart is not None:  # blood pool inside the myocardium
        box, f, t, mask = heart
        c.tissue[box.slices][mask & (f <= 0.78 * t)] = T["blood"]
    _paint_tube(c, vessels["aorta"], "aorta", "blood")
    _paint_tube(c, vessels["inferior vena cava"], "inferior vena cava", "ivc")
    for part in vessels["airway"].values():
        _paint_tube(c, part, "airway", "airway")
    _paint_lungs(c, anat)
    if "lung tumor" in tumors:
        _paint_tumor(c, tumors["lung tumor"], L.LUNG_LOBES, "lung tumor")

    for name in ("right kidney", "left kidney", "gallbladder", "spleen"):
        _paint_organ(c, organs[name], name, abdomen)
    _paint_organ(c, organs["pancreas"], "pancreas", abdomen, _tumor_inclusion(tumors, "pancreatic tumor"))
    stomach = _paint_organ(c, organs["stomach"], "stomach", abdomen)
    if stomach is not None:  # anterior gas cap (supine patient)
        box, f, t, mask = stomach
        tube = organs["stomach"]["tube"]
        y_top = max(p[1] + r for p, r in zip(tube["points"], tube["radii"]))
        ys = c.ys[box.slices[1]][None, :, None]
        c.tissue[box.slices][mask & (ys > y_top - anat["stomach_gas_mm"])] = T["gas"]
    hepatic = [Tube(points=v["points"], radii=v["radii"]) for v in vessels["hepatic vessel"].values()]
    inclusions = _tumor_inclusion(tumors, "hepatic tumor") + [("hepatic vessel", "hepatic vessel", hepatic)]
    _paint_organ(c, organs["liver"], "liver", abdomen, inclusions)
    colon = _paint_organ(
        c, organs["colon"], "colon", abdomen, _tumor_inclusion(tumors, "colon cancer primaries")
    )
    if colon is not None:  # 3 mm wall around mottled gas/stool content
        box, f, t, mask = colon
        wall = 3.0 / float(np.mean(organs["colon"]["tube"]["radii"]))
        c.tissue[box.slices][mask & (f < t * (1.0 - wall))] = T["colon content"]
    return c


# ------------------------------------------------------------------------------------------------- trunk --
def _paint_body(c: Canvas, body: dict) -> None:
    """Body envelope (label 200): subcutaneous fat, muscle wall (thick at the back), soft-tissue cavity."""
    a, b = (v.astype(_F32) for v in cavity_axes(body, c.zs))
    wall = (fat_thickness(body, c.zs) + body["muscle_mm"]).astype(_F32)
    p = _F32(body["posterior_mm"])
    big_a, big_b, y0 = a + wall, b + wall + p / 2, -p / 2
    x, y, _ = grids(c.xs, c.ys, c.zs)
    x2 = x * x
    cav2 = x2 * (1.0 / (a * a))[None, None, :] + (y * y) * (1.0 / (b * b))[None, None, :]
    out2 = (
        x2 * (1.0 / (big_a * big_a))[None, None, :] + ((y - y0) ** 2) * (1.0 / (big_b * big_b))[None, None, :]
    )
    # depth below the skin along the ray from the trunk axis: depth < fat <=> s > r / (r + fat), s = |out|
    r = np.sqrt(x2 + (y - y0) ** 2)
    fat = fat_thickness(body, c.zs).astype(_F32)[None, None, :]
    in_fat = out2 > (r / (r + fat)) ** 2
    tissue = np.where(cav2 <= 1.0, np.uint8(T["filler"]), np.uint8(T["muscle"]))
    tissue[in_fat] = T["fat"]
    inside = (out2 <= 1.0) & c.in_scan[None, None, :]
    tissue[~inside] = T["air"]
    c.tissue = tissue
    c.label = inside.astype(np.uint8) * np.uint8(L.BODY)
    c.cavity2 = cav2


def _paint_spine(c: Canvas, anat: dict) -> None:
    """Vertebrae by level (body, disc, arch, spinous and transverse processes), spinal canal and cord."""
    body, spine = anat["body"], anat["spine"]
    tab = spine_table(spine)
    z_lo, z_hi = float(tab["z0"][0]), float(tab["z1"][-1])
    zs_all = c.zs[(c.zs >= z_lo) & (c.zs < z_hi)]
    if zs_all.size == 0:
        return
    lvl = np.clip(np.searchsorted(tab["z1"], zs_all, side="right"), 0, len(tab["z1"]) - 1)
    yvb = vertebral_body_y(body, zs_all, tab["ry"][lvl])
    ycan = yvb - tab["ry"][lvl] - tab["rc"][lvl] - 1.5
    box = c.clip(
        c.lattice.box(
            (-50.0, float(np.min(ycan)) - 55.0, z_lo), (50.0, float(np.max(yvb + tab["ry"][lvl])) + 2.0, z_hi)
        )
    )
    if box is None:
        return
    xs, ys, zs = box.coords(c.lattice)
    lvl = np.clip(np.searchsorted(tab["z1"], zs, side="right"), 0, len(tab["z1"]) - 1)
    valid = ((zs >= z_lo) & (zs < z_hi))[None, None, :]

    def per_z(v):
        return np.asarray(v, dtype=_F32)[None, None, :]

    zc = per_z(0.5 * (tab["z0"][lvl] + tab["z1"][lvl]))
    hh = per_z(0.5 * (tab["z1"][lvl] - tab["z0"][lvl]))
    rx, ry, rc = per_z(tab["rx"][lvl]), per_z(tab["ry"][lvl]), per_z(tab["rc"][lvl])
    yvb = per_z(vertebral_body_y(body, zs, tab["ry"][lvl]))
    yc = yvb - ry - rc - 1.5
    names = [tab["names"][i] for i in lvl]
    ids = per_z([L.LABELS[n] for n in names]).astype(np.uint8)
    slope = per_z([0.6 if " T" in n else (0.3 if " C" in n else 0.1) for n in names])
    x = xs[:, None, None]
    y = ys[None, :, None]
    dz = zs[None, None, :] - zc
    r2 = (x / rx) ** 2 + ((y - yvb) / ry) ** 2
    near_mid = np.abs(dz) <= 0.8 * hh
    in_body = r2 <= 1.0
    vb = in_body & near_mid
    shell = vb & ((r2 > (1.0 - 1.6 / rx) ** 2) | (np.abs(dz) > 0.8 * hh - 1.6))
    yr = y - yc
    c2 = x * x + yr * yr
    canal = c2 <= rc * rc
    ring = ~canal & (c2 <= (rc + 5.0) ** 2) & (np.abs(dz) <= 0.6 * hh)
    dist = -rc - yr  # distance behind the canal
    spinous = (np.abs(x) <= 3.5) & (dist >= 0) & (dist <= 35.0) & (np.abs(dz + slope * dist) <= 4.5)
    transverse = (np.abs(yr) <= 4.5) & (np.abs(x) >= rc) & (np.abs(x) <= rc + 25.0) & (np.abs(dz) <= 4.5)
    cord = (c2 <= 25.0) & (zs[None, None, :] >= _F32(spine["cord_end_z"]))

    label, tissue = c.label[box.slices], c.tissue[box.slices]
    body_mask = (label == L.BODY) & valid
    ids3 = np.broadcast_to(ids, label.shape)
    for m, t, own in (
        (in_body & ~near_mid, "disc", False),
        (ring | spinous | transverse, "bone", True),
        (vb & ~shell, "cancellous", True),
        (shell, "cortical", True),
        (canal, "csf", False),
    ):
        m = m & body_mask
        tissue[m] = T[t]
        label[m] = ids3[m] if own else L.BODY
    m = cord & canal & body_mask
    label[m], tissue[m] = L.LABELS["spinal cord"], T["spinal cord"]


def _paint_ribs(c: Canvas, anat: dict) -> None:
    """Twelve rib pairs in the chest wall, each hanging from its thoracic vertebra and dropping anteriorly."""
    ribs = anat["spine"]["ribs"]
    rz = np.asarray(ribs["z"], dtype=np.float64)  # rib 1 (top) .. rib 12
    drop, phi0 = ribs["drop_mm"], ribs["start_angle"]
    sel = (c.zs >= rz.min() - drop - 10.0) & (c.zs <= rz.max() + 10.0) & c.in_scan
    if not sel.any():
        return
    k0, k1 = int(np.argmax(sel)), len(sel) - int(np.argmax(sel[::-1]))
    zs = c.zs[k0:k1]
    x, y, _ = grids(c.xs, c.ys, zs)
    rxy = np.sqrt(x * x + y * y)
    cav = np.sqrt(c.cavity2[:, :, k0:k1])
    d = rxy * (1.0 - 1.0 / np.maximum(cav, 1e-6))  # distance outside the cavity wall along the ray (mm)
    off, hw, hh = ribs["offset_mm"], ribs["half_width_mm"], ribs["half_height_mm"]
    ix, iy, iz = np.nonzero((np.abs(d - off) <= hw) & (c.label[:, :, k0:k1] == L.BODY))
    if ix.size == 0:
        return
    px, py, pz, pd = c.xs[ix], c.ys[iy], zs[iz], d[ix, iy, iz]
    phi = np.arctan2(np.abs(px), -py)
    h = np.clip((phi - phi0) / (math.pi - phi0), 0.0, 1.0) ** 1.3
    v = pz + drop * h  # constant along each rib
    order = np.argsort(rz)
    rz_sorted = rz[order]
    k = np.clip(np.searchsorted(0.5 * (rz_sorted[1:] + rz_sorted[:-1]), v), 0, len(rz) - 1)
    rib = order[k]  # 0-based rib number - 1
    end = np.asarray(ribs["end_angle"])[rib]
    inside = ((v - rz[rib]) / hh) ** 2 + ((pd - off) / hw) ** 2 <= 1.0
    inside &= (phi >= phi0 - 0.1) & (phi <= end)
    ids = np.where(px < 0, L.LABELS["left rib 1"], L.LABELS["right rib 1"]) + rib
    sl = (ix[inside], iy[inside], iz[inside] + k0)
    c.label[sl] = ids[inside].astype(np.uint8)
    c.tissue[sl] = T["bone"]


def _paint_lungs(c: Canvas, anat: dict) -> None:
    """Lungs fill the thoracic cavity above the diaphragm outside the mediastinum; lobes split by fissures."""
    dia, lungs = anat["diaphragm"], anat["lungs"]
    z_lo = min(dia["right"][2], dia["left"][2]) - 80.0
    a, b = cavity_axes(anat["body"], 150.0)
    box = c.clip(c.lattice.box((-1.3 * a, -1.3 * b, z_lo), (1.3 * a, 1.3 * b, lungs["apex_z"])))
    if box is None:
        return
    xs, ys, zs = box.coords(c.lattice)
    label, tissue = c.label[box.slices], c.tissue[box.slices]
    dz = diaphragm_z(dia, xs[:, None], ys[None, :]).astype(_F32)[:, :, None]
    z = zs[None, None, :]
    side = xs - _F32(lungs["mediastinum_x"])  # > 0: right lung
    lateral = (np.abs(side) > lungs["mediastinum_half_width"])[:, None, None]
    # apices are domes over the centre of each lung
    cx = 0.5 * float(cavity_axes(anat["body"], lungs["apex_z"] - 40.0)[0])
    top = lungs["apex_z"] - 0.006 * ((np.abs(side)[:, None] - cx) ** 2 + ys[None, :] ** 2)
    m = (tissue == T["filler"]) & (z > dz + 1.0) & (z < top.astype(_F32)[:, :, None]) & lateral
    right = (side > 0)[:, None, None]
    zro = (lungs["right_oblique"][0] - lungs["right_oblique"][1] * ys).astype(_F32)[None, :, None]
    zlo = (lungs["left_oblique"][0] - lungs["left_oblique"][1] * ys).astype(_F32)[None, :, None]
    ids = np.where(
        right,
        np.where(z < zro, 32, np.where(z > lungs["right_horizontal_z"], 30, 31)),
        np.where(z < zlo, 29, 28),
    ).astype(np.uint8)
    label[m] = ids[m]
    tissue[m] = T["lung"]


# ---------------------------------------------------------------------------------------- soft tissues --
def _paint_tube(c: Canvas, spec: dict, name: str, tissue_name: str) -> None:
    tube = Tube(points=spec["points"], radii=spec["radii"])
    box = c.clip(c.lattice.box(*tube.bounds(1.0)))
    if box is None:
        return
    xs, ys, zs = box.coords(c.lattice)
    m = np.zeros(box.shape, dtype=bool)
    tube.mask_into(xs, ys, zs, m)
    tissue = c.tissue[box.slices]
    m &= tissue == T["filler"]
    c.label[box.slices][m] = L.LABELS[name]
    tissue[m] = T[tissue_name]


def _tumor_inclusion(tumors: dict, name: str) -> list:
    if name not in tumors:
        return []
    t = tumors[name]
    r = t["radius_mm"]
    return [(name, name, [Ellipsoid(center=t["center"], axes=(r, r, r))])]


def _paint_tumor(c: Canvas, tumor: dict, hosts, name: str) -> None:
    """Ball of the tumour's radius intersected with voxels already labelled as one of ``hosts``."""
    r = tumor["radius_mm"]
    ball = Ellipsoid(center=tumor["center"], axes=(r, r, r))
    box = c.clip(c.lattice.box(*ball.bounds(1.0)))
    if box is None:
        return
    m = np.zeros(box.shape, dtype=bool)
    ball.mask_into(*box.coords(c.lattice), m)
    label = c.label[box.slices]
    m &= np.isin(label, np.asarray(hosts, dtype=np.uint8))
    label[m] = L.LABELS[name]
    c.tissue[box.slices][m] = T[name]


def _paint_organ(c: Canvas, spec: dict, name: str, claimable, inclusions=()):
    """Paint an organ with exactly its target volume among the voxels it may claim.

    Args:
        spec: organ block (``volume_ml`` and an ellipsoid or tube shape).
        claimable: analytic ``(xs, ys, zs) -> bool`` of where the organ may lie; inside the scanned volume the
            voxel must also still be unclaimed soft tissue.
        inclusions: ``(label name, tissue name, shapes)`` painted inside the organ's envelope (tumours,
            vessels); the organ's own label keeps the target volume.

    Returns:
        ``(box, field, threshold, organ mask)`` over the in-volume box, or None when the organ is not in view.
    """
    shape = shape_from_params(spec)
    lat = c.lattice
    k = max(1, round(spec["volume_ml"] / lat.voxel_ml))
    t_box = 1.3
    for _ in range(6):
        full = lat.box(*shape.bounds(t_box))
        box = c.clip(full)
        if box is None:
            return None
        xs, ys, zs = box.coords(lat)
        f = _field(shape, xs, ys, zs, t_box)
        scanned = c.in_scan[box.slices[2]][None, None, :]
        allowed = claimable(xs, ys, zs) & np.isfinite(f)
        allowed &= (c.tissue[box.slices] == T["filler"]) | ~scanned
        incl = [_shapes_mask(s, xs, ys, zs) for *_, s in inclusions]
        own = allowed & ~np.logical_or.reduce(incl) if incl else allowed
        values = f[own]
        coarse = (
            None if full.inside(lat.shape) else _coarse_values(c, full, shape, t_box, claimable, inclusions)
        )
        t = _kth_value(values, k, coarse)
        if t < t_box:
            break
        t_box *= 1.3
    envelope = allowed & (f <= t) & scanned  # out-of-scan voxels were counted but are never painted
    mask = envelope & own
    label, tissue = c.label[box.slices], c.tissue[box.slices]
    label[mask], tissue[mask] = L.LABELS[name], T[_ORGAN_TISSUE.get(name, name)]
    taken = np.zeros_like(mask)
    for (lname, tname, _), m in zip(inclusions, incl):
        m = m & envelope & ~taken
        label[m], tissue[m] = L.LABELS[lname], T[tname]
        taken |= m
    return box, f, t, mask


def _field(shape, xs, ys, zs, reach: float) -> np.ndarray:
    return shape(xs, ys, zs, reach=reach) if isinstance(shape, Tube) else shape(xs, ys, zs)


def _shapes_mask(shapes, xs, ys, zs) -> np.ndarray:
    m = np.zeros((len(xs), len(ys), len(zs)), dtype=bool)
    for s in shapes:
        s.mask_into(xs, ys, zs, m)
    return m


def _coarse_values(c: Canvas, full: Box, shape, t_box: float, claimable, inclusions):
    """Field values (and their voxel weight) of the organ's claimable lattice points outside the scan."""
    n = math.prod(full.shape)
    step = max(1, math.ceil((n / _COARSE_POINTS) ** (1.0 / 3.0)))
    xs, ys, zs = full.coords(c.lattice, step)
    idx = [np.arange(full.lo[a], full.hi[a], step) for a in range(3)]
    in_x = (idx[0] >= 0) & (idx[0] < c.lattice.shape[0])
    in_y = (idx[1] >= 0) & (idx[1] < c.lattice.shape[1])
    in_z = (idx[2] >= 0) & (idx[2] < c.lattice.shape[2])
    in_volume = in_x[:, None, None] & in_y[None, :, None] & in_z[None, None, :]
    f = _field(shape, xs, ys, zs, t_box)
    m = ~in_volume & claimable(xs, ys, zs) & np.isfinite(f)
    for *_, s in inclusions:
        m &= ~_shapes_mask(s, xs, ys, zs)
    return f[m], float(step**3)


def _kth_value(values: np.ndarray, k: int, coarse) -> float:
    """Smallest threshold with ``k`` claimable voxels at or below it (coarse points count ``weight`` each)."""
    if coarse is None or coarse[0].size == 0:
        if values.size < k:
            return math.inf
        return float(np.partition(values, k - 1)[k - 1])
    cv, w = coarse
    if values.size + w * cv.size < k:
        return math.inf
    lo, hi = 0.0, float(max(values.max(initial=0.0), cv.max()))
    below = 0  # fine values <= lo, dropped from ``values`` as the bracket shrinks
    for _ in range(40):  # bisection on the weighted count
        mid = 0.5 * (lo + hi)
        inside = values <= mid
        n_fine = int(np.count_nonzero(inside))
        n = below + n_fine + w * np.count_nonzero(cv <= mid)
        if n >= k:
            hi, values = mid, values[inside]
            if n == k:
                break
        else:
            lo, below, values = mid, below + n_fine, values[~inside]
    return hi
