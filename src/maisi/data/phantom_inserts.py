"""Vessels, airway and tumours placed into a sampled phantom anatomy (body-frame millimetres).

Tumour centres are drawn inside the analytic shape of their host, so a tumour ball lands inside the host at
any voxel grid; the rasteriser then clips it to the host's voxels.
"""

from __future__ import annotations

import numpy as np

from maisi.data.phantom_anatomy import (
    TUMOR_SPECS,
    cavity_axes,
    diaphragm_z,
    jitter,
    plain,
    spine_table,
    u_round,
    vertebral_body_y,
)
from maisi.data.phantom_shapes import Ellipsoid, Tube


def sample_vessels(rng: np.random.Generator, anat: dict) -> dict:
    """Aorta, inferior vena cava, airway tree and hepatic vessels as tubes, fitted to the sampled organs."""
    body, spine = anat["body"], spine_table(anat["spine"])

    def front(z, extra):  # y just anterior to the vertebral body at height z
        ry = float(np.interp(z, spine["z0"], spine["ry"]))
        return float(vertebral_body_y(body, z, ry) + ry + extra)

    aorta, ivc = _great_vessels(anat, front)
    return plain(
        {
            "aorta": aorta,
            "inferior vena cava": ivc,
            "airway": _airway(rng, anat, front),
            "hepatic vessel": _hepatic_vessels(rng, anat, ivc["points"][2]),
        }
    )


def _great_vessels(anat: dict, front) -> tuple[dict, dict]:
    """Aorta (root in the heart, arch, descending along the spine to L4) and IVC (L5 to the right atrium)."""
    hz = anat["body"]["height_scale"]
    hx, hy, hzc = anat["organs"]["heart"]["ellipsoid"]["center"]
    aorta = [
        [hx + 20, hy - 5, hzc + 20],
        [hx + 28, hy - 8, hzc + 62],
        [hx + 10, 0.5 * (hy + front(hzc + 82, 0)), hzc + 82],
        [-22, front(hzc + 68, 16), hzc + 66],
    ]
    for z in np.arange(hzc + 25, -120 * hz, -40 * hz):
        aorta.append([-24 if z > 0 else -14, front(z, 14), float(z)])
    aorta.append([-10, front(-125 * hz, 12), -125 * hz])
    radii = [15, 15, 13, 12] + [11.5] * (len(aorta) - 5) + [9.5]
    dome = anat["diaphragm"]["right"][2]
    ivc = [
        [22, front(-150 * hz, 12), -150 * hz],
        [24, front(-40 * hz, 16), -40 * hz],
        [26, front(dome - 20, 22), dome - 20],
        [hx + 38, hy - 12, hzc - 22],
    ]
    return {"points": aorta, "radii": radii}, {"points": ivc, "radii": [11.0, 11.5, 12.0, 12.0]}


def _airway(rng: np.random.Generator, anat: dict, front) -> dict:
    """Trachea down to the carina, main bronchi and one bronchus per lobe."""
    hz = anat["body"]["height_scale"]
    hzc = anat["organs"]["heart"]["ellipsoid"]["center"][2]
    carina = [0.0, front(hzc + 55, 20), hzc + 55 + jitter(rng, 6)]
    cx, cy, cz = carina
    right, left = [cx + 40, cy - 2, cz - 25], [cx - 45, cy - 6, cz - 35]
    trachea = [[0.0, front(z, 20), float(z)] for z in (430 * hz, 330 * hz, 240 * hz)] + [carina]
    return {
        "trachea": {"points": trachea, "radii": [8.5, 8.5, 8.5, 8.0]},
        "right main": {"points": [carina, right], "radii": [7.0, 6.0]},
        "left main": {"points": [carina, left], "radii": [6.5, 5.5]},
        "right upper": {"points": [right, [cx + 72, cy - 2, cz + 5]], "radii": [4.5, 3.0]},
        "right middle": {"points": [right, [cx + 55, cy + 45, cz - 55]], "radii": [4.0, 3.0]},
        "right lower": {"points": [right, [cx + 70, cy - 25, cz - 85]], "radii": [4.5, 3.0]},
        "left upper": {"points": [left, [cx - 72, cy + 12, cz - 15]], "radii": [4.5, 3.0]},
        "left lower": {"points": [left, [cx - 72, cy - 25, cz - 90]], "radii": [4.5, 3.0]},
    }


def _hepatic_vessels(rng: np.random.Generator, anat: dict, ivc_top) -> dict:
    """Portal vein branches from the porta hepatis and three hepatic veins fanning out from the IVC."""
    (lx, ly, lz), (ax, ay, az) = (anat["organs"]["liver"]["ellipsoid"][k] for k in ("center", "axes"))
    porta = [lx - 0.35 * ax, ly - 0.1 * ay, lz - 0.35 * az]
    hub = [lx, ly, lz - 0.15 * az]
    vessels = {
        "portal trunk": {"points": [porta, hub], "radii": [6.5, 5.5]},
        "portal right": {"points": [hub, [lx + 0.5 * ax, ly - 0.1 * ay, lz]], "radii": [5.0, 3.0]},
        "portal left": {
            "points": [porta, [lx - 0.75 * ax, ly + 0.25 * ay, lz + 0.05 * az]],
            "radii": [4.5, 2.5],
        },
    }
    root = [ivc_top[0], ivc_top[1], anat["diaphragm"]["right"][2] - 25]
    for i, (fx, fy) in enumerate([(0.55, 0.3), (0.0, 0.5), (-0.5, 0.3)]):
        tip = [lx + fx * ax + jitter(rng, 8), ly + fy * ay + jitter(rng, 8), lz + 0.3 * az + jitter(rng, 8)]
        vessels[f"hepatic vein {i}"] = {"points": [root, tip], "radii": [5.0, 2.5]}
    return vessels


# ---------------------------------------------------------------------------------------------- tumours --
def sample_tumors(rng: np.random.Generator, anat: dict) -> dict:
    """Draw every tumour type (presence, radius, centre inside the host); all draws happen for every type."""
    out = {}
    for name, (host, p, (r_lo, r_hi)) in TUMOR_SPECS.items():
        present = bool(rng.uniform() < p)
        radius = u_round(rng, r_lo, r_hi)
        center = _tumor_center(rng, host, anat)
        out[name] = {"present": present, "radius_mm": radius, "center": center}
    return plain(out)


def _tumor_center(rng: np.random.Generator, host: str, anat: dict) -> np.ndarray:
    organs = anat["organs"]
    if host in ("pancreas", "colon"):
        t = organs[host]["tube"]
        tube = Tube(points=t["points"], radii=t["radii"])
        return tube.point_at(float(rng.uniform(0.1, 0.9)))
    if host == "vertebrae":
        table = spine_table(anat["spine"])
        i = int(rng.integers(1, 18))  # L5 .. T1
        zc = 0.5 * (table["z0"][i] + table["z1"][i])
        yc = vertebral_body_y(anat["body"], zc, table["ry"][i])
        return np.array(
            [rng.uniform(-0.3, 0.3) * table["rx"][i], yc + rng.uniform(-0.3, 0.3) * table["ry"][i], zc]
        )
    if host == "liver":
        e = organs["liver"]["ellipsoid"]
        liver = Ellipsoid(
            center=e["center"], axes=e["axes"], direction=e["direction"], taper=e.get("taper", 0)
        )
        lo, hi = liver.bounds(0.6)
        for _ in range(200):
            p = rng.uniform(lo, hi)
            if float(liver(*(np.array([c], dtype=np.float32) for c in p))[0, 0, 0]) <= 0.55:
                return p
        return np.asarray(e["center"])
    # lungs: rejection sampling against the analytic lung region
    body, dia, lungs = anat["body"], anat["diaphragm"], anat["lungs"]
    h = organs["heart"]["ellipsoid"]
    heart = Ellipsoid(center=h["center"], axes=h["axes"], direction=h["direction"])
    z_lo = float(max(dia["right"][2], dia["left"][2]))
    p = np.zeros(3)
    for _ in range(500):
        z = rng.uniform(z_lo + 10.0, lungs["apex_z"] - 30.0)
        a, b = cavity_axes(body, z)
        side = 1.0 if rng.uniform() < 0.5 else -1.0
        p = np.array([side * rng.uniform(0.3, 0.8) * a, rng.uniform(-0.6, 0.6) * b, z])
        inside = (p[0] / a) ** 2 + (p[1] / b) ** 2 <= 0.75
        above = p[2] > float(diaphragm_z(dia, p[0], p[1])) + 15.0
        lateral = abs(p[0] - lungs["mediastinum_x"]) > lungs["mediastinum_half_width"] + 15.0
        if inside and above and lateral:
            if float(heart(*(np.array([c], dtype=np.float32) for c in p))[0, 0, 0]) > 1.3:
                return p
    return p
