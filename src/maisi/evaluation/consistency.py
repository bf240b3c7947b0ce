"""Mask-image consistency: re-segment each generated image and compare with the mask it was generated from.

This is the MAISI paper's protocol: a segmenter that never saw the synthetic data labels each generated image and
the Dice score against the conditioning mask is reported per label (and for merged groups of large organs). The
segmenter is pluggable (:func:`load_segmenter`):

* a segmenter folder (:mod:`maisi.evaluation.segmenter`): maisi's own model trained by
  ``maisi evaluate train-segmenter`` or any MONAI network described by a ``config.json``;
* ``"totalsegmentator"``: the TotalSegmentator package when it is installed (its "total" task ids are mapped to
  MAISI ids);
* any callable ``segmenter(volume) -> (X, Y, Z) MAISI ids`` passed from Python.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from maisi import labels as maisi_labels
from maisi.errors import ConfigError
from maisi.evaluation.volumes import find_cases, read_pair, summarize

SegmenterFn = Callable[[Any], np.ndarray]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient ``2 |A n B| / (|A| + |B|)`` of two binary masks; NaN when both are empty."""
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"masks must have the same shape, got {a.shape} and {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return float("nan")
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def dice_per_label(
    prediction: np.ndarray, reference: np.ndarray, *, label_ids: Iterable[int] | None = None
) -> dict[int, float]:
    """Dice of each label id between two label maps.

    Args:
        prediction, reference: (X, Y, Z) integer label maps.
        label_ids: ids to score; default every non-zero id of ``reference``. An id present in neither map is
            skipped (its Dice is undefined).

    Returns:
        id -> Dice.
    """
    ids = (
        sorted({int(i) for i in np.unique(reference)} - {0}) if label_ids is None else sorted(set(label_ids))
    )
    out = {}
    for i in ids:
        value = dice(prediction == i, reference == i)
        if not np.isnan(value):
            out[i] = value
    return out


def dice_per_group(
    prediction: np.ndarray, reference: np.ndarray, groups: dict[str, Sequence[int]] | None = None
) -> dict[str, float]:
    """Dice of merged label groups (default :data:`maisi.labels.LARGE_ORGANS`: liver, spleen, kidneys, lungs,
    vertebrae) present in ``reference``."""
    groups = maisi_labels.LARGE_ORGANS if groups is None else groups
    out = {}
    for name, ids in groups.items():
        ref = np.isin(reference, ids)
        if ref.any():
            out[name] = dice(np.isin(prediction, ids), ref)
    return out


class TotalSegmentatorSegmenter:
    """TotalSegmentator ("total" task) through its Python API, output mapped to MAISI ids.

    Args:
        fast: use the 3 mm model.
        device: ``"cpu"``, ``"gpu"`` or ``"mps"`` (TotalSegmentator's names).
    """

    def __init__(self, *, fast: bool = True, device: str = "cpu") -> None:
        try:
            from totalsegmentator.python_api import totalsegmentator  # noqa: F401
        except ImportError:
            raise ConfigError(
                "segmenter 'totalsegmentator' needs the TotalSegmentator package (not installed)"
            ) from None
        from maisi.data.label_mapping import LabelMapping

        self.fast = fast
        self.device = device
        self.mapping = LabelMapping.from_totalsegmentator()
        self.labels = tuple(sorted(set(self.mapping.table.values()) - {0}))

    def __call__(self, volume: Any) -> np.ndarray:
        import nibabel as nib
        from totalsegmentator.python_api import totalsegmentator

        image = nib.Nifti1Image(volume.array.astype(np.float32), volume.affine)
        out = totalsegmentator(image, None, ml=True, fast=self.fast, device=self.device, quiet=True)
        ids = np.asarray(out.dataobj).astype(np.int64)
        return self.mapping.apply(ids, source="TotalSegmentator output", unknown="background")


def load_segmenter(spec: str | os.PathLike, *, device: str = "cpu") -> SegmenterFn:
    """A segmenter from ``"totalsegmentator"`` or a segmenter folder (see the module docstring)."""
    if str(spec).lower() == "totalsegmentator":
        return TotalSegmentatorSegmenter(device="gpu" if device.startswith("cuda") else device)
    from maisi.evaluation.segmenter import Segmenter

    return Segmenter.load(spec, device=device)


def evaluate_consistency(
    pairs: str | os.PathLike,
    segmenter: str | os.PathLike | SegmenterFn,
    *,
    label_ids: Iterable[int] | None = None,
    label_set: str = "auto",
    device: str = "cpu",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Dice per label between the re-segmentation of each generated image and its conditioning mask.

    Args:
        pairs: folder of generated ``*_image`` / ``*_label`` pairs (or a datalist).
        segmenter: see :func:`load_segmenter`, or a callable.
        label_set: vocabulary of label maps maisi did not generate (see :func:`~maisi.evaluation.volumes.read_pair`).
        label_ids: labels to score; default: those the segmenter knows (``segmenter.labels``) that are present
            in each mask, body (200) excluded.
        out: write the result as JSON here.

    A segmenter of merged groups (``segmenter.groups``, see :func:`maisi.training.tasks.segmenter.train_segmenter`)
    is scored on its groups only.

    Returns:
        ``{"cases": [{"name", "dice": {id: d}, "groups": {group: d}}], "labels": {id: {name, summary}},
        "groups": {group: summary}, "mean_dice", "group_mean_dice"}``; ``mean_dice`` is the mean over labels of
        each label's mean (None for a group segmenter), ``group_mean_dice`` the mean over the large-organ groups
        (liver, spleen, kidneys, lungs, vertebrae) of each group's mean.
    """

    seg = load_segmenter(segmenter, device=device) if isinstance(segmenter, str | os.PathLike) else segmenter
    known = getattr(seg, "labels", None)
    seg_groups = getattr(seg, "groups", None)
    wanted = set(label_ids) if label_ids is not None else (set(known) if known is not None else None)
    if seg_groups is not None:  # scored per group: its output is each group's first id
        groups_known = {name: list(ids) for name, ids in seg_groups.items()}
        wanted = set()
    else:
        groups_known = {
            name: [i for i in ids if wanted is None or i in wanted]
            for name, ids in maisi_labels.LARGE_ORGANS.items()
        }
        groups_known = {name: ids for name, ids in groups_known.items() if ids}
    cases = find_cases(pairs, need_labels=True)
    if progress:
        from tqdm.auto import tqdm

        cases = tqdm(cases, desc="consistency", unit="volume")
    rows = []
    per_label: dict[int, list[float]] = {}
    per_group: dict[str, list[float]] = {}
    for case in cases:
        image, label = read_pair(case, label_set=label_set)
        prediction = seg(image)
        present = {int(i) for i in np.unique(label.array)} - {0, maisi_labels.BODY}
        ids = present if wanted is None else present & wanted
        scores = dice_per_label(prediction, label.array, label_ids=ids)
        groups = dice_per_group(prediction, label.array, groups_known)
        rows.append({"name": case.name, "dice": {str(k): v for k, v in scores.items()}, "groups": groups})
        for k, v in scores.items():
            per_label.setdefault(k, []).append(v)
        for k, v in groups.items():
            per_group.setdefault(k, []).append(v)
    label_summary = {
        str(k): {"name": maisi_labels.name_of(k), **summarize(v)} for k, v in sorted(per_label.items())
    }
    means = [s["mean"] for s in label_summary.values() if "mean" in s]
    group_summary = {k: summarize(v) for k, v in sorted(per_group.items())}
    large = [
        group_summary[k]["mean"] for k in maisi_labels.LARGE_ORGANS if "mean" in group_summary.get(k, {})
    ]
    result = {
        "segmenter": str(segmenter) if isinstance(segmenter, str | os.PathLike) else type(seg).__name__,
        "pairs": str(pairs),
        "mean_dice": float(np.mean(means)) if means else None,
        "group_mean_dice": float(np.mean(large)) if large else None,
        "labels": label_summary,
        "groups": group_summary,
        "cases": rows,
    }
    if out is not None:
        from maisi.io import write_json

        write_json(out, result, overwrite=overwrite)
    return result
