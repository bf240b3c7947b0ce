"""Organ median-HU quality check over a folder: the per-sample check of :mod:`maisi.generation.qc` (each organ's
median HU inside its mask against real-CT statistics), aggregated into pass rates."""

from __future__ import annotations

import os
from typing import Any

from maisi.evaluation.volumes import find_cases, read_pair, summarize


def evaluate_qc(
    pairs: str | os.PathLike,
    *,
    label_set: str = "auto",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the organ median-HU check on every CT image/label pair.

    Returns:
        ``{"pass_rate", "n", "organs": {organ: {"pass_rate", "n", "median_hu": summary, "low", "high"}},
        "cases": [{"name", "passed", "organs"}]}``; ``pass_rate`` is the fraction of volumes whose every checked
        organ passed (volumes with no checkable organ are left out of it).
    """
    from maisi.generation.qc import check_organ_medians

    rows = []
    organs: dict[str, dict[str, Any]] = {}
    for case in find_cases(pairs, need_labels=True):
        image, label = read_pair(case, label_set=label_set)
        check = check_organ_medians(image.array, label.array)
        rows.append(
            {
                "name": case.name,
                "passed": check["passed"] if check["organs"] else None,
                "organs": check["organs"],
            }
        )
        for organ, facts in check["organs"].items():
            entry = organs.setdefault(
                organ, {"passed": [], "median_hu": [], "low": facts["low"], "high": facts["high"]}
            )
            entry["passed"].append(facts["passed"])
            entry["median_hu"].append(facts["median_hu"])
    checked = [r["passed"] for r in rows if r["passed"] is not None]
    result = {
        "pairs": str(pairs),
        "n": len(rows),
        "n_checked": len(checked),
        "pass_rate": sum(checked) / len(checked) if checked else None,
        "organs": {
            organ: {
                "n": len(e["passed"]),
                "pass_rate": sum(e["passed"]) / len(e["passed"]),
                "low": e["low"],
                "high": e["high"],
                "median_hu": summarize(e["median_hu"]),
            }
            for organ, e in sorted(organs.items())
        },
        "cases": rows,
    }
    if out is not None:
        from maisi.io import write_json

        write_json(out, result, overwrite=overwrite)
    return result
