"""The 19-value condition of the 2026 mask generator: layout, normalisation, and the official request checks
(refusals as one-line errors, flags as one-line warnings)."""

from __future__ import annotations

import pytest

import reference_adagn as refv2
from maisi.errors import RequestError
from maisi.generation.masks.conditions_v2 import (
    CONDITION_DIM,
    DEMOGRAPHICS,
    SIZE_SLOTS_V2,
    UNSET,
    build_condition_v2,
    parse_demographics,
    unconditional_vector,
)


def test_slot_order_is_official():
    assert SIZE_SLOTS_V2 + DEMOGRAPHICS == refv2.OFFICIAL_V2_SLOTS
    assert CONDITION_DIM == 19 and unconditional_vector() == (UNSET,) * 19


@pytest.mark.parametrize(
    "anatomy, demographics",
    [
        ([], []),
        ([["liver", 0.6]], [["age", 63], ["sex", "F"], ["weight", 70]]),
        ([["bone lesion", 0.25]], [["sex", "m"], ["bmi", 24.5]]),
        ([["left kidney", -1]], [["height", 200], ["age", 0]]),
        ([], [["age", 120], ["sex", "M"]]),
    ],
)
def test_condition_equals_the_official_vector(anatomy, demographics):
    assert list(build_condition_v2(anatomy, demographics).vector) == refv2.official_condition(
        anatomy, demographics
    )


def test_mappings_and_command_line_values_give_the_same_condition():
    cli = build_condition_v2({"liver": "0.6"}, parse_demographics(["age=63", "sex=F", "weight=70"]))
    typed = build_condition_v2({"liver": 0.6}, {"age": 63, "sex": "F", "weight": 70})
    assert cli.vector == typed.vector
    assert cli.vector[0] == 0.6 and cli.vector[14:] == (63 / 120, 0.0, 70 / 200, UNSET, UNSET)
    assert cli.demographics == {"age": 63.0, "sex": "F", "weight": 70.0} and cli.anatomy == {"liver": 0.6}


@pytest.mark.parametrize(
    "anatomy, tumor",
    [({}, None), ({"liver": 0.5}, None), ({"bone lesion": 0.3}, 128), ({"lung tumor": 0.1}, 23)],
)
def test_tumor_target(anatomy, tumor):
    assert build_condition_v2(anatomy).tumor == tumor


#: (anatomy, demographics, the one-line error)
REFUSED = [
    (
        [["liver", 0.5], ["pancreas", 0.3]],
        None,
        "anatomy size: the v2 mask model takes at most one anatomy target, got 2 (liver, pancreas)",
    ),
    (
        {"heart": 0.5},
        None,
        "anatomy size: 'heart' is not controllable; choose one of liver, spleen, stomach, pancreas, colon, "
        "left kidney, right kidney, lung, gallbladder, lung tumor, pancreatic tumor, hepatic tumor, "
        "colon cancer primaries, bone lesion",
    ),
    ({"liver": 1.5}, None, "anatomy size: liver=1.5 must be in [0, 1] or -1"),
    ({"liver": "big"}, None, "anatomy size: liver must be a number, got 'big'"),
    (
        None,
        {"weight": 70, "bmi": 24},
        "demographics: give weight or bmi, not both (the v2 mask model was not trained on them together)",
    ),
    (None, {"age": 130}, "demographics: age=130 years is outside [0, 120] years"),
    (None, {"weight": -3}, "demographics: weight=-3 kg is outside [0, 200] kg"),
    (None, {"bmi": 80}, "demographics: bmi=80 kg/m^2 is outside [0, 75] kg/m^2"),
    (None, {"height": 210}, "demographics: height=210 cm is outside [0, 200] cm"),
    (None, {"sex": "X"}, "demographics: sex must be M or F, got 'X'"),
    (None, {"eyes": "blue"}, "demographics: unknown field 'eyes'; fields are age, sex, weight, bmi, height"),
    (None, [["age", 50], ["age", 60]], "demographics: age is given twice"),
    (None, {"age": float("nan")}, "demographics: age must be a finite number, got nan"),
    (None, {"age": True}, "demographics: age must be a number, got True"),
    (None, ["age"], "demographics: expected [name, value] pairs, got 'age'"),
]


@pytest.mark.parametrize("anatomy, demographics, message", REFUSED)
def test_refused_requests_give_one_line(anatomy, demographics, message):
    with pytest.raises(RequestError) as e:
        build_condition_v2(anatomy, demographics)
    assert str(e.value) == message and "\n" not in str(e.value)


#: (anatomy, demographics, the one-line warnings): accepted as the official sampler accepts them
FLAGGED = [
    (
        None,
        {"age": 95},
        ["demographics: age=95 years is outside the trained range [19, 87]; the model extrapolates"],
    ),
    (
        None,
        {"weight": 150},
        ["demographics: weight=150 kg is outside the trained range [22, 144]; the model extrapolates"],
    ),
    (
        None,
        {"bmi": 17},
        ["demographics: bmi=17 kg/m^2 is outside the trained range [18, 63]; the model extrapolates"],
    ),
    (
        None,
        {"height": 175},
        ["demographics: height was almost never seen in training; its effect is unreliable"],
    ),
    (
        None,
        {"height": 150},
        [
            "demographics: height=150 cm is outside the trained range [160, 190]; the model extrapolates",
            "demographics: height was almost never seen in training; its effect is unreliable",
        ],
    ),
    (
        {"pancreas": 0.4},
        {"age": 50, "sex": "F", "bmi": 30},
        [
            "an anatomy size together with 3 demographics (age, sex, bmi) is heavily constrained and out of "
            "distribution; quality is not guaranteed"
        ],
    ),
    ({"pancreas": 0.4}, {"age": 50, "sex": "F"}, []),
    (None, {"age": 19, "weight": 144}, []),
]


@pytest.mark.parametrize("anatomy, demographics, warnings", FLAGGED)
def test_flagged_requests_are_accepted_with_one_line_warnings(anatomy, demographics, warnings):
    condition = build_condition_v2(anatomy, demographics)
    assert list(condition.warnings) == warnings
    assert all("\n" not in w for w in condition.warnings)


@pytest.mark.parametrize("item", ["age", "age=", "=63"])
def test_malformed_command_line_demographics_are_refused(item):
    with pytest.raises(RequestError, match=r"demographics: expected name=value \(e.g. age=63 sex=F\), got"):
        parse_demographics([item])
