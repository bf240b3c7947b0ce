"""Randomised canonical anatomy of the CT phantom, in physical millimetres.

Body frame (RAS, mm): x towards the patient's right, y anterior, z superior; x = y = 0 on the axis of the
trunk cavity (the space inside the muscle wall) and z = 0 at the T12/L1 disc. Everything here is independent
of the voxel grid: :func:`sample_anatomy` draws a JSON-serialisable parameter tree from a seed, and the
rasteriser (:mod:`maisi.data.phantom_raster`) only reads that tree, so the same seed gives the same anatomy
at any size, spacing or field of view.
"""

from __future__ import annotations

import math

import numpy as np

from maisi.data.phantom_shapes import Tube

#: (z, half width, half depth) of the trunk cavity of the canonical body (mm), from pelvis to neck.
CAVITY_PROFILE = np.array(
    [
        [-260.0, 140.0, 85.0],
        [-180.0, 135.0, 86.0],
        [-100.0, 130.0, 90.0],
        [0.0, 128.0, 95.0],
        [80.0, 134.0, 100.0],
        [170.0, 130.0, 98.0],
        [230.0, 116.0, 88.0],
        [265.0, 96.0, 76.0],
        [300.0, 60.0, 54.0],
        [420.0, 45.0, 45.0],
    ]
)
#: Subcutaneous fat thickness relative to its nominal value, by canonical z.
FAT_PROFILE = np.array([[-200.0, 1.3], [0.0, 1.15], [100.0, 1.0], [300.0, 0.7]])

#: Vertebrae from bottom to top: (name, canonical height incl. disc, body half width, body half depth, canal
#: radius), mm. The top of L1 is z = 0.
LEVELS: tuple[tuple[str, float, float, float, float], ...] = (
    ("vertebrae S1", 36, 26, 18, 9.0),
    ("vertebrae L5", 35, 25, 18, 9.0),
    ("vertebrae L4", 36, 24.5, 17.5, 9.0),
    ("vertebrae L3", 36, 24, 17, 9.0),
    ("vertebrae L2", 35, 23, 16.5, 9.0),
    ("vertebrae L1", 34, 22, 16, 8.5),
    ("vertebrae T12", 27, 20, 15, 8.0),
    ("vertebrae T11", 26, 19, 14.5, 7.5),
    ("vertebrae T10", 25, 18.5, 14, 7.5),
    ("vertebrae T9", 24, 18, 14, 7.5),
    ("vertebrae T8", 23, 17.5, 13.5, 7.5),
    ("vertebrae T7", 22, 17, 13.5, 7.5),
    ("vertebrae T6", 21.5, 16.5, 13, 7.5),
    ("vertebrae T5", 21, 16, 13, 7.5),
    ("vertebrae T4", 20.5, 15.5, 12.5, 7.5),
    ("vertebrae T3", 20, 15, 12, 7.5),
    ("vertebrae T2", 19.5, 14.5, 11.5, 7.5),
    ("vertebrae T1", 19, 14, 11, 8.0),
    ("vertebrae C7", 16, 12.5, 9.5, 8.5),
    ("vertebrae C6", 16, 11.5, 9, 8.5),
    ("vertebrae C5", 16, 11, 8.5, 8.5),
    ("vertebrae C4", 16, 10.5, 8.5, 8.5),
    ("vertebrae C3", 16, 10.5, 8.5, 8.5),
    ("vertebrae C2", 22, 10.5, 9, 9.0),
    ("vertebrae C1", 12, 12, 8, 10.0),
)
_L1_INDEX = 5  # LEVELS[_L1_INDEX] is L1: its top is z = 0

#: Canonical z interval (mm, scaled by the body height) covered by each region; slices outside are air. The
#: chest ends at the top of T1 (no cervical vertebrae, which mark the head region in MAISI's region rule).
REGION_Z: dict[str, tuple[float, float]] = {
    "chest": (40.0, 268.0),
    "abdomen": (-225.0, 110.0),
    "chest-abdomen": (-225.0, 268.0),
}

#: Organs whose volume is realised exactly (voxel count) and can be requested or scaled, with the canonical
#: volume range (mL) a random body draws from.
ORGAN_VOLUME_RANGE: dict[str, tuple[float, float]] = {
    "heart": (480.0, 780.0),
    "right kidney": (130.0, 200.0),
    "left kidney": (130.0, 200.0),
    "gallbladder": (20.0, 55.0),
    "spleen": (140.0, 300.0),
    "pancreas": (60.0, 100.0),
    "stomach": (250.0, 600.0),
    "liver": (1300.0, 1900.0),
    "colon": (450.0, 850.0),
}

#: Tumours: host organ in the phantom, probability when drawn at random, radius range (mm).
TUMOR_SPECS: dict[str, tuple[str, float, tuple[float, float]]] = {
    "lung tumor": ("lungs", 0.35, (4.0, 15.0)),
    "hepatic tumor": ("liver", 0.35, (6.0, 22.0)),
    "pancreatic tumor": ("pancreas", 0.25, (6.0, 14.0)),
    "colon cancer primaries": ("colon", 0.15, (8.0, 16.0)),
    "bone lesion": ("vertebrae", 0.25, (5.0, 11.0)),
}

#: Tissue classes: (non-contrast HU range, HU gain at full contrast, texture amplitude in HU). Tissue ids are
#: the positions in this table. Medians of liver, spleen, pancreas, kidney, lung and bone stay inside the
#: ``sigma_6`` ranges of ``image_median_statistics_ct.json`` for every draw.
TISSUES: dict[str, tuple[tuple[float, float], float, float]] = {
    "air": ((-1000, -1000), 0, 0),
    "fat": ((-110, -90), 0, 12),
    "muscle": ((38, 55), 15, 8),
    "filler": ((-75, -45), 10, 45),  # mediastinal / abdominal fat with unlabelled bowel and vessels
    "csf": ((5, 15), 0, 4),
    "cortical": ((550, 800), 0, 50),
    "cancellous": ((160, 260), 0, 40),
    "bone": ((280, 420), 0, 40),  # ribs and posterior vertebral elements (cortex and marrow mixed)
    "disc": ((70, 100), 0, 7),
    "lung": ((-880, -830), 0, 30),  # plus vessel-like blobs where the texture peaks
    "airway": ((-1000, -980), 0, 5),
    "blood": ((35, 50), 220, 4),
    "myocardium": ((40, 55), 60, 6),
    "ivc": ((35, 50), 140, 4),
    "liver": ((50, 65), 50, 8),
    "hepatic vessel": ((40, 50), 130, 4),
    "spleen": ((40, 55), 70, 8),
    "kidney": ((25, 40), 140, 11),
    "pancreas": ((35, 50), 45, 11),
    "stomach": ((10, 30), 10, 10),
    "gas": ((-1000, -970), 0, 5),
    "bile": ((0, 20), 0, 4),
    "colon wall": ((35, 50), 40, 7),
    "colon content": ((-600, -300), 0, 280),  # mottled gas and stool
    "spinal cord": ((25, 40), 0, 4),
    "lung tumor": ((15, 45), 30, 8),
    "hepatic tumor": ((5, 35), 20, 10),
    "pancreatic tumor": ((10, 35), 15, 10),
    "colon cancer primaries": ((35, 60), 30, 8),
    "bone lesion": ((20, 80), 0, 30),  # lytic; sclerotic lesions replace this draw
}
TISSUE_IDS: dict[str, int] = {name: i for i, name in enumerate(TISSUES)}


def u_round(rng: np.random.Generator, lo: float, hi: float) -> float:
    return round(float(rng.uniform(lo, hi)), 4)


def _r(v) -> list[float]:
    return [round(float(x), 4) for x in np.asarray(v, dtype=np.float64).ravel()]


# ---------------------------------------------------------------------------------------------- profiles --
def cavity_axes(body: dict, z):
    """Half width ``a`` and half depth ``b`` (mm) of the trunk cavity at body-frame heights ``z``."""
    zc = np.asarray(z, dtype=np.float64) / body["height_scale"]
    a = body["width_scale"] * np.interp(zc, CAVITY_PROFILE[:, 0], CAVITY_PROFILE[:, 1])
    b = body["depth_scale"] * np.interp(zc, CAVITY_PROFILE[:, 0], CAVITY_PROFILE[:, 2])
    return a, b


def fat_thickness(body: dict, z):
    zc = np.asarray(z, dtype=np.float64) / body["height_scale"]
    return body["fat_mm"] * np.interp(zc, FAT_PROFILE[:, 0], FAT_PROFILE[:, 1])


def cavity_point(body: dict, u: float, v: float, z: float) -> list[float]:
    """Body-frame point from cavity-normalised coordinates (``u``, ``v`` in [-1, 1]) at height ``z``."""
    a, b = cavity_axes(body, z)
    return [float(u * a), float(v * b), float(z)]


def spine_table(spine: dict) -> dict[str, np.ndarray]:
    """Per-level arrays, bottom to top: ``z0``, ``z1``, ``rx``, ``ry``, ``rc`` and the MAISI ``names``."""
    names = [lv[0] for lv in spine["levels"]]
    arr = np.array([lv[1:] for lv in spine["levels"]], dtype=np.float64)
    return {
        "names": names,
        "z0": arr[:, 0],
        "z1": arr[:, 1],
        "rx": arr[:, 2],
        "ry": arr[:, 3],
        "rc": arr[:, 4],
    }


def vertebral_body_y(body: dict, z, ry):
    """Centre y (mm) of the vertebral body at height ``z``: it bulges into the cavity from its back wall."""
    _, b = cavity_axes(body, z)
    return -b + 0.6 * np.asarray(ry)


def diaphragm_z(dia: dict, x, y):
    """Height (mm) of the diaphragm surface over body-frame (x, y): two domes, lower towards the back."""
    x = np.asarray(x)
    y = np.asarray(y)
    k = dia["curvature"]
    right = dia["right"][2] - k * ((x - dia["right"][0]) ** 2 + (y - dia["right"][1]) ** 2)
    left = dia["left"][2] - k * ((x - dia["left"][0]) ** 2 + (y - dia["left"][1]) ** 2)
    return np.maximum(right, left) - dia["posterior_drop"] * np.clip(-y, 0.0, None)


# ---------------------------------------------------------------------------------------------- sampling --
def sample_anatomy(rng: np.random.Generator) -> dict:
    """Draw the canonical body: trunk, skeleton, diaphragm, lungs, organs (target volumes) and tissue HU.

    Vessels, airway and tumours are placed into it by :mod:`maisi.data.phantom_inserts`.

    Returns:
        JSON-serialisable parameter tree (see :mod:`maisi.data.phantom_raster` for its use).
    """
    hz = u_round(rng, 0.92, 1.08)
    body = {
        "height_scale": hz,
        "width_scale": u_round(rng, 0.88, 1.12),
        "depth_scale": u_round(rng, 0.88, 1.15),
        "fat_mm": u_round(rng, 6.0, 32.0),
        "muscle_mm": u_round(rng, 11.0, 16.0),
        "posterior_mm": u_round(rng, 40.0, 52.0),
    }
    # skeleton: vertebral levels stacked up from the sacrum, ribs hanging from T1..T12
    size = u_round(rng, 0.93, 1.07)
    z = -hz * sum(lv[1] for lv in LEVELS[: _L1_INDEX + 1])
    levels = []
    for name, h, rx, ry, rc in LEVELS:
        levels.append([name, round(z, 4), round(z + h * hz, 4), round(rx * size, 4), round(ry * size, 4), rc])
        z += h * hz
    t_levels = {lv[0]: lv for lv in levels}
    rib_z = [
        round(0.5 * (t_levels[f"vertebrae T{i}"][1] + t_levels[f"vertebrae T{i}"][2]) + 3.0, 4)
        for i in range(1, 13)
    ]
    rib_end = [2.6, 2.6, 2.6, 2.6, 2.6, 2.6, 2.55, 2.4, 2.2, 2.0, 1.5, 1.1]
    spine = {
        "levels": levels,
        "cord_end_z": round(t_levels["vertebrae L2"][2] - u_round(rng, 0.0, 20.0) * hz, 4),
        "ribs": {
            "z": rib_z,
            "end_angle": [round(e + float(rng.uniform(-0.08, 0.08)), 4) for e in rib_end],
            "drop_mm": u_round(rng, 55.0, 75.0) * hz,
            "start_angle": 0.35,
            "half_height_mm": 5.0,
            "half_width_mm": 3.5,
            "offset_mm": 5.0,
        },
    }
    z_dr = u_round(rng, 90.0, 108.0) * hz
    z_dl = round(z_dr - u_round(rng, 5.0, 20.0) * hz, 4)
    a_d, b_d = cavity_axes(body, z_dr)
    dia = {
        "right": _r([0.45 * a_d, 0.0, z_dr]),
        "left": _r([-0.45 * a_d, 0.0, z_dl]),
        "curvature": u_round(rng, 0.006, 0.009),
        "posterior_drop": 0.25,
    }
    lungs = {
        "apex_z": u_round(rng, 252.0, 266.0) * hz,
        "mediastinum_x": u_round(rng, -12.0, -4.0),
        "mediastinum_half_width": u_round(rng, 14.0, 20.0),
        "right_oblique": [u_round(rng, 135.0, 155.0) * hz, u_round(rng, 0.5, 0.7)],
        "left_oblique": [u_round(rng, 140.0, 160.0) * hz, u_round(rng, 0.5, 0.7)],
        "right_horizontal_z": u_round(rng, 168.0, 185.0) * hz,
    }
    anat = {"body": body, "spine": spine, "diaphragm": dia, "lungs": lungs}
    anat["organs"] = _sample_organs(rng, anat)
    anat["contrast"] = u_round(rng, 0.0, 1.0)
    anat["hu"] = {
        name: round(float(rng.uniform(*rng_range)) + gain * anat["contrast"], 2)
        for name, (rng_range, gain, _) in TISSUES.items()
    }
    anat["hu"]["hepatic tumor"] = round(anat["hu"]["liver"] - u_round(rng, 25.0, 55.0), 2)
    anat["hu"]["pancreatic tumor"] = round(anat["hu"]["pancreas"] - u_round(rng, 20.0, 40.0), 2)
    if rng.uniform() < 0.5:  # sclerotic instead of lytic bone lesion
        anat["hu"]["bone lesion"] = u_round(rng, 700.0, 950.0)
    anat["stomach_gas_mm"] = u_round(rng, 5.0, 30.0)  # depth of the anterior gas cap (patient supine)
    return plain(anat)


def plain(v):
    """Nested params with numpy scalars turned into Python floats rounded to 1e-4 (the values rasterised)."""
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple | np.ndarray):
        return [plain(x) for x in v]
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, float | np.floating | int | np.integer) and not isinstance(v, bool):
        return round(float(v), 4) if isinstance(v, float | np.floating) else int(v)
    return v


def jitter(rng, s: float) -> float:
    return float(rng.uniform(-s, s))


def _sample_organs(rng: np.random.Generator, anat: dict) -> dict:
    body, dia = anat["body"], anat["diaphragm"]
    hz = body["height_scale"]
    z_dr, z_dl = dia["right"][2], dia["left"][2]
    vol = {name: u_round(rng, lo, hi) for name, (lo, hi) in ORGAN_VOLUME_RANGE.items()}

    def at(u, v, z, ju=0.04, jz=8.0):
        return cavity_point(body, u + jitter(rng, ju), v + jitter(rng, ju), z + jitter(rng, jz) * hz)

    def ellipsoid(name, center, axes, direction, taper=0.0):
        axes = np.asarray(axes, dtype=np.float64) * (1.0 + np.array([jitter(rng, 0.08) for _ in range(3)]))
        nominal = 4.0 / 3.0 * math.pi * float(np.prod(axes)) / 1000.0
        axes = axes * (vol[name] / nominal) ** (1.0 / 3.0)
        d = np.asarray(direction, dtype=np.float64) + np.array([jitter(rng, 0.1) for _ in range(3)])
        e = {"center": _r(center), "axes": _r(axes), "direction": _r(d)}
        if taper:
            e["taper"] = round(taper, 4)
        return {"volume_ml": vol[name], "ellipsoid": e}

    def tube(name, nodes):
        pts = [at(u, v, z * hz, 0.03, 6.0) for u, v, z, _ in nodes]
        radii = np.array([r for *_, r in nodes], dtype=np.float64)
        radii *= math.sqrt(vol[name] / Tube(points=pts, radii=radii).approx_volume_ml())
        return {"volume_ml": vol[name], "tube": {"points": [_r(p) for p in pts], "radii": _r(radii)}}

    organs = {}
    hx, hy = -15.0 * body["width_scale"] + jitter(rng, 8), 0.25 * cavity_axes(body, z_dr)[1] + jitter(rng, 8)
    organs["heart"] = ellipsoid(
        "heart", [hx, hy, z_dr + u_round(rng, 30, 42) * hz], [62, 47, 50], [-0.6, 0.6, -0.5]
    )
    organs["right kidney"] = ellipsoid(
        "right kidney", at(0.45, -0.5, -45 * hz), [55, 30, 26], [-0.15, -0.15, 1]
    )
    organs["left kidney"] = ellipsoid(
        "left kidney", at(-0.45, -0.5, -30 * hz), [55, 30, 26], [0.15, -0.15, 1]
    )
    organs["gallbladder"] = ellipsoid("gallbladder", at(0.38, 0.45, -5 * hz), [35, 16, 16], [0.2, 0.6, -0.75])
    organs["spleen"] = ellipsoid("spleen", at(-0.62, -0.35, z_dl - 45 * hz), [55, 45, 22], [0.3, -0.6, 0.75])
    organs["pancreas"] = tube(
        "pancreas", [(0.18, 0.05, -35, 17), (0.0, 0.15, -22, 12), (-0.3, 0.05, -12, 12), (-0.55, -0.2, 0, 10)]
    )
    zs = z_dl / hz
    organs["stomach"] = tube(
        "stomach",
        [
            (-0.4, 0.0, zs - 25, 38),
            (-0.38, 0.35, zs - 75, 33),
            (-0.05, 0.55, zs - 105, 24),
            (0.15, 0.4, zs - 110, 13),
        ],
    )
    organs["liver"] = ellipsoid("liver", at(0.35, 0.05, z_dr - 55 * hz), [100, 85, 75], [1, 0, 0], taper=0.35)
    organs["colon"] = tube(
        "colon",
        [
            (0.6, 0.2, -175, 28),
            (0.68, -0.05, -70, 25),
            (0.55, 0.25, -35, 24),
            (0.0, 0.65, -75, 22),
            (-0.65, 0.1, -10, 22),
            (-0.72, -0.15, -100, 18),
            (-0.45, 0.3, -180, 17),
            (-0.1, -0.2, -198, 16),
        ],
    )
    return organs
