"""Is a label map anatomically plausible when read in MAISI terms? Laterality, cranio-caudal order, volumes.

The reference is :data:`ANATOMY`: for each MAISI structure its side (for unpaired organs too: liver and gallbladder
right, spleen and stomach left), its typical superior and inferior ends in mm above the centre of vertebra L1
(adult), and a wide population range of volumes. The checks compare what a reading of the map says with it:

- laterality: every structure of the patient's right lies at larger RAS x than every structure of the left
  (centroids, ``LATERAL_TOLERANCE_MM`` either way is undecided);
- order: A lies above B when both of A's typical ends lie at least ``ORDER_MARGIN_MM`` above B's (vertebrae:
  ``VERTEBRA_MARGIN_MM``, so neighbours are compared; ribs, long and sloping: ``RIB_MARGIN_MM``). Both ends
  being ordered keeps the order of the visible parts when the field of view cuts either structure, so the
  middles of their visible extents may be compared;
- volume: above the range's maximum is implausible; below its minimum only when the structure does not touch
  the edge of the volume (it may be cut) and is not a fragment.

Numbers are coarse adult anatomy (vertebral levels from standard anatomy texts); the margins make the checks
insensitive to their exact values and to body size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from maisi import labels
from maisi.data.label_stats import LabelStats

LATERAL_TOLERANCE_MM = 5.0
ORDER_MARGIN_MM = 40.0
VERTEBRA_MARGIN_MM = 15.0
RIB_MARGIN_MM = 60.0
ORDER_TOLERANCE_MM = 3.0
#: structures smaller than this have no reliable position and no lower volume bound
FRAGMENT_ML = 1.0
#: a reading stays plausible with at most this fraction of its decided relations failing (segmentation slips)
FAIL_FRACTION = 0.05


@dataclass(frozen=True)
class Anatomy:
    """Reference facts of one MAISI structure (None: not checked)."""

    top: float | None = None
    bottom: float | None = None
    min_ml: float | None = None
    max_ml: float | None = None
    side: str | None = None


# vertebral body centres, mm above the L1 centre (lumbar ~37 mm apart, thoracic ~25, cervical ~19)
_VERTEBRA_Z = {
    "S1": -190, "L5": -150, "L4": -112, "L3": -75, "L2": -37, "L1": 0, "T12": 30, "T11": 58, "T10": 85,
    "T9": 111, "T8": 136, "T7": 160, "T6": 184, "T5": 207, "T4": 230, "T3": 252, "T2": 274, "T1": 296,
    "C7": 318, "C6": 337, "C5": 355, "C4": 373, "C3": 391, "C2": 412, "C1": 435,
}  # fmt: skip
_HALF = {"S": 20, "L": 18, "T": 13, "C": 9}
# rib k leaves vertebra Tk posteriorly and ends anteriorly this far below it (floating ribs 11-12 end higher)
_RIB_DROP = (60, 70, 80, 90, 100, 110, 120, 120, 120, 110, 60, 30)


def _table() -> dict[str, Anatomy]:
    t: dict[str, Anatomy] = {
        "brain": Anatomy(620, 460, 700, 2200),
        "skull": Anatomy(650, 420, None, 1500),
        "thyroid gland": Anatomy(345, 290, 2, 300),
        "trachea": Anatomy(340, 190, None, 150),
        "spinal cord": Anatomy(None, None, None, 120),  # segmentations often follow the canal to the sacrum
        "esophagus": Anatomy(340, -20, None, 150),
        "brachiocephalic trunk": Anatomy(300, 255, None, 40),
        "superior vena cava": Anatomy(265, 185, None, 120, "right"),
        "left atrial appendage": Anatomy(195, 145, None, 60),
        "pulmonary vein": Anatomy(205, 125, None, 300),
        "heart": Anatomy(210, 70, 150, 1600, "left"),
        "sternum": Anatomy(290, 120, None, 250),
        "costal cartilages": Anatomy(260, -10, None, 600),
        # lung bases reach T12/L1 in deep inspiration; lingula and middle lobe nearly as low anteriorly
        "left lung upper lobe": Anatomy(335, 20, 20, 3500),
        "left lung lower lobe": Anatomy(245, 0, 20, 3500),
        "right lung upper lobe": Anatomy(335, 120, 20, 3500),
        "right lung middle lobe": Anatomy(195, 20, 5, 1500),
        "right lung lower lobe": Anatomy(245, 0, 20, 3500),
        "liver": Anatomy(130, -60, 300, 5000, "right"),
        "gallbladder": Anatomy(20, -60, 2, 300, "right"),
        "spleen": Anatomy(100, -10, 20, 3000, "left"),
        "stomach": Anatomy(130, -100, 30, 3500, "left"),
        "pancreas": Anatomy(30, -40, 10, 300),
        "adrenal gland": Anatomy(60, 5, 0.5, 60),
        "kidney": Anatomy(30, -110, 30, 1000),
        "kidney cyst": Anatomy(30, -110, None, 3000),
        "duodenum": Anatomy(10, -90, 5, 500),
        "small bowel": Anatomy(None, None, None, 6000),
        "colon": Anatomy(None, None, None, 6000),
        "portal vein and splenic vein": Anatomy(60, -15, None, 200),
        "inferior vena cava": Anatomy(110, -125, None, 400, "right"),
        "aorta": Anatomy(None, None, None, 700),
        "hepatic vessel": Anatomy(None, None, None, 400),
        "bladder": Anatomy(-165, -290, 5, 1500),
        "prostate": Anatomy(-255, -305, 5, 300),
        "iliac artery": Anatomy(-110, -235, None, 80),
        "iliac vena": Anatomy(-125, -245, None, 120),
        "hip": Anatomy(-110, -300, 50, 1500),
        "sacrum": Anatomy(-170, -300, 20, 500),
        "femur": Anatomy(-250, -700, None, 1300),
        "gluteus maximus": Anatomy(-150, -380, None, 2500),
        "gluteus medius": Anatomy(-110, -265, None, 1200),
        "gluteus minimus": Anatomy(-130, -265, None, 500),
        "iliopsoas": Anatomy(None, None, None, 1500),
        "autochthon": Anatomy(None, None, None, 2500),
        "clavicula": Anatomy(315, 270, None, 120),
        "scapula": Anatomy(325, 150, None, 450),
        "humerus": Anatomy(None, None, None, 600),  # arm position varies
        "common carotid artery": Anatomy(385, 265, None, 30),
        "subclavian artery": Anatomy(320, 265, None, 40),
        "brachiocephalic vein": Anatomy(305, 250, None, 60),
        "lung tumor": Anatomy(None, None, None, 2500),
        "hepatic tumor": Anatomy(None, None, None, 4000),
        "pancreatic tumor": Anatomy(None, None, None, 800),
        "colon cancer primaries": Anatomy(None, None, None, 1500),
        "bone lesion": Anatomy(None, None, None, 1500),
        "airway": Anatomy(None, None, None, 400),
    }
    for level, z in _VERTEBRA_Z.items():
        half = _HALF[level[0]]
        t[f"vertebrae {level}"] = Anatomy(z + half, z - half, 2, 200)
    for k, drop in enumerate(_RIB_DROP, 1):
        z = _VERTEBRA_Z[f"T{k}"]
        t[f"rib {k}"] = Anatomy(z + 10, z - drop, None, 100)
    return t


def _by_id() -> dict[int, Anatomy]:
    table = _table()
    out: dict[int, Anatomy] = {}
    for name, i in labels.LABELS.items():
        words = name.split()
        side = words[0] if words[0] in ("left", "right") and name != "left atrial appendage" else None
        base = " ".join(words[1:]) if side else name
        ref = table.get(name) or table.get(base)
        if ref is None:
            continue
        if side is not None:
            ref = Anatomy(ref.top, ref.bottom, ref.min_ml, ref.max_ml, side)
        out[i] = ref
    # crosses the midline from the left to join the right vein: no side for the centroid test
    left_bcv = labels.LABELS["left brachiocephalic vein"]
    out[left_bcv] = Anatomy(out[left_bcv].top, out[left_bcv].bottom, None, out[left_bcv].max_ml, None)
    out[labels.LABELS["left atrial appendage"]] = Anatomy(195, 145, None, 60, "left")
    return out


#: MAISI id -> reference facts
ANATOMY: dict[int, Anatomy] = _by_id()
_VERTEBRA_IDS = frozenset(labels.VERTEBRAE) | {labels.LABELS["sacrum"]}
_RIB_IDS = frozenset(labels.RIBS)


@dataclass(frozen=True)
class Finding:
    """One failed check: which check, the source ids involved, and a short sentence."""

    check: str
    source_ids: tuple[int, ...]
    text: str


@dataclass
class Assessment:
    """Outcome of the checks for one reading of a label map.

    Attributes:
        passed: decided relations (laterality, order) that hold, per check.
        failed: decided relations that do not hold and out-of-range volumes, as findings.
    """

    passed: dict[str, int] = field(default_factory=lambda: {"laterality": 0, "order": 0})
    failed: list[Finding] = field(default_factory=list)

    def count(self, check: str) -> int:
        return sum(1 for f in self.failed if f.check == check)

    @property
    def relations(self) -> int:
        """Decided relations (passed + failed laterality and order checks)."""
        return sum(self.passed.values()) + self.count("laterality") + self.count("order")

    @property
    def plausible(self) -> bool:
        """No volume out of range, and failed relations within :data:`FAIL_FRACTION` of the decided ones."""
        rel_fails = self.count("laterality") + self.count("order")
        return self.count("volume") == 0 and rel_fails <= int(FAIL_FRACTION * self.relations)

    @property
    def mirrored(self) -> bool:
        """Most left/right relations fail while order and volumes hold: the map (or its affine) looks mirrored."""
        fails = self.count("laterality")
        order_ok = self.count("order") <= int(FAIL_FRACTION * (self.count("order") + self.passed["order"]))
        return fails >= 3 and fails > 3 * self.passed["laterality"] and order_ok and not self.count("volume")

    def summary(self) -> dict[str, str]:
        """``{"laterality": "12/12", "order": "30/31", "volume": "0 out of range"}`` for reports."""
        out = {}
        for check in ("laterality", "order"):
            n = self.passed[check] + self.count(check)
            out[check] = f"{self.passed[check]}/{n} hold"
        out["volume"] = f"{self.count('volume')} out of range"
        return out


def assess(stats: LabelStats, reading: Mapping[int, int]) -> Assessment:
    """Check one reading (source id -> MAISI id, for ids present) of a label map against :data:`ANATOMY`.

    Source ids that become the same MAISI id are checked together (their union); a finding names the source ids.
    """
    groups: dict[int, list[int]] = {}
    for src, dst in reading.items():
        if dst not in (labels.BACKGROUND, labels.BODY) and stats.index(src) is not None:
            groups.setdefault(dst, []).append(src)
    facts = {dst: _merge(stats, srcs) for dst, srcs in groups.items()}
    out = Assessment()
    _check_volumes(facts, groups, out)
    placed = {d: f for d, f in facts.items() if f["ml"] >= FRAGMENT_ML and np.all(np.isfinite(f["centroid"]))}
    _check_laterality(placed, groups, out)
    _check_order(placed, groups, out)
    return out


def _merge(stats: LabelStats, srcs: Sequence[int]) -> dict:
    ks = [stats.index(s) for s in srcs]
    voxels = stats.voxels[ks].astype(np.float64)
    centroid = (stats.centroid[ks] * voxels[:, None]).sum(axis=0) / voxels.sum()
    return {
        "ml": float(voxels.sum()) * stats.voxel_ml,
        "centroid": centroid,
        "z_mid": float(stats.z_range[ks].min() + stats.z_range[ks].max()) / 2.0,
        "truncated": bool(stats.truncated[ks].any()),
    }


def _who(dst: int, groups: Mapping[int, list[int]]) -> str:
    ids = ", ".join(str(s) for s in groups[dst])
    return f"id {ids} ({labels.name_of(dst)})"


def _check_volumes(facts: dict, groups: dict, out: Assessment) -> None:
    for dst, f in facts.items():
        ref = ANATOMY.get(dst)
        if ref is None:
            continue
        ml = f["ml"]
        if ref.max_ml is not None and ml > ref.max_ml:
            out.failed.append(
                Finding("volume", tuple(groups[dst]), f"{_who(dst, groups)} {ml:.0f} mL > {ref.max_ml:g}")
            )
        elif ref.min_ml is not None and ml < ref.min_ml and ml >= FRAGMENT_ML and not f["truncated"]:
            out.failed.append(
                Finding("volume", tuple(groups[dst]), f"{_who(dst, groups)} {ml:.0f} mL < {ref.min_ml:g}")
            )


def _check_laterality(placed: dict, groups: dict, out: Assessment) -> None:
    right = [d for d in placed if ANATOMY.get(d) and ANATOMY[d].side == "right"]
    left = [d for d in placed if ANATOMY.get(d) and ANATOMY[d].side == "left"]
    for r in right:
        for lft in left:
            # RAS: x grows towards the patient's right
            dx = placed[r]["centroid"][0] - placed[lft]["centroid"][0]
            if dx > LATERAL_TOLERANCE_MM:
                out.passed["laterality"] += 1
            elif dx < -LATERAL_TOLERANCE_MM:
                out.failed.append(
                    Finding(
                        "laterality",
                        tuple(groups[r] + groups[lft]),
                        f"{_who(r, groups)} lies {-dx:.0f} mm left of {_who(lft, groups)}",
                    )
                )


def _check_order(placed: dict, groups: dict, out: Assessment) -> None:
    ranked = [d for d in placed if ANATOMY.get(d) and ANATOMY[d].top is not None]
    for a in ranked:
        for b in ranked:
            ra, rb = ANATOMY[a], ANATOMY[b]
            margin = ORDER_MARGIN_MM
            if a in _VERTEBRA_IDS and b in _VERTEBRA_IDS:
                margin = VERTEBRA_MARGIN_MM
            elif a in _RIB_IDS or b in _RIB_IDS:
                margin = RIB_MARGIN_MM
            if not (ra.top - rb.top >= margin and ra.bottom - rb.bottom >= margin):
                continue
            # mid-extents, not centroids: a field of view that cuts both keeps their order (see module doc)
            dz = placed[a]["z_mid"] - placed[b]["z_mid"]
            if dz > ORDER_TOLERANCE_MM:
                out.passed["order"] += 1
            elif dz < -ORDER_TOLERANCE_MM:
                out.failed.append(
                    Finding(
                        "order",
                        tuple(groups[a] + groups[b]),
                        f"{_who(a, groups)} lies {-dz:.0f} mm below {_who(b, groups)}",
                    )
                )
