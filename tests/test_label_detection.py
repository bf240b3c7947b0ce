"""A user's label map is never misread: read_label_map decides the vocabulary from evidence or refuses, reads
names files, refuses what is not a label map, and reports what each source id became."""

from __future__ import annotations

import json
import re

import nibabel as nib
import numpy as np
import pytest

from label_map_cases import (
    SEG,
    V2_NAMES,
    custom_ids,
    example,
    head_neck_oars,
    radiotherapy_chest,
    renumber,
    save,
    v2_to_v1,
)
from maisi import labels
from maisi.data.label_mapping import LabelMapping
from maisi.data.label_stats import label_stats
from maisi.data.labelmaps import format_report, read_label_map
from maisi.errors import DataError

ID = labels.LABELS


@pytest.fixture(scope="module")
def seg():
    return example()


@pytest.fixture(scope="module")
def expected(seg):
    """The example in MAISI ids, by the plain v2 table."""
    return LabelMapping.from_totalsegmentator().apply(seg[0])


@pytest.fixture(scope="module")
def cases(tmp_path_factory, seg):
    array, affine = seg
    tmp = tmp_path_factory.mktemp("maps")
    present = [int(i) for i in np.unique(array) if i]
    custom = custom_ids(present)
    (tmp / "custom_names.json").write_text(json.dumps({str(c): V2_NAMES[i] for i, c in custom.items()}))
    return {
        "v1": save(tmp / "v1.nii.gz", renumber(array, v2_to_v1()), affine),
        "mirrored": save(tmp / "mirrored.nii.gz", array[::-1], affine),
        "custom": save(tmp / "custom.nii.gz", renumber(array, custom), affine),
        "custom_names": tmp / "custom_names.json",
        "lps": save(tmp / "lps.nii.gz", array[::-1, ::-1], affine @ _flip_xy(array.shape)),
    }


def _flip_xy(shape):
    """Voxel flip of x and y that keeps every voxel's world position (the file is stored LPS)."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [shape[0] - 1, shape[1] - 1]
    return flip


def test_v2_is_detected_with_evidence(expected):
    read = read_label_map(SEG)
    assert read.vocabulary == "totalsegmentator-v2"
    np.testing.assert_array_equal(read.label, expected)
    assert read.label.dtype == np.uint8
    checks = read.report["evidence"]["checks"]
    assert checks["laterality"] == "196/196 hold" and checks["volume"] == "0 out of range"
    assert read.report["evidence"]["ruled_out"]["maisi"].startswith("ids [2, 18, 20")


def test_v1_is_detected_and_read_through_its_own_ids(cases, seg, expected):
    read = read_label_map(cases["v1"])
    assert read.vocabulary == "totalsegmentator-v1"
    kept = np.isin(seg[0], list(v2_to_v1()))  # classes v1 has
    np.testing.assert_array_equal(read.label, np.where(kept, expected, 0))
    v2_doubts = read.report["evidence"]["ruled_out"]["totalsegmentator-v2"]
    assert "common carotid artery" in v2_doubts or "mL" in v2_doubts  # the v2 reading is anatomically wrong


def test_the_world_frame_decides_laterality_not_the_voxel_order(cases, expected):
    read = read_label_map(cases["lps"])  # stored LPS, same anatomy
    assert read.vocabulary == "totalsegmentator-v2"
    np.testing.assert_array_equal(read.label, expected)


def test_a_mirrored_map_is_flagged_by_the_laterality_check(cases):
    with pytest.raises(DataError) as info:
        read_label_map(cases["mirrored"])
    message = str(info.value)
    assert "\n" not in message and "mirrored.nii.gz: cannot tell the label vocabulary" in message
    assert "left and right are swapped (196 of 196 left/right checks fail" in message
    read = read_label_map(cases["mirrored"], label_set="totalsegmentator-v2")  # given: read, with a warning
    assert any("left and right look swapped under totalsegmentator-v2" in w for w in read.warnings)
    assert read.report["warnings"][0]["code"] == "mirrored"


def test_custom_ids_that_are_valid_maisi_ids_are_refused_then_read_with_their_names(cases, expected):
    with pytest.raises(DataError) as info:
        read_label_map(cases["custom"])
    message = str(info.value)
    assert "\n" not in message and "custom.nii.gz: cannot tell the label vocabulary: as " in message
    assert (
        "pass --label-set with one of maisi, totalsegmentator-v1, totalsegmentator-v2 or a names file"
        in message
    )
    read = read_label_map(cases["custom"], label_set=cases["custom_names"])
    np.testing.assert_array_equal(read.label, expected)
    assert read.vocabulary == str(cases["custom_names"]) and read.report["evidence"]["decided_by"] == "given"
    assert read.report["evidence"]["checks"]["laterality"] == "196/196 hold"


def test_radiotherapy_structure_set_is_refused_and_read_with_names(tmp_path):
    label, affine, names = radiotherapy_chest()
    path = save(tmp_path / "rt.nii.gz", label, affine)
    with pytest.raises(
        DataError, match=r"id 3 \(left kidney\) \d+ mL > 1000, id 4 \(gallbladder\) \d+ mL > 300"
    ):
        read_label_map(path)
    (tmp_path / "rt.ctbl").write_text("".join(f"{k} {v} 0 0 0 255\n" for k, v in names.items()))
    with pytest.raises(DataError) as info:
        read_label_map(path, label_set=tmp_path / "rt.ctbl")
    assert "3 labels without a MAISI id under" in str(info.value)
    assert "3 Lung_L (MAISI splits it into left lung upper lobe, left lung lower lobe)" in str(info.value)
    assert "pass --unknown-labels background or body" in str(info.value)
    read = read_label_map(path, label_set=tmp_path / "rt.ctbl", unknown_labels="body")
    assert set(np.unique(read.label).tolist()) == {0, ID["spinal cord"], labels.BODY}
    rows = {r["source_id"]: r for r in read.report["labels"]}
    assert rows[2]["status"] == "mapped" and rows[2]["maisi_name"] == "spinal cord"
    assert rows[1]["status"] == "body" and "radiotherapy target volume" in rows[1]["note"]
    assert any(w.startswith("only 1 MAISI structure (spinal cord)") for w in read.warnings)


def test_head_neck_organs_at_risk_are_refused(tmp_path):
    label, affine, _ = head_neck_oars()
    with pytest.raises(
        DataError, match=r"hn\.nii\.gz: cannot tell the label vocabulary: as totalsegmentator-v2"
    ):
        read_label_map(save(tmp_path / "hn.nii.gz", label, affine))


def test_few_labels_without_evidence_are_refused(tmp_path, seg):
    only = np.where(seg[0] == 5, 5, 0).astype(np.uint8)  # liver in v2, right kidney in MAISI
    with pytest.raises(DataError) as info:
        read_label_map(save(tmp_path / "one.nii.gz", only, seg[1]))
    message = str(info.value)
    assert (
        "too little evidence for totalsegmentator-v2/totalsegmentator-v1 (0 left/right or head-to-foot"
        in message
    )
    assert "as maisi only one doubt: id 5 (right kidney) 1043 mL > 1000" in message
    spleen = np.where(seg[0] == 1, 1, 0).astype(np.uint8)  # spleen in both TotalSegmentators, liver in MAISI
    plausibly_both = (
        r"plausibly as maisi and as totalsegmentator-v2/totalsegmentator-v1, which differ on ids 1 \(liver"
    )
    with pytest.raises(DataError, match=plausibly_both):  # a cut-off 255 mL liver is possible
        read_label_map(save(tmp_path / "spleen.nii.gz", spleen, seg[1]))


def test_maisi_maps_are_detected(tmp_path, expected, seg):
    from maisi.data.body import add_body_from_label

    with_body = add_body_from_label(expected, (3.0, 3.0, 3.0))
    read = read_label_map(save(tmp_path / "maisi.nii.gz", with_body, seg[1]))
    assert read.vocabulary == "maisi" and np.array_equal(read.label, with_body)
    assert not any(w["code"] == "no-body" for w in read.report["warnings"])


# ------------------------------------------------------------------------------------- not a label map


def test_values_that_are_not_label_ids_are_refused(tmp_path, seg):
    affine = seg[1]
    cases = [
        (np.full((4, 4, 4), 0.5, np.float32), "non-integer values (e.g. 0.5"),
        (np.full((4, 4, 4), -1, np.int16), "negative ids (min -1)"),
        (np.zeros((4, 4, 4), np.uint8), "label map is empty"),
        (np.full((4, 4, 4), 70000, np.int32), "label id 70000 is larger than any label vocabulary allows"),
    ]
    for k, (array, problem) in enumerate(cases):
        with pytest.raises(DataError, match=rf"bad{k}\.nii\.gz: .*{re.escape(problem)}"):
            read_label_map(save(tmp_path / f"bad{k}.nii.gz", array, affine))
    ids = seg[0].copy()
    ids[0, 0, 0] = 250
    with pytest.raises(DataError, match=r"ids \[250\] are in no built-in vocabulary"):
        read_label_map(save(tmp_path / "odd.nii.gz", ids, affine))
    read = read_label_map(tmp_path / "odd.nii.gz", label_set="totalsegmentator", unknown_labels="background")
    assert (
        read.label[0, 0, 0] == 0
        and read.warnings[0] == "1 label set to background: 250 (not in the vocabulary)"
    )


def test_one_hot_stacks_are_refused_or_converted(tmp_path, seg, expected):
    array, affine = seg
    present = [int(i) for i in np.unique(array)]
    stack = np.stack([array == i for i in present], axis=3).astype(np.uint8)  # channel 0: background
    path = save(tmp_path / "onehot.nii", stack, affine)
    with pytest.raises(DataError, match=r"onehot\.nii: a 4-D stack of 42 volumes .* pass --one-hot"):
        read_label_map(path)
    (tmp_path / "channels.json").write_text(
        json.dumps({str(k): V2_NAMES[i] for k, i in enumerate(present) if i})
    )
    read = read_label_map(path, one_hot=True, label_set=tmp_path / "channels.json")
    np.testing.assert_array_equal(read.label, expected)
    assert read.warnings[0] == "one-hot: channel k became id k (channel 0 is the background)"
    no_background = save(tmp_path / "nobg.nii", stack[..., 1:], affine)
    read = read_label_map(no_background, one_hot=True, label_set=tmp_path / "channels.json")
    np.testing.assert_array_equal(read.label, expected)
    assert read.warnings[0] == "one-hot: channel k became id k + 1"
    stack[0, 0, 0, 1:3] = 1
    with pytest.raises(DataError, match=r"1 voxels are set in more than one channel"):
        read_label_map(save(tmp_path / "overlap.nii", stack, affine), one_hot=True)


# ------------------------------------------------------------------------------------------- the report


def test_report_lists_every_source_id_with_volume_and_fate(tmp_path, seg):
    array, affine = seg
    v1 = renumber(array, v2_to_v1())
    v1[array == 5] = 44  # give part of the map v1 heart-chamber ids: merged into MAISI heart
    v1[array == 1] = 45
    v1[array == 6] = 49  # pulmonary artery: MAISI has none
    path = save(tmp_path / "chambers.nii.gz", v1, affine)
    read = read_label_map(path, label_set="totalsegmentator-v1", unknown_labels="background")
    rows = {r["source_id"]: r for r in read.report["labels"]}
    assert rows[44] == {
        "source_id": 44,
        "source_name": "heart_myocardium",
        "voxels": 38634,
        "ml": pytest.approx(38634 * 0.027),
        "maisi_id": ID["heart"],
        "maisi_name": "heart",
        "status": "merged",
        "note": "with 45 into heart",
    }
    assert rows[49]["status"] == "dropped" and rows[49]["note"] == "MAISI has no pulmonary artery"
    assert rows[2]["status"] == "mapped" and rows[2]["maisi_name"] == "right kidney"
    assert read.report["unknown_labels"] == "background" and read.report["voxel_ml"] == 0.027
    assert sum(r["voxels"] for r in rows.values()) == int(np.count_nonzero(v1))
    json.dumps(read.report)  # JSON-ready
    table = format_report(read.report)
    assert "read as totalsegmentator-v1 (given" in table
    assert "44  heart_myocardium" in table and "merged (with 45 into heart)" in table


def test_detection_statistics_match_a_direct_computation(seg):
    array, affine = seg
    stats = label_stats(array, affine)
    ids, counts = np.unique(array, return_counts=True)
    np.testing.assert_array_equal(stats.ids, ids[1:])
    np.testing.assert_array_equal(stats.voxels, counts[1:])
    for k, i in enumerate(stats.ids.tolist()):
        voxels = np.argwhere(array == i)
        np.testing.assert_allclose(stats.centroid[k], affine[:3, :3] @ voxels.mean(axis=0) + affine[:3, 3])
    assert stats.voxel_ml == pytest.approx(0.027)
    assert (
        stats.truncated[stats.index(5)] and not stats.truncated[stats.index(4)]
    )  # liver cut, gallbladder whole


# ------------------------------------------------------------------------- the other readers of label maps


def test_generate_mask_records_the_report_and_refuses_custom_ids(cases):
    from maisi.generation import FileMaskSource

    info = FileMaskSource(SEG)(0).info
    assert info["label_mapping"]["vocabulary"] == "totalsegmentator-v2"
    assert len(info["label_mapping"]["labels"]) == 41
    with pytest.raises(DataError, match=r"custom\.nii\.gz: cannot tell the label vocabulary"):
        FileMaskSource(cases["custom"])


def test_masks_index_skips_custom_ids_with_the_reason(tmp_path, cases, capsys):
    import shutil

    from maisi.cli import main

    (tmp_path / "db").mkdir()
    shutil.copy(cases["custom"], tmp_path / "db" / "custom.nii.gz")
    shutil.copy(cases["v1"], tmp_path / "db" / "v1.nii.gz")
    assert main(["masks", "index", str(tmp_path / "db")]) == 0
    out = capsys.readouterr().out
    assert "1 masks indexed, 1 skipped" in out and "skipped custom.nii.gz: " in out
    assert "cannot tell the label vocabulary" in out
    index = json.loads((tmp_path / "db" / "masks_index.json").read_text())
    assert index["masks"][0]["vocabulary"] == "totalsegmentator-v1"


def test_generate_refuses_a_custom_map_under_auto_and_reads_it_with_its_names_file(
    cases, expected, tmp_path, capsys, tmp_path_factory
):
    """``maisi generate --mask custom.nii.gz``: refused in one line before any network is loaded; with
    ``--label-set custom_names.json`` the written label map is the v2 example in MAISI ids (plus body), the mapping
    report is in the sidecar, and ``--verbose`` prints its table."""
    from maisi.cli import main
    from test_generation_common import session_weights

    weights = session_weights(tmp_path_factory)
    args = ["generate", "--preset", "tiny", "--weights", str(weights), "--mask", str(cases["custom"])]
    args += ["--steps", "1", "--no-qc", "--no-preview"]
    assert main([*args, "--output-dir", str(tmp_path / "auto")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "custom.nii.gz: cannot tell the label vocabulary" in err
    assert not (tmp_path / "auto").exists()
    named = ["--label-set", str(cases["custom_names"]), "--verbose", "--output-dir", str(tmp_path / "named")]
    assert main([*args, *named]) == 0
    out = capsys.readouterr().out
    assert "source name" in out and "-> MAISI" in out and " liver " in out
    meta = json.loads((tmp_path / "named" / "sample_00000.json").read_text())
    report = meta["mask"]["info"]["label_mapping"]
    assert report["vocabulary"] == str(cases["custom_names"]) == meta["mask"]["info"]["vocabulary"]
    assert {row["maisi_name"] for row in report["labels"] if row["status"] == "mapped"} >= {"liver", "spleen"}
    written = np.asarray(nib.load(tmp_path / "named" / "sample_00000_label.nii.gz").dataobj)
    organs = set(np.unique(written).tolist()) - {0, 200}
    assert organs == set(np.unique(expected).tolist()) - {0}  # every organ of the example, as MAISI ids
