"""Matching structure names from other vocabularies to MAISI labels, by an explicit synonym table.

A name is reduced to a key: camelCase split, lower case, ``_``/``-``/``.``/space as separators, the side word
(``left``/``right``/``l``/``r``/``lt``/``rt``) taken out, British spellings folded, the remaining words sorted. So
``lung_upper_lobe_left``, ``Left lung, upper lobe`` and ``upper lobe of left lung`` share the key of MAISI's
``left lung upper lobe``. Then :data:`ALIASES` (abbreviations, other names of the same structure), :data:`PARTS`
(parts of a MAISI structure, merged into it), :data:`SPLITS` (wholes that MAISI splits) and :data:`LACKING` are
looked up by key. Nothing is fuzzy: a name that matches no entry is reported as unknown, never guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Literal

from maisi import labels

Side = Literal["left", "right", ""]
Kind = Literal["exact", "part", "split", "lacking", "background", "unknown"]

SIDE_WORDS: dict[str, Side] = {
    "left": "left",
    "l": "left",
    "lt": "left",
    "right": "right",
    "r": "right",
    "rt": "right",
}
#: single-word spellings folded before matching
WORD_FOLDS: dict[str, str] = {
    "tumour": "tumor",
    "tumours": "tumor",
    "tumors": "tumor",
    "oesophagus": "esophagus",
    "vertebra": "vertebrae",
}
STOP_WORDS = frozenset({"of", "the", "and", "gland"})
_VERTEBRA = re.compile(r"^[ctls]\d{1,2}$")

#: other names of a MAISI structure (keys without side; the side of the input is kept)
ALIASES: dict[str, tuple[str, ...]] = {
    "bladder": ("urinary bladder", "urinarybladder"),
    "gallbladder": ("gall bladder",),
    "inferior vena cava": ("ivc", "vena cava inferior"),
    "superior vena cava": ("svc",),
    "small bowel": ("small intestine", "smallbowel"),
    "colon": ("large bowel", "large intestine"),
    "spinal cord": ("spinalcord", "cord", "myelon"),
    "thyroid gland": ("thyroid",),
    "adrenal gland": ("adrenal", "adrenals", "adrenal glands", "suprarenal", "suprarenal gland"),
    "clavicula": ("clavicle",),
    "hip": ("hip bone", "os coxae", "coxal bone", "innominate bone"),
    "iliac vena": ("iliac vein", "common iliac vein"),
    "iliac artery": ("common iliac artery",),
    "common carotid artery": ("carotid", "carotid artery", "common carotid", "cca"),
    "subclavian artery": ("subclavian",),
    "brachiocephalic trunk": ("brachiocephalic artery", "innominate artery"),
    "brachiocephalic vein": ("innominate vein",),
    "autochthon": ("autochthonous back muscles", "erector spinae", "autochthonous muscles"),
    "lung upper lobe": ("upper lobe", "upper lung lobe", "superior lobe", "lung superior lobe"),
    "lung middle lobe": ("middle lobe", "middle lung lobe"),
    "lung lower lobe": ("lower lobe", "lower lung lobe", "inferior lobe", "lung inferior lobe"),
    "hepatic vessel": ("hepatic vessels", "liver vessels", "liver vessel"),
    "hepatic tumor": ("liver tumor", "hepatic tumour", "liver cancer", "hepatic neoplasm"),
    "pancreatic tumor": ("pancreas tumor", "pancreatic cancer", "pancreas cancer", "pancreatic neoplasm"),
    "lung tumor": ("lung cancer", "pulmonary tumor", "lung neoplasm"),
    "colon cancer primaries": ("colon cancer", "colon tumor", "colon cancer primary"),
    "bone lesion": ("bone lesions",),
    "pulmonary vein": ("pulmonary veins",),
    "costal cartilages": ("costal cartilage",),
    "prostate": ("prostate gland", "prostata"),
    "airway": ("airways",),
    "atrial appendage": ("auricle",),
    "kidney cyst": ("kidney cysts", "renal cyst", "renal cysts"),
    "kidney": ("kidneys", "renal"),
    "femur": ("femoral bone",),
    "esophagus": ("oesophagus",),
    "sacrum": ("os sacrum",),
    "portal vein and splenic vein": ("portal and splenic vein", "portal splenic vein", "portosplenic vein"),
}
#: whole-name abbreviations that carry a side (RUL, LLL...) -> MAISI name
ABBREVIATIONS: dict[str, str] = {
    "rul": "right lung upper lobe",
    "rml": "right lung middle lobe",
    "rll": "right lung lower lobe",
    "lul": "left lung upper lobe",
    "lll": "left lung lower lobe",
}
#: parts of one MAISI structure, merged into it (name -> MAISI name)
PARTS: dict[str, str] = {
    "heart myocardium": "heart",
    "myocardium": "heart",
    "heart atrium left": "heart",
    "heart atrium right": "heart",
    "heart ventricle left": "heart",
    "heart ventricle right": "heart",
    "left atrium": "heart",
    "right atrium": "heart",
    "left ventricle": "heart",
    "right ventricle": "heart",
    "portal vein": "portal vein and splenic vein",
    "splenic vein": "portal vein and splenic vein",
    "body trunc": "body",
    "body extremities": "body",
    "body": "body",
    "external": "body",
    "body outline": "body",
    "body envelope": "body",
    "body contour": "body",
    "outer contour": "body",
}
#: parts named by TotalSegmentator's sub-tasks: the eight Couinaud liver segments, brain structures and ventricle
#: parts (matched with the word "brain" before them, :data:`maisi.data.vocabularies.TASK_CONTEXT`), and the tissue
#: types, which are the body's tissue outside the organs
PARTS.update({f"liver segment {i}": "liver" for i in range(1, 9)})
_BRAIN_PARTS = (
    "brainstem",
    "septum pellucidum",
    "cerebellum",
    "caudate nucleus",
    "lentiform nucleus",
    "insular cortex",
    "internal capsule",
    "central sulcus",
    "frontal lobe",
    "parietal lobe",
    "occipital lobe",
    "temporal lobe",
    "thalamus",
    "ventricle",
    "third ventricle",
    "fourth ventricle",
)
_SIDED_BRAIN_PARTS = (
    "ventricle frontal horn",
    "ventricle occipital horn",
    "ventricle body",
    "ventricle temporal horn",
    "ventricle trigone",
)
PARTS.update({f"brain {n}": "brain" for n in _BRAIN_PARTS})
PARTS.update({f"brain {n} {side}": "brain" for n in _SIDED_BRAIN_PARTS for side in ("left", "right")})
PARTS.update(dict.fromkeys(("subcutaneous fat", "torso fat", "skeletal muscle", "intermuscular fat"), "body"))
#: wholes that MAISI represents only in parts (name -> MAISI names of the parts)
SPLITS: dict[str, tuple[str, ...]] = {
    "left lung": ("left lung upper lobe", "left lung lower lobe"),
    "right lung": ("right lung upper lobe", "right lung middle lobe", "right lung lower lobe"),
    "lung": tuple(labels.NAMES[i] for i in labels.LUNG_LOBES),
    "lungs": tuple(labels.NAMES[i] for i in labels.LUNG_LOBES),
    "vertebrae": tuple(labels.NAMES[i] for i in labels.VERTEBRAE),
    "spine": tuple(labels.NAMES[i] for i in labels.VERTEBRAE),
    "vertebral column": tuple(labels.NAMES[i] for i in labels.VERTEBRAE),
    "ribs": tuple(labels.NAMES[i] for i in labels.RIBS),
    "rib": tuple(labels.NAMES[i] for i in labels.RIBS),
    "left ribs": tuple(labels.NAMES[i] for i in labels.RIBS[:12]),
    "right ribs": tuple(labels.NAMES[i] for i in labels.RIBS[12:]),
    "lung trachea bronchia": ("trachea", "airway"),
    "bowel": ("small bowel", "duodenum", "colon"),
    "intestine": ("small bowel", "duodenum", "colon"),
}
#: structures with no MAISI counterpart, with the reason when it is worth saying
LACKING: dict[str, str] = {
    "gtv": "a radiotherapy target volume, not an anatomical structure",
    "ctv": "a radiotherapy target volume, not an anatomical structure",
    "ptv": "a radiotherapy target volume, not an anatomical structure",
    "itv": "a radiotherapy target volume, not an anatomical structure",
    "tumor": "a tumour without its host organ (MAISI has lung, pancreatic, hepatic, colon tumours, bone lesion)",
    "lung nodules": "MAISI's 'lung tumor' is primary lung cancer; map nodules to it with a mapping file if meant",
    "lung vessels": "MAISI has no pulmonary vessel tree (only 'pulmonary vein')",
    "pulmonary artery": "MAISI has no pulmonary artery",
    "intervertebral discs": "MAISI has no intervertebral discs",
    "face": "MAISI has no face label",
    "brain subarachnoid space": "outside the brain parenchyma; MAISI has no label for it",
    "brain venous sinuses": "outside the brain parenchyma; MAISI has no label for it",
}
#: groups of structures MAISI has no label for, by reason (TotalSegmentator's head, neck, limb and lesion sub-tasks)
_LACKING_GROUPS: dict[str, tuple[str, ...]] = {
    "MAISI has no eye, orbit or optic nerve labels": (
        "eyeball", "eye", "eye lens", "optic nerve", "lateral rectus muscle", "medial rectus muscle",
        "superior rectus muscle", "inferior rectus muscle", "superior oblique muscle", "inferior oblique muscle",
        "levator palpebrae superioris",
    ),
    "MAISI has no head-and-neck glands, cavities, cartilages or vessels beyond the common carotids": (
        "parotid gland", "submandibular gland", "nasopharynx", "oropharynx", "hypopharynx", "nasal cavity",
        "auditory canal", "soft palate", "hard palate", "larynx air", "thyroid cartilage", "hyoid",
        "cricoid cartilage", "zygomatic arch", "styloid process", "internal carotid artery",
        "internal jugular vein",
    ),
    "MAISI has no head, neck, shoulder or limb muscles besides the gluteal, iliopsoas and autochthonous ones": (
        "masseter", "temporalis", "lateral pterygoid", "medial pterygoid", "tongue", "digastric",
        "sternocleidomastoid", "superior pharyngeal constrictor", "middle pharyngeal constrictor",
        "inferior pharyngeal constrictor", "trapezius", "platysma", "levator scapulae", "anterior scalene",
        "middle scalene", "posterior scalene", "sterno thyroid", "thyrohyoid", "prevertebral",
        "quadriceps femoris", "thigh medial compartment", "thigh posterior compartment", "sartorius", "deltoid",
        "supraspinatus", "infraspinatus", "subscapularis", "coracobrachial", "pectoralis minor",
        "serratus anterior", "teres major", "triceps brachii",
    ),
    "MAISI has no bones of the forearm, hand, lower leg or foot": (
        "patella", "tibia", "fibula", "tarsal", "metatarsal", "phalanges feet", "ulna", "radius", "carpal",
        "metacarpal", "phalanges hand",
    ),
    "MAISI has no label for it (use a mapping file if a MAISI structure is meant)": (
        "coronary arteries", "vertebrae body", "breast", "lung covid infiltrate", "intracerebral hemorrhage",
        "hip implant", "left ventricular outflow tract", "right coronary cusp", "left coronary cusp",
        "non coronary cusp",
    ),
}  # fmt: skip


@dataclass(frozen=True)
class NameMatch:
    """What a source name means in MAISI.

    Attributes:
        kind: ``exact`` (one MAISI structure), ``part`` (part of one; merged into it), ``split`` (a whole that
            MAISI splits; ``split_ids`` lists the parts), ``lacking`` (no MAISI counterpart), ``background`` or
            ``unknown`` (the name matched nothing in the table).
        maisi_id: the MAISI id for ``exact``, ``part`` and ``background`` (0); None otherwise.
        reason: why it is not ``exact`` (for reports and errors).
    """

    kind: Kind
    maisi_id: int | None = None
    split_ids: tuple[int, ...] = ()
    reason: str = ""


def split_words(name: str) -> list[str]:
    """Words of a name: camelCase split, lower case, any non-alphanumeric character a separator."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", str(name))
    return [w for w in re.split(r"[^0-9a-z]+", spaced.lower()) if w]


def name_key(name: str) -> tuple[Side, str]:
    """(side, sorted words) key of a name; see the module docstring."""
    words = [WORD_FOLDS.get(w, w) for w in split_words(name)]
    sides = {SIDE_WORDS[w] for w in words if w in SIDE_WORDS}
    side: Side = ""
    if len(sides) == 1:  # "left and right kidney" keeps its side words and matches nothing
        side = sides.pop()
        words = [w for w in words if w not in SIDE_WORDS]
    rest = [w for w in words if w not in STOP_WORDS]
    if len(rest) == 1 and _VERTEBRA.match(rest[0]):
        rest.append("vertebrae")
    return side, " ".join(sorted(rest))


@cache
def _tables() -> tuple[dict, dict, dict, dict]:
    maisi: dict[tuple[Side, str], int] = {}
    for name, i in labels.LABELS.items():
        if not name.startswith("dummy"):
            maisi[name_key(name)] = i
    maisi[("", "body")] = labels.BODY
    aliases: dict[tuple[Side, str], tuple[Side, str]] = {}
    for target, others in ALIASES.items():
        t_side, t_key = name_key(target)
        for other in others:
            o_side, o_key = name_key(other)
            aliases[(o_side or t_side, o_key)] = (t_side, t_key)
    parts = {name_key(k): labels.id_of(v) if v != "body" else labels.BODY for k, v in PARTS.items()}
    splits = {name_key(k): tuple(labels.id_of(n) for n in v) for k, v in SPLITS.items()}
    return maisi, aliases, parts, splits


def match_name(name: str) -> NameMatch:
    """Meaning of a structure name in MAISI ids, by the tables of this module (see the module docstring)."""
    words = split_words(name)
    if not words or words in (["background"], ["bg"], ["clear", "label"], ["unlabeled"], ["unlabelled"]):
        return NameMatch("background", labels.BACKGROUND)
    if len(words) == 1 and words[0] in ABBREVIATIONS:
        return NameMatch("exact", labels.id_of(ABBREVIATIONS[words[0]]))
    maisi, aliases, parts, splits = _tables()
    side, key = name_key(name)
    candidates = [(side, key)]
    if (side, key) in aliases:
        candidates.append(aliases[(side, key)])
    elif ("", key) in aliases:  # an alias given without side keeps the input's side
        candidates.append((side or aliases[("", key)][0], aliases[("", key)][1]))
    for cand in candidates:
        if cand in maisi:
            return NameMatch("exact", maisi[cand])
        if cand in parts:
            target = parts[cand]
            return NameMatch("part", target, reason=f"part of {labels.name_of(target)}")
        if cand in splits:
            ids = splits[cand]
            return NameMatch("split", None, ids, reason=_split_reason(ids))
    for cand in candidates:
        c_side, c_key = cand
        if not c_side:  # a structure MAISI has only per side, given without one
            both = [maisi.get((s, c_key)) for s in ("left", "right")]
            if all(both):
                ids = tuple(int(i) for i in both)
                return NameMatch("split", None, ids, reason=_split_reason(ids))
    lacking = LACKING.get(key) or LACKING.get(" ".join(words)) or _lacking_keys().get(key)
    if lacking:
        return NameMatch("lacking", reason=lacking)
    return NameMatch("unknown", reason="no MAISI structure of that name")


@cache
def _lacking_keys() -> dict[str, str]:
    """:data:`LACKING` and :data:`_LACKING_GROUPS` by name key (side words out, words sorted)."""
    keys = {name_key(n)[1]: reason for reason, names in _LACKING_GROUPS.items() for n in names}
    keys.update({name_key(n)[1]: reason for n, reason in LACKING.items()})
    return keys


def _split_reason(ids: tuple[int, ...]) -> str:
    names = [labels.name_of(i) for i in ids]
    shown = ", ".join(names[:3]) + (f" ... ({len(names)} parts)" if len(names) > 3 else "")
    return f"MAISI splits it into {shown}"
