"""The 19-value condition of the 2026 mask generator (``rflow-mask``): one anatomy size and patient demographics.

Layout (NV-Generate-CTMR ``scripts/sample_mask.py`` / ``LDMSampler.prepare_anatomy_size_condition``)::

    [ 14 anatomy sizes in SIZE_SLOTS_V2 order | age/120, sex (M = 1, F = 0), weight/200, BMI/75, height/200 ]

Sizes are relative values in [0, 1]; every slot not given is :data:`UNSET` (-1), and the unconditional input of
classifier-free guidance is the all-UNSET vector. The official request checks (``check_input_ct``) are kept:

- refused (:class:`~maisi.errors.RequestError`, one line): more than one anatomy target, an unknown anatomy or
  demographic field, a field given twice, a size outside [0, 1] (other than -1), sex other than M/F, a value
  outside [0, max] (age 120 years, weight 200 kg, BMI 75, height 200 cm), weight together with BMI;
- flagged (one-line warnings returned with the condition): a value outside the trained range
  (:data:`TRAINED_RANGES`), any height (almost never seen in training), an anatomy target with three or more
  demographics (out of distribution).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Real

from maisi import labels
from maisi.errors import RequestError

#: the v2 anatomy slots, in the official order: nine organs then five tumours
SIZE_SLOTS_V2: tuple[str, ...] = (
    "liver",
    "spleen",
    "stomach",
    "pancreas",
    "colon",
    "left kidney",
    "right kidney",
    "lung",
    "gallbladder",
    "lung tumor",
    "pancreatic tumor",
    "hepatic tumor",
    "colon cancer primaries",
    "bone lesion",
)
#: the demographic slots, in the official order (after the anatomy slots)
DEMOGRAPHICS: tuple[str, ...] = ("age", "sex", "weight", "bmi", "height")
#: length of the condition vector
CONDITION_DIM = len(SIZE_SLOTS_V2) + len(DEMOGRAPHICS)
#: value of a slot that is not conditioned on
UNSET = -1.0
#: normalisation (value / max) and the accepted range [0, max] of the numeric demographics
DEMOGRAPHIC_MAX: dict[str, float] = {"age": 120.0, "weight": 200.0, "bmi": 75.0, "height": 200.0}
#: the ranges seen in training; values outside are accepted with a warning
TRAINED_RANGES: dict[str, tuple[float, float]] = {
    "age": (19.0, 87.0),
    "weight": (22.0, 144.0),
    "bmi": (18.0, 63.0),
    "height": (160.0, 190.0),
}
UNITS: dict[str, str] = {"age": "years", "weight": "kg", "bmi": "kg/m^2", "height": "cm"}
#: sex codes of the sex slot
SEX_CODES: dict[str, float] = {"M": 1.0, "F": 0.0}
#: an anatomy target with at least this many demographics is flagged as out of distribution
CROWDED_DEMOGRAPHICS = 3

Pairs = Mapping[str, object] | Iterable[Sequence[object]]


@dataclass(frozen=True)
class ConditionV2:
    """A validated request of the v2 mask generator.

    Attributes:
        vector: the 19 network inputs (:data:`SIZE_SLOTS_V2` then :data:`DEMOGRAPHICS`, normalised; UNSET = -1).
        anatomy: the requested anatomy size (at most one entry), name -> relative size.
        demographics: the requested demographics in their units (sex as ``"M"`` / ``"F"``).
        warnings: one line per flagged value (the request is accepted).
    """

    vector: tuple[float, ...]
    anatomy: dict[str, float] = field(default_factory=dict)
    demographics: dict[str, float | str] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()

    @property
    def tumor(self) -> int | None:
        """MAISI id of the requested tumour (the official post-processing target), or None."""
        found = None
        for slot, value in zip(SIZE_SLOTS_V2, self.vector):
            if slot in labels.TUMORS and value != UNSET:
                found = labels.TUMORS[slot]
        return found


def unconditional_vector() -> tuple[float, ...]:
    """The unconditional input of classifier-free guidance: every slot UNSET."""
    return (UNSET,) * CONDITION_DIM


def _pairs(values: Pairs | None, what: str) -> list[tuple[str, object]]:
    """``{name: value}`` or ``[[name, value], ...]`` as a list of pairs (duplicates kept, to be refused)."""
    if values is None:
        return []
    items = values.items() if isinstance(values, Mapping) else values
    out = []
    for item in items:
        if isinstance(item, str) or not isinstance(item, Sequence) or len(item) != 2:
            raise RequestError(f"{what}: expected [name, value] pairs, got {item!r}")
        name, value = item
        if not isinstance(name, str):
            raise RequestError(f"{what}: a name must be a string, got {name!r}")
        out.append((name.strip().lower(), value))
    return out


def _number(name: str, value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real | str):
        raise RequestError(f"{what}: {name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise RequestError(f"{what}: {name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise RequestError(f"{what}: {name} must be a finite number, got {value!r}")
    return number


def _anatomy(values: Pairs | None) -> dict[str, float]:
    what = "anatomy size"
    pairs = _pairs(values, what)
    if len(pairs) > 1:
        names = ", ".join(n for n, _ in pairs)
        raise RequestError(
            f"{what}: the v2 mask model takes at most one anatomy target, got {len(pairs)} ({names})"
        )
    out = {}
    for name, value in pairs:
        if name not in SIZE_SLOTS_V2:
            raise RequestError(
                f"{what}: {name!r} is not controllable; choose one of {', '.join(SIZE_SLOTS_V2)}"
            )
        size = _number(name, value, what)
        if size != UNSET and not 0.0 <= size <= 1.0:
            raise RequestError(f"{what}: {name}={value} must be in [0, 1] or -1")
        out[name] = size
    return out


def _demographics(values: Pairs | None) -> tuple[dict[str, float | str], list[str]]:
    what = "demographics"
    out: dict[str, float | str] = {}
    warnings = []
    for name, value in _pairs(values, what):
        if name not in DEMOGRAPHICS:
            raise RequestError(f"{what}: unknown field {name!r}; fields are {', '.join(DEMOGRAPHICS)}")
        if name in out:
            raise RequestError(f"{what}: {name} is given twice")
        if name == "sex":
            code = str(value).strip().upper()
            if code not in SEX_CODES:
                raise RequestError(f"{what}: sex must be M or F, got {value!r}")
            out[name] = code
            continue
        number = _number(name, value, what)
        top, unit = DEMOGRAPHIC_MAX[name], UNITS[name]
        if not 0.0 <= number <= top:
            raise RequestError(f"{what}: {name}={number:g} {unit} is outside [0, {top:g}] {unit}")
        lo, hi = TRAINED_RANGES[name]
        if not lo <= number <= hi:
            warnings.append(
                f"{what}: {name}={number:g} {unit} is outside the trained range [{lo:g}, {hi:g}]; "
                "the model extrapolates"
            )
        out[name] = number
    if "weight" in out and "bmi" in out:
        raise RequestError(
            f"{what}: give weight or bmi, not both (the v2 mask model was not trained on them together)"
        )
    if "height" in out:
        warnings.append(f"{what}: height was almost never seen in training; its effect is unreliable")
    return out, warnings


def build_condition_v2(anatomy: Pairs | None = None, demographics: Pairs | None = None) -> ConditionV2:
    """Validate a request and build its 19-value condition.

    Args:
        anatomy: at most one anatomy size, ``{"liver": 0.6}`` or the official ``[["liver", 0.6]]``; the size is
            relative in [0, 1] (-1: the slot stays unset).
        demographics: ``{"age": 63, "sex": "F", "weight": 70}`` or the official ``controllable_demographics``
            pairs ``[["age", 63], ["sex", "F"]]``; age in years, sex M/F, weight in kg, BMI in kg/m^2, height in
            cm. Numbers may be given as strings (the command line).

    Raises:
        RequestError: one line naming the refused field (see the module doc for the rules).
    """
    sizes = _anatomy(anatomy)
    demo, warnings = _demographics(demographics)
    if sizes and len(demo) >= CROWDED_DEMOGRAPHICS:
        warnings.append(
            f"an anatomy size together with {len(demo)} demographics ({', '.join(demo)}) is heavily constrained "
            "and out of distribution; quality is not guaranteed"
        )
    vector = [UNSET] * CONDITION_DIM
    for name, size in sizes.items():
        vector[SIZE_SLOTS_V2.index(name)] = size
    for name, value in demo.items():
        slot = len(SIZE_SLOTS_V2) + DEMOGRAPHICS.index(name)
        # normalised to [0, 1] by fixed maxima (the official code also clips, a no-op after validation)
        vector[slot] = SEX_CODES[value] if name == "sex" else float(value) / DEMOGRAPHIC_MAX[name]
    return ConditionV2(vector=tuple(vector), anatomy=sizes, demographics=demo, warnings=tuple(warnings))


def parse_demographics(items: Sequence[str]) -> list[tuple[str, str]]:
    """Command-line ``age=63 sex=F weight=70`` as ``[("age", "63"), ...]`` for :func:`build_condition_v2`
    (duplicates kept, so that they are refused there).

    Raises:
        RequestError: for an item without ``=``.
    """
    out = []
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise RequestError(f"demographics: expected name=value (e.g. age=63 sex=F), got {item!r}")
        out.append((name.strip(), value.strip()))
    return out
