"""SNOMED CT codes of the MAISI labels, for the segment descriptions of a DICOM SEG.

Each MAISI name maps to the keyword of a concept in pydicom's SNOMED CT dictionary (``codes.SCT``), so the codes
themselves come from pydicom, not from here. A name with no concept of its own (a muscle, the left hip bone)
takes the nearest general concept (``Muscle``, ``Bone``); the laterality and the exact structure stay in the
segment label, which is always the MAISI name. Tumors, cysts and lesions are "morphologically abnormal
structures", everything else an "anatomical structure".
"""

from __future__ import annotations

import functools
import re

#: MAISI name -> ``codes.SCT`` keyword, where the name is not simply the keyword's words (``liver`` -> ``Liver``)
ALIASES: dict[str, str] = {
    "right kidney": "Kidney",
    "left kidney": "Kidney",
    "right adrenal gland": "AdrenalGland",
    "left adrenal gland": "AdrenalGland",
    "portal vein and splenic vein": "PortalVein",
    "small bowel": "SmallIntestine",
    "hepatic vessel": "BloodVessel",
    "lung tumor": "Neoplasm",
    "pancreatic tumor": "Neoplasm",
    "hepatic tumor": "Neoplasm",
    "colon cancer primaries": "Neoplasm",
    "bone lesion": "Lesion",
    "left kidney cyst": "Cyst",
    "right kidney cyst": "Cyst",
    "left lung upper lobe": "UpperLobeOfLung",
    "left lung lower lobe": "LowerLobeOfLung",
    "right lung upper lobe": "UpperLobeOfLung",
    "right lung middle lobe": "MiddleLobeOfRightLung",
    "right lung lower lobe": "LowerLobeOfLung",
    "vertebrae S1": "Vertebra",
    "left iliac artery": "IliacArtery",
    "right iliac artery": "IliacArtery",
    "left iliac vena": "IliacVein",
    "right iliac vena": "IliacVein",
    "left clavicula": "Clavicle",
    "right clavicula": "Clavicle",
    "left hip": "Bone",
    "right hip": "Bone",
    "left autochthon": "ErectorSpinaeMuscle",
    "right autochthon": "ErectorSpinaeMuscle",
    "left atrial appendage": "LeftAuricularAppendage",
    "left brachiocephalic vein": "BrachiocephalicVein",
    "right brachiocephalic vein": "BrachiocephalicVein",
    "costal cartilages": "CostalCartilage",
    "thyroid gland": "Thyroid",
    "airway": "TracheaAndBronchus",
    "body": "EntireBody",
}
#: names of morphologically abnormal structures
ABNORMAL = frozenset(
    {"lung tumor", "pancreatic tumor", "hepatic tumor", "colon cancer primaries", "bone lesion"}
    | {"left kidney cyst", "right kidney cyst"}
)
#: the concept of a structure with no code of its own
FALLBACK = "Tissue"
_PATTERNS = (
    (re.compile(r"^vertebrae ([CTL]\d+)$"), r"\1Vertebra"),
    (re.compile(r"^(left|right) rib \d+$"), "Rib"),
    (re.compile(r"^(left|right) (humerus|scapula|femur)$"), None),
    (re.compile(r"^(left|right) (gluteus \w+|iliopsoas)$"), "Muscle"),
)


@functools.cache
def _sct_keywords() -> frozenset[str]:
    from pydicom.sr.codedict import codes

    return frozenset(dir(codes.SCT))


def keyword_of(name: str) -> str:
    """The ``codes.SCT`` keyword of a MAISI label name (:data:`FALLBACK` when none fits)."""
    candidates = [ALIASES.get(name)]
    for pattern, replacement in _PATTERNS:
        match = pattern.match(name)
        if match:
            candidates.append(
                match.group(2).capitalize() if replacement is None else match.expand(replacement)
            )
    candidates.append("".join(w[:1].upper() + w[1:] for w in name.split()))
    return next((c for c in candidates if c and c in _sct_keywords()), FALLBACK)


def segment_codes(name: str):
    """``(category, type)`` pydicom codes of a MAISI label name for a DICOM SEG segment description."""
    from pydicom.sr.codedict import codes

    category = (
        codes.SCT.MorphologicallyAbnormalStructure if name in ABNORMAL else codes.SCT.AnatomicalStructure
    )
    return category, getattr(codes.SCT, keyword_of(name))
