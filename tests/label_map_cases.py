"""Label maps derived from TotalSegmentator's example segmentation (v2 ids) for the label-reading tests.

- v1: the same segmentation renumbered to TotalSegmentator v1 ids through the class names (classes v1 lacks drop);
- mirrored: the array flipped left-right under the same affine (every organ on the wrong side);
- custom: classes renumbered alphabetically by name onto valid MAISI ids (placeholders skipped), with its names;
- a radiotherapy chest structure set (1 tumour, 2 spinal cord, 3/4 lungs) and a head-and-neck organs-at-risk map
  (1-7), drawn as simple shapes.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

from maisi import labels

DATA = Path(__file__).parent / "data"
SEG = DATA / "example_seg.nii.gz"
V2_NAMES = {
    int(k): v for k, v in json.loads((DATA / "totalsegmentator_v2_class_map.json").read_text()).items()
}
V1_NAMES = {
    int(k): v for k, v in json.loads((DATA / "totalsegmentator_v1_class_map.json").read_text()).items()
}


def example() -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(str(SEG))
    return np.asarray(img.dataobj).astype(np.uint8), img.affine


def save(path: Path, array: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def renumber(array: np.ndarray, table: dict[int, int]) -> np.ndarray:
    lut = np.zeros(int(array.max()) + 1, dtype=np.uint8)
    for src, dst in table.items():
        if src < len(lut):
            lut[src] = dst
    return lut[array]


def v2_to_v1() -> dict[int, int]:
    """v2 id -> v1 id of the same class name (classes v1 lacks are absent: they become background)."""
    by_name = {n: i for i, n in V1_NAMES.items()}
    return {i: by_name[n] for i, n in V2_NAMES.items() if n in by_name}


def custom_ids(present: list[int]) -> dict[int, int]:
    """v2 id -> custom id: the present classes in alphabetical order of name onto MAISI ids without placeholders."""
    valid = sorted(i for n, i in labels.LABELS.items() if not n.startswith("dummy"))
    names = sorted(V2_NAMES[i] for i in present)
    new = {n: valid[k] for k, n in enumerate(names)}
    return {i: new[V2_NAMES[i]] for i in present}


def _grid(shape, spacing):
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -np.asarray(spacing) * (np.asarray(shape) - 1) / 2  # world (0, 0, 0) at the centre
    idx = np.indices(shape, dtype=np.float32)
    world = [idx[a] * spacing[a] + affine[a, 3] for a in range(3)]
    return affine, world


def _ellipsoid(world, centre, radii):
    return sum(((w - c) / r) ** 2 for w, c, r in zip(world, centre, radii)) <= 1.0


def radiotherapy_chest() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """RT structure set in its own ids: 1 tumour (right lung), 2 spinal cord, 3 left lung, 4 right lung (~2 L)."""
    shape, spacing = (160, 120, 100), (3.0, 3.0, 3.0)
    affine, (x, y, z) = _grid(shape, spacing)
    label = np.zeros(shape, np.uint8)
    label[_ellipsoid((x, y, z), (-90, 0, 0), (60, 80, 100))] = 3  # RAS: negative x is the patient's left
    label[_ellipsoid((x, y, z), (90, 0, 0), (60, 80, 100))] = 4
    label[(x**2 + (y + 90) ** 2) <= 25] = 2
    label[_ellipsoid((x, y, z), (90, 10, 30), (20, 20, 20))] = 1
    return label, affine, {1: "GTV", 2: "SpinalCord", 3: "Lung_L", 4: "Lung_R"}


def head_neck_oars() -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Head-and-neck organs at risk: 1 brainstem, 2 cord, 3/4 parotids L/R, 5 oesophagus, 6 larynx, 7 mandible."""
    shape, spacing = (100, 100, 80), (2.0, 2.0, 2.5)
    affine, (x, y, z) = _grid(shape, spacing)
    label = np.zeros(shape, np.uint8)
    label[_ellipsoid((x, y, z), (0, -20, 70), (13, 13, 25))] = 1
    label[(x**2 + (y + 25) ** 2 <= 30) & (z < 45)] = 2
    label[_ellipsoid((x, y, z), (-50, -5, 50), (12, 18, 25))] = 3
    label[_ellipsoid((x, y, z), (50, -5, 50), (12, 18, 25))] = 4
    label[((x + 4) ** 2 + (y + 10) ** 2 <= 50) & (z < -20)] = 5
    label[_ellipsoid((x, y, z), (0, 25, -5), (20, 15, 30))] = 6
    shell = _ellipsoid((x, y, z), (0, 20, 30), (50, 45, 12)) & ~_ellipsoid(
        (x, y, z), (0, 20, 30), (42, 37, 12)
    )
    label[shell & (y > 0)] = 7
    return label, affine, {1: "Brainstem", 2: "SpinalCord", 3: "Parotid_L", 4: "Parotid_R", 5: "Esophagus",
                           6: "Larynx", 7: "Mandible"}  # fmt: skip
