"""The plain source-id -> MAISI-id table (LabelMapping) and the deprecated guess (detect_label_set)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from maisi import labels
from maisi.data.label_mapping import LabelMapping, detect_label_set
from maisi.data.nifti import load_nifti
from maisi.errors import DataError

DATA = Path(__file__).parent / "data"
TS_MAP = {int(k): v for k, v in json.loads((DATA / "totalsegmentator_v2_class_map.json").read_text()).items()}


@pytest.fixture(scope="module")
def seg():
    return load_nifti(DATA / "example_seg.nii.gz", kind="label")


def test_totalsegmentator_table_maps_every_class_once():
    table = LabelMapping.from_totalsegmentator().table
    assert set(table) == set(TS_MAP)
    assert all(m in labels.VALID_IDS and m != 0 for m in table.values())
    assert len(set(table.values())) == len(table)  # no two classes merge
    assert not set(table.values()) & {labels.LABELS[f"dummy{i}"] for i in range(1, 9)}
    assert table[21] == labels.LABELS["bladder"] and table[5] == labels.LABELS["liver"]


def test_every_label_of_example_seg_maps_to_a_maisi_id(seg):
    out = LabelMapping.from_totalsegmentator().apply(seg.array, source="example_seg")
    assert out.dtype == np.uint8 and out.shape == seg.shape
    ids = np.unique(seg.array)
    assert len(ids) == 42
    for i in ids.tolist():
        targets = np.unique(out[seg.array == i])
        assert len(targets) == 1
        assert (targets[0] == 0) == (i == 0)
    assert out[seg.array == 5].min() == labels.LABELS["liver"]
    labels.check_ids(np.unique(out), source="mapped")


def test_unknown_ids_error_or_warn(seg):
    arr = seg.array.copy()
    arr[0, 0, 0], arr[1, 0, 0] = 150, 180
    mapping = LabelMapping.from_totalsegmentator()
    with pytest.raises(
        DataError, match=r"^case7\.nii\.gz: label ids not in the totalsegmentator mapping: \[150, 180\]"
    ):
        mapping.apply(arr, source="case7.nii.gz")
    with pytest.warns(UserWarning, match=r"\[150, 180\]; set to background"):
        out = mapping.apply(arr, source="case7.nii.gz", unknown="background")
    assert out[0, 0, 0] == 0 and out[1, 0, 0] == 0


def test_identity_and_file_mapping(tmp_path):
    arr = np.array([[[0, 1, 200, 132]]], dtype=np.uint8)
    np.testing.assert_array_equal(LabelMapping.identity().apply(arr), arr)
    with pytest.raises(DataError, match=r"^x: label ids not in the maisi mapping: \[250\]"):
        LabelMapping.identity().apply(np.array([[[250]]]), source="x")
    p = tmp_path / "map.json"
    p.write_text(json.dumps({"1": "Liver", "2": 5, "7": "background", "9": "right lung upper lobe"}))
    m = LabelMapping.from_file(p)
    out = m.apply(np.array([[[0, 1, 2, 7, 9]]], dtype=np.int16))
    np.testing.assert_array_equal(out, [[[0, 1, 5, 0, 30]]])


def test_for_label_set():
    assert LabelMapping.for_label_set("maisi").name == "maisi"
    assert LabelMapping.for_label_set("totalsegmentator").table[21] == labels.LABELS["bladder"]
    v1 = LabelMapping.for_label_set("totalsegmentator-v1")
    assert v1.table[7] == labels.LABELS["aorta"] and v1.table[44] == labels.LABELS["heart"]  # a heart part
    assert 49 not in v1.table  # pulmonary artery: MAISI has none, so apply() reports it


def test_detect_label_set_keeps_its_old_behaviour(seg):
    assert detect_label_set(seg.array) == "totalsegmentator"  # has MAISI placeholder ids (2, 18, 20)
    maisi = LabelMapping.from_totalsegmentator().apply(seg.array)
    assert detect_label_set(maisi) == "maisi"  # ids > 117
    only_maisi = np.where(np.isin(maisi, [5, 14, 28, 29, 32]), maisi, 0)
    assert detect_label_set(only_maisi) == "unknown"
    assert detect_label_set(only_maisi, seg.affine) == "maisi"
    only_ts = np.where(np.isin(seg.array, [10, 11, 14]), seg.array, 0)  # lung lobes in TS ids
    assert detect_label_set(only_ts, seg.affine) == "totalsegmentator"
    mirrored = seg.affine @ np.diag([-1.0, 1, 1, 1])  # flipping x swaps left and right
    assert detect_label_set(only_ts, mirrored) == "unknown"
    assert detect_label_set(np.zeros((2, 2, 2), np.uint8)) == "unknown"
