"""Deciding the vocabulary of a label map from evidence, or refusing with the evidence.

Each candidate vocabulary (:data:`maisi.data.vocabularies.AUTO_CANDIDATES`) is a reading of the map: ids it does not
define rule it out; otherwise :func:`maisi.data.plausibility.assess` checks what the reading says (laterality,
cranio-caudal order, volumes). Readings that give every present id the same MAISI id are one reading. The map is
read as a vocabulary only when that reading is plausible, backed by at least :data:`MIN_EVIDENCE` relations that
hold (or by a MAISI body envelope, id 200, larger than every organ), and every other reading fails at least
:data:`MARGIN_FINDINGS` checks. Anything else is a one-line :class:`~maisi.errors.DataError` naming the doubtful
labels and the ``--label-set`` values to try.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from maisi import labels
from maisi.data.label_stats import LabelStats
from maisi.data.plausibility import Assessment, assess
from maisi.data.vocabularies import AUTO_CANDIDATES, SUGGESTED, Vocabulary, builtin
from maisi.errors import DataError

#: relations that must hold before a reading is believed
MIN_EVIDENCE = 2
#: failed checks every other reading must show for the margin to be clear
MARGIN_FINDINGS = 2
NAMES_FILES = (
    "a names file (nnU-Net dataset.json, id->name JSON, ITK-SNAP or 3D Slicer label table, .seg.nrrd)"
)


@dataclass
class Reading:
    """One vocabulary applied to one label map.

    Attributes:
        vocabulary: the candidate.
        outside: present ids the vocabulary does not define (the reading is impossible when non-empty).
        mapping: present id -> MAISI id, for ids with a single MAISI id.
        assessment: the plausibility checks of ``mapping``.
        same_as: other candidates that give every present id the same meaning.
    """

    vocabulary: Vocabulary
    outside: list[int] = field(default_factory=list)
    mapping: dict[int, int] = field(default_factory=dict)
    assessment: Assessment | None = None
    same_as: list[str] = field(default_factory=list)

    def evidence(self, stats: LabelStats) -> int:
        """Relations that hold; a MAISI body envelope larger than every other label counts as enough."""
        held = sum(self.assessment.passed.values()) if self.assessment else 0
        body = [s for s, d in self.mapping.items() if d == labels.BODY]
        if body and self.vocabulary.name == "maisi":
            largest = max(int(stats.voxels[stats.index(s)]) for s in stats.ids.tolist())
            if any(int(stats.voxels[stats.index(s)]) == largest for s in body):
                held = max(held, MIN_EVIDENCE)
        return held


@dataclass(frozen=True)
class Detection:
    """The vocabulary chosen and the readings that were weighed."""

    vocabulary: Vocabulary
    chosen: Reading
    readings: list[Reading]

    def summary(self) -> dict:
        """JSON-ready evidence for reports."""
        out: dict = {"decided_by": "auto", "checks": self.chosen.assessment.summary()}
        if self.chosen.same_as:
            out["reads_identically"] = list(self.chosen.same_as)
        out["ruled_out"] = {r.vocabulary.name: _why_not(r) for r in self.readings if r is not self.chosen}
        return out


def read_as(stats: LabelStats, vocabulary: Vocabulary) -> Reading:
    """The reading of a label map (its :class:`LabelStats`) in one vocabulary, with the plausibility checks of
    the ids it can place (ids outside the vocabulary are listed; under ``auto`` they rule the reading out)."""
    present = stats.ids.tolist()
    outside = [i for i in present if i not in vocabulary.entries]
    mapping = {
        i: vocabulary.entries[i].maisi_id
        for i in present
        if i in vocabulary.entries and vocabulary.entries[i].maisi_id is not None
    }
    return Reading(vocabulary, outside=outside, mapping=mapping, assessment=assess(stats, mapping))


def detect_vocabulary(
    stats: LabelStats, *, source: str = "label map", candidates: Sequence[str] = AUTO_CANDIDATES
) -> Detection:
    """Choose the vocabulary of a label map from evidence (see the module docstring).

    Args:
        stats: statistics of the label map (:func:`maisi.data.label_stats.label_stats`).
        source: the file, for messages.
        candidates: built-in vocabulary names to decide between.

    Raises:
        DataError: one line naming ``source``, why no single vocabulary is supported, and what to pass.
    """
    if not len(stats.ids):
        raise DataError(f"{source}: label map is empty (every voxel is 0)")
    readings = [_read_if_possible(stats, builtin(name)) for name in candidates]
    possible = _merge_identical([r for r in readings if not r.outside], stats)
    if not possible:
        nowhere = sorted(set.intersection(*(set(r.outside) for r in readings)))
        if nowhere:
            reason = f"ids {_ids(nowhere)} are in no built-in vocabulary ({_ranges(readings)})"
        else:
            reason = "no built-in vocabulary holds all its ids: " + ", ".join(
                f"not {r.vocabulary.name} (ids {_ids(r.outside, 4)})" for r in readings
            )
        raise DataError(f"{source}: {reason}; pass --label-set with {NAMES_FILES}")
    plausible = [r for r in possible if r.assessment.plausible]
    ranked = sorted(possible, key=lambda r: (not r.assessment.plausible, -r.evidence(stats)))
    best = ranked[0]
    others = [r for r in possible if r is not best]
    clear = all(len(r.assessment.failed) >= MARGIN_FINDINGS for r in others)
    if len(plausible) == 1 and best.evidence(stats) >= MIN_EVIDENCE and clear:
        return Detection(best.vocabulary, best, readings)
    if len(plausible) > 1:
        rival = next(r for r in plausible if r is not best)
        reason = f"it reads plausibly as {_name(best)} and as {_name(rival)}, which differ on {_differ(best, rival)}"
    elif plausible:
        doubts = []
        n = best.evidence(stats)
        if n < MIN_EVIDENCE:
            doubts.append(
                f"too little evidence for {_name(best)} ({n} left/right or head-to-foot relation"
                f"{'s' if n != 1 else ''} to check among {len(stats.ids)} label{'s' if len(stats.ids) != 1 else ''})"
            )
        close = [r for r in others if len(r.assessment.failed) < MARGIN_FINDINGS]
        if close:
            doubts.append(f"as {_name(close[0])} only one doubt: {_doubts(close[0])}")
        reason = "; ".join(doubts)
    else:
        reason = "; ".join(f"as {_name(r)}, {_doubts(r)}" for r in ranked[:2])
    ruled = [r for r in readings if r.outside]
    if ruled:
        reason += "; " + ", ".join(f"not {r.vocabulary.name} (ids {_ids(r.outside, 4)})" for r in ruled)
    raise DataError(
        f"{source}: cannot tell the label vocabulary: {reason}; pass --label-set with one of "
        f"{', '.join(SUGGESTED)} or {NAMES_FILES}"
    )


def _read_if_possible(stats: LabelStats, vocabulary: Vocabulary) -> Reading:
    """A reading, without the checks when ids outside the vocabulary rule it out anyway."""
    outside = [i for i in stats.ids.tolist() if i not in vocabulary.entries]
    return Reading(vocabulary, outside=outside) if outside else read_as(stats, vocabulary)


def _merge_identical(readings: list[Reading], stats: LabelStats) -> list[Reading]:
    out: list[Reading] = []
    seen: dict[tuple, Reading] = {}
    for r in readings:
        key = tuple(
            (i, r.vocabulary.entries[i].maisi_id, r.vocabulary.entries[i].match.kind)
            for i in stats.ids.tolist()
        )
        if key in seen:
            seen[key].same_as.append(r.vocabulary.name)
        else:
            seen[key] = r
            out.append(r)
    return out


def _name(r: Reading) -> str:
    return "/".join([r.vocabulary.name, *r.same_as])


def _why_not(r: Reading) -> str:
    if r.outside:
        return f"ids {_ids(r.outside, 6)} not in it"
    if r.same_as:
        return "same reading"
    return _doubts(r) if not r.assessment.plausible else "also plausible"


def _doubts(r: Reading) -> str:
    a = r.assessment
    if a.mirrored:
        return (
            f"left and right are swapped ({a.count('laterality')} of {a.count('laterality') + a.passed['laterality']} "
            f"left/right checks fail, e.g. {a.failed[0].text}): is the image mirrored or its affine wrong?"
        )
    shown = [f.text for f in a.failed[:2]]
    more = len(a.failed) - len(shown)
    return ", ".join(shown) + (f" (+{more} more doubt{'s' if more > 1 else ''})" if more > 0 else "")


def _differ(a: Reading, b: Reading) -> str:
    ids = sorted(set(a.mapping) | set(b.mapping))
    diff = [i for i in ids if a.mapping.get(i) != b.mapping.get(i)]
    parts = [f"{i} ({a.vocabulary.meaning(i)} | {b.vocabulary.meaning(i)})" for i in diff[:4]]
    return "ids " + ", ".join(parts) + (" ..." if len(diff) > 4 else "")


def _ranges(readings: list[Reading]) -> str:
    parts = []
    for r in readings:
        ids = sorted(r.vocabulary.entries)
        if r.vocabulary.name == "maisi":
            parts.append(
                f"maisi: 1-{max(i for i in ids if i != labels.BODY)} and {labels.BODY} but not placeholders"
            )
        else:
            parts.append(f"{r.vocabulary.name}: 1-{max(ids)}")
    return ", ".join(parts)


def _ids(ids: Sequence[int], limit: int = 8) -> str:
    shown = ", ".join(str(i) for i in list(ids)[:limit])
    return f"[{shown}{', ...' if len(ids) > limit else ''}]"
