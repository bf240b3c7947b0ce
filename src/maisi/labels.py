"""The MAISI label vocabulary: ids, names, groups, body regions and the size-vector slots.

All label maps inside maisi use MAISI ids (``label_dict.json``: 132 classes, body envelope = 200, 0 = background).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from maisi import resources
from maisi.errors import DataError

BACKGROUND = 0
BODY = 200

#: name -> MAISI id, in the order of the official ``label_dict.json``.
LABELS: dict[str, int] = dict(resources.load_json("label_dict.json"))
#: MAISI id -> name.
NAMES: dict[int, str] = {v: k for k, v in LABELS.items()}
#: Every valid MAISI id, background included.
VALID_IDS: frozenset[int] = frozenset({BACKGROUND, *LABELS.values()})

#: Mask-generation model output channel -> MAISI id (``label_dict_124_to_132.json``: name -> [channel, id]).
MASK_CHANNEL_TO_ID: dict[int, int] = {
    int(ch): int(i) for ch, i in resources.load_json("label_dict_124_to_132.json").values()
}
MASK_CLASSES = len(MASK_CHANNEL_TO_ID)  # 125 output channels of the mask VAE decoder

TUMORS: dict[str, int] = {
    "lung tumor": 23,
    "pancreatic tumor": 24,
    "hepatic tumor": 26,
    "colon cancer primaries": 27,
    "bone lesion": 128,
}
#: Host organ ids of each tumor (a tumor must lie inside one of them).
TUMOR_HOSTS: dict[int, tuple[int, ...]] = {
    23: (28, 29, 30, 31, 32),
    24: (4,),
    26: (1,),
    27: (62,),
    128: tuple(range(33, 57)) + (127,),
}
LUNG_LOBES: tuple[int, ...] = (28, 29, 30, 31, 32)
VERTEBRAE: tuple[int, ...] = tuple(range(33, 57)) + (127,)
RIBS: tuple[int, ...] = tuple(range(63, 87))
#: Every bone: vertebrae and sacrum, ribs, and the other bones (hips, femurs, humeri, scapulae, clavicles,
#: sternum, skull, costal cartilages), as the official quality check groups them.
BONES: tuple[int, ...] = tuple(range(33, 57)) + tuple(range(63, 98)) + (120, 122, 127)
#: Large organs used for mask-image consistency figures.
LARGE_ORGANS: dict[str, tuple[int, ...]] = {
    "liver": (1,),
    "spleen": (3,),
    "kidneys": (5, 14),
    "lungs": LUNG_LOBES,
    "vertebrae": VERTEBRAE,
}

#: Size-vector value of an organ or tumour whose size is not requested (or, measured, absent).
ABSENT_SIZE = -1.0


def size_is_set(value: float) -> bool:
    """Whether a size-vector value requests (or records) a size, i.e. is not :data:`ABSENT_SIZE`."""
    return float(value) != ABSENT_SIZE


#: Slots of the 10-value organ/tumor size vector that conditions the mask-generation model.
SIZE_SLOTS: tuple[str, ...] = (
    "gallbladder",
    "liver",
    "stomach",
    "pancreas",
    "colon",
    "lung tumor",
    "pancreatic tumor",
    "hepatic tumor",
    "colon cancer primaries",
    "bone lesion",
)

#: Body regions, in the order of MAISI's 4-value region one-hot vectors.
REGIONS: tuple[str, ...] = ("head", "chest", "abdomen", "lower")
#: Labels whose presence marks each region (used to derive top/bottom region indices from a label map).
REGION_MARKERS: dict[str, tuple[int, ...]] = {
    "head": (22, 120, 50, 51, 52, 53, 54, 55, 56),
    "chest": LUNG_LOBES + (115, 42, 43, 44, 45, 46, 47, 48, 49),
    "abdomen": (1, 3, 4, 5, 14, 36, 37, 38),
    "lower": (15, 93, 94, 95, 96, 97, 118),
}


def id_of(name: str) -> int:
    """MAISI id of a label name (case-insensitive); raises naming the unknown name."""
    key = name.strip().lower()
    for n, i in LABELS.items():
        if n.lower() == key:
            return i
    raise DataError(
        f"unknown anatomy name {name!r}; known names are the keys of label_dict.json, e.g. 'liver'"
    )


def name_of(label_id: int) -> str:
    """Name of a MAISI id (``'background'`` for 0)."""
    if label_id == BACKGROUND:
        return "background"
    try:
        return NAMES[int(label_id)]
    except KeyError:
        raise DataError(f"unknown MAISI label id {label_id}") from None


def check_ids(ids: Iterable[int], *, source: str = "label map") -> None:
    """Raise a :class:`DataError` naming ``source`` and every id that is not a MAISI id."""
    unknown = sorted({int(i) for i in ids} - VALID_IDS)
    if unknown:
        raise DataError(f"{source}: label ids not in the MAISI vocabulary: {unknown}")


def region_one_hot(index: int) -> list[float]:
    """One-hot vector of length 4 for a region index (0 head .. 3 lower body)."""
    if not 0 <= index < len(REGIONS):
        raise ValueError(f"region index must be in [0, {len(REGIONS) - 1}], got {index}")
    v = [0.0] * len(REGIONS)
    v[index] = 1.0
    return v


def region_index(name: str) -> int:
    """Index of a region name (accepts 'head', 'chest', 'abdomen', 'lower' and common synonyms)."""
    synonyms = {
        "head_neck": "head",
        "neck": "head",
        "thorax": "chest",
        "pelvis": "lower",
        "lower_body": "lower",
    }
    key = synonyms.get(name.strip().lower().replace(" ", "_"), name.strip().lower())
    if key not in REGIONS:
        raise ValueError(f"unknown body region {name!r}; expected one of {list(REGIONS)}")
    return REGIONS.index(key)


def regions_of(label_map: np.ndarray) -> tuple[int, int]:
    """Top and bottom region indices of a label map (the first and last region whose markers are present).

    Raises:
        DataError: when no region marker label is present.
    """
    present = set(np.unique(label_map).tolist())
    found = [i for i, r in enumerate(REGIONS) if present.intersection(REGION_MARKERS[r])]
    if not found:
        raise DataError("label map contains no organ that identifies a body region")
    return found[0], found[-1]


def size_vector(sizes: Mapping[str, float], *, default: float = ABSENT_SIZE) -> list[float]:
    """Order a name -> size mapping into the 10-slot size vector; unknown names raise naming them."""
    unknown = [k for k in sizes if k not in SIZE_SLOTS]
    if unknown:
        raise DataError(f"not a controllable anatomy: {unknown}; controllable are {list(SIZE_SLOTS)}")
    return [float(sizes.get(s, default)) for s in SIZE_SLOTS]


def check_groups(
    groups: Mapping[str, Iterable[int]], *, source: str, error: type[Exception] = DataError
) -> dict[str, tuple[int, ...]]:
    """``{name: ids}`` with string names and int tuples, every id a MAISI id and in one group only (``error``
    names an id listed twice)."""
    out = {str(k): tuple(int(i) for i in v) for k, v in groups.items()}
    owner: dict[int, str] = {}
    for name, ids in out.items():
        check_ids(ids, source=source)
        for i in ids:
            if i in owner:
                raise error(f"{source}: id {i} is in two groups, {owner[i]!r} and {name!r}")
            owner[i] = name
    return out
