"""Vocabularies by name: the synonym table, the built-in TotalSegmentator tables, and the names-file formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from maisi import labels, resources
from maisi.data.vocabularies import BUILTIN, Vocabulary, builtin, read_names_file, resolve
from maisi.data.vocabularies.names import match_name
from maisi.errors import DataError

DATA = Path(__file__).parent / "data"
V2 = {int(k): v for k, v in json.loads((DATA / "totalsegmentator_v2_class_map.json").read_text()).items()}
V1 = {int(k): v for k, v in json.loads((DATA / "totalsegmentator_v1_class_map.json").read_text()).items()}
ID = labels.LABELS


@pytest.mark.parametrize(
    ("name", "maisi"),
    [
        ("lung_upper_lobe_left", "left lung upper lobe"),
        ("Left lung, upper lobe", "left lung upper lobe"),
        ("upper lobe of left lung", "left lung upper lobe"),
        ("RML", "right lung middle lobe"),
        ("kidney_right", "right kidney"),
        ("Kidney R", "right kidney"),
        ("rt kidney", "right kidney"),
        ("rib_left_1", "left rib 1"),
        ("vertebrae_L5", "vertebrae L5"),
        ("L5", "vertebrae L5"),
        ("urinary_bladder", "bladder"),
        ("SpinalCord", "spinal cord"),
        ("Spinal-Cord", "spinal cord"),
        ("IVC", "inferior vena cava"),
        ("Oesophagus", "esophagus"),
        ("adrenal_gland_left", "left adrenal gland"),
        ("left suprarenal gland", "left adrenal gland"),
        ("clavicle_right", "right clavicula"),
        ("liver_tumor", "hepatic tumor"),
        ("Liver tumours", "hepatic tumor"),
        ("portal_vein_and_splenic_vein", "portal vein and splenic vein"),
        ("LIVER", "liver"),
    ],
)
def test_synonyms_reach_the_maisi_name(name, maisi):
    m = match_name(name)
    assert (m.kind, m.maisi_id) == ("exact", ID[maisi])


@pytest.mark.parametrize(
    ("name", "kind", "target"),
    [
        ("heart_atrium_left", "part", "heart"),
        ("heart_myocardium", "part", "heart"),
        ("body_trunc", "part", "body"),
        ("External", "part", "body"),
        ("Clear Label", "background", None),
        ("Lung_L", "split", ("left lung upper lobe", "left lung lower lobe")),
        ("lungs", "split", tuple(labels.NAMES[i] for i in labels.LUNG_LOBES)),
        ("kidney", "split", ("left kidney", "right kidney")),
        ("vertebrae", "split", tuple(labels.NAMES[i] for i in labels.VERTEBRAE)),
        ("GTV", "lacking", None),
        ("pulmonary_artery", "lacking", None),
        ("Brainstem", "unknown", None),
        ("Parotid_L", "lacking", None),
        ("left and right kidney", "unknown", None),
    ],
)
def test_wholes_parts_and_missing_structures_are_listed_not_guessed(name, kind, target):
    m = match_name(name)
    assert m.kind == kind
    if kind == "part":
        assert (
            m.maisi_id == (labels.BODY if target == "body" else ID[target])
            and m.reason == f"part of {target}"
        )
    elif kind == "split":
        assert m.maisi_id is None and sorted(m.split_ids) == sorted(ID[n] for n in target)
        assert m.reason.startswith("MAISI splits it into ")
    elif kind == "background":
        assert m.maisi_id == 0
    else:
        assert m.maisi_id is None and m.reason


def test_builtin_totalsegmentator_tables_match_the_published_class_maps():
    maps = resources.load_json("totalsegmentator_class_maps.json")
    assert {int(k): v for k, v in maps["total"].items()} == V2
    assert {int(k): v for k, v in maps["total_v1"].items()} == V1
    v2, v1 = builtin("totalsegmentator-v2"), builtin("totalsegmentator-v1")
    assert builtin("totalsegmentator") is v2 and builtin("totalsegmentator-total_v1") is v1
    assert all(e.match.kind == "exact" for e in v2.entries.values())  # every v2 class is a MAISI class
    assert len({e.maisi_id for e in v2.entries.values()}) == 117
    kinds = {V1[i]: e.match.kind for i, e in v1.entries.items()}
    assert {n for n, k in kinds.items() if k == "lacking"} == {"pulmonary_artery", "face"}
    assert {n for n, k in kinds.items() if k == "part"} == {
        "heart_myocardium", "heart_atrium_left", "heart_ventricle_left", "heart_atrium_right", "heart_ventricle_right"
    }  # fmt: skip
    # v1 and v2 agree on the classes they share, through the names
    by_name = {V2[i]: e.maisi_id for i, e in v2.entries.items()}
    assert all(e.maisi_id == by_name[V1[i]] for i, e in v1.entries.items() if V1[i] in by_name)
    # the ids differ from 7 on: the misreading this vocabulary split exists for
    assert (v1.entries[7].maisi_id, v2.entries[7].maisi_id) == (ID["aorta"], ID["pancreas"])
    assert (v1.entries[90].maisi_id, v2.entries[90].maisi_id) == (ID["left hip"], ID["brain"])


def test_builtin_maisi_vocabulary_has_no_placeholders():
    maisi = builtin("maisi")
    assert labels.BODY in maisi.entries and 1 in maisi.entries
    assert not {ID[f"dummy{i}"] for i in range(1, 9)} & set(maisi.entries)


def test_subtasks_are_named_vocabularies():
    assert "totalsegmentator-liver_vessels" in BUILTIN and "totalsegmentator-total_mr" in BUILTIN
    lv = builtin("totalsegmentator-liver_vessels")
    assert (lv.entries[1].maisi_id, lv.entries[2].maisi_id) == (ID["hepatic vessel"], ID["hepatic tumor"])
    body = builtin("totalsegmentator-body")
    assert {e.maisi_id for e in body.entries.values()} == {labels.BODY}
    mr = builtin("totalsegmentator-total_mr")
    assert mr.entries[10].match.kind == "split" and mr.entries[50].maisi_id == ID["brain"]


def test_the_subtasks_users_meet_are_read_by_their_names(tmp_path):
    """TotalSegmentator's head, neck, limb, tissue, brain and liver-segment tasks (ids from 1 in each, so named,
    never detected): parts merge into their MAISI organ, everything MAISI lacks is listed with its reason."""
    import nibabel as nib
    import numpy as np

    from maisi.data.labelmaps import read_label_map

    for task in ("liver_segments", "brain_structures", "ventricle_parts", "tissue_types", "appendicular_bones",
                 "oculomotor_muscles", "head_glands_cavities", "headneck_bones_vessels", "headneck_muscles",
                 "head_muscles", "thigh_shoulder_muscles", "face", "vertebrae_body", "coronary_arteries"):  # fmt: skip
        assert f"totalsegmentator-{task}" in BUILTIN
        vocabulary = builtin(f"totalsegmentator-{task}")
        assert not [e.source_name for e in vocabulary.entries.values() if e.match.kind == "unknown"], task
    liver = builtin("totalsegmentator-liver_segments")
    assert {e.maisi_id for e in liver.entries.values()} == {ID["liver"]} and len(liver.entries) == 8
    brain = builtin("totalsegmentator-brain_structures")
    meanings = {e.source_name: brain.meaning(i) for i, e in brain.entries.items()}
    assert meanings["ventricle"] == meanings["cerebellum"] == meanings["frontal_lobe"] == "brain"
    assert "outside the brain parenchyma" in meanings["subarachnoid_space"]
    parts = builtin("totalsegmentator-ventricle_parts")
    assert {e.maisi_id for e in parts.entries.values()} == {ID["brain"]}
    tissues = builtin("totalsegmentator-tissue_4_types")
    assert {e.maisi_id for e in tissues.entries.values()} == {labels.BODY}
    eyes = builtin("totalsegmentator-oculomotor_muscles")
    assert eyes.entries[1].maisi_id == ID["skull"] and "no eye" in eyes.meaning(2)
    assert "forearm, hand" in builtin("totalsegmentator-appendicular_bones").meaning(8)  # radius
    # the brain's "ventricle" is read as brain only in the brain tasks: a heart's stays a heart's, a bare one unknown
    assert (
        match_name("ventricle").kind == "unknown"
        and match_name("heart_ventricle_left").maisi_id == ID["heart"]
    )
    # a liver-segments map reads as the liver; an orbit map is refused under the default, listing what MAISI lacks
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:6, 2:6, 2:4], label[2:6, 2:6, 4:6] = 2, 7
    path = tmp_path / "segments.nii.gz"
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(path))
    read = read_label_map(path, label_set="totalsegmentator-liver_segments")
    assert set(np.unique(read.label)) == {0, ID["liver"]} and int((read.label == ID["liver"]).sum()) == 64
    with pytest.raises(DataError, match="eyeball_right.*no eye, orbit or optic nerve labels"):
        read_label_map(path, label_set="totalsegmentator-oculomotor_muscles")


def test_resolve_refuses_unknown_names(tmp_path):
    with pytest.raises(DataError, match=r"label set 'totalseg': neither a built-in vocabulary"):
        resolve("totalseg")
    with pytest.raises(DataError, match=r"not a built-in label vocabulary"):
        builtin("nope")


# ------------------------------------------------------------------------------------------------ names files

NAMES = {1: "liver", 2: "kidney_right", 3: "Lung_L", 7: "Mandible"}


def _id_to_name_json(tmp):
    (tmp / "names.json").write_text(json.dumps({str(k): v for k, v in NAMES.items()}))
    return tmp / "names.json"


def _nnunet_v2(tmp):
    data = {"channel_names": {"0": "CT"}, "labels": {"background": 0, **{v: k for k, v in NAMES.items()}}}
    (tmp / "dataset.json").write_text(json.dumps(data))
    return tmp / "dataset.json"


def _nnunet_v1(tmp):
    data = {"name": "x", "labels": {"0": "background", **{str(k): v for k, v in NAMES.items()}}}
    (tmp / "dataset.json").write_text(json.dumps(data))
    return tmp / "dataset.json"


def _itksnap(tmp):
    lines = ["# ITK-SNAP Label Description File", '    0     0    0    0        0  0  0    "Clear Label"']
    lines += [f'{k:5d}   255    0    0        1  1  1    "{v}"' for k, v in NAMES.items()]
    (tmp / "labels.txt").write_text("\n".join(lines) + "\n")
    return tmp / "labels.txt"


def _slicer_ctbl(tmp):
    lines = ["# Color table file labels.ctbl", "# 5 values", "0 Background 0 0 0 0"]
    lines += [f"{k} {v} 128 174 128 255" for k, v in NAMES.items()]
    (tmp / "labels.ctbl").write_text("\n".join(lines) + "\n")
    return tmp / "labels.ctbl"


def _slicer_csv(tmp):
    rows = ["LabelValue,Name,Color_R,Color_G,Color_B,Color_A"] + [
        f"{k},{v},0,0,0,255" for k, v in NAMES.items()
    ]
    (tmp / "labels.csv").write_text("\n".join(rows) + "\n")
    return tmp / "labels.csv"


def _seg_nrrd(tmp):
    header = ["NRRD0004", "type: unsigned char", "dimension: 3", "sizes: 2 2 2", "encoding: raw"]
    for n, (k, v) in enumerate(NAMES.items()):
        header += [f"Segment{n}_ID:=Segment_{k}", f"Segment{n}_LabelValue:={k}", f"Segment{n}_Layer:=0"]
        header += [f"Segment{n}_Name:={v}"]
    (tmp / "case.seg.nrrd").write_bytes(("\n".join(header) + "\n\n").encode() + bytes(8))
    return tmp / "case.seg.nrrd"


FORMATS = [_id_to_name_json, _nnunet_v2, _nnunet_v1, _itksnap, _slicer_ctbl, _slicer_csv, _seg_nrrd]


@pytest.mark.parametrize("make", FORMATS, ids=[f.__name__[1:] for f in FORMATS])
def test_names_file_formats(tmp_path, make):
    names = read_names_file(make(tmp_path))
    assert {k: v for k, v in names.items() if k} == NAMES
    vocab = resolve(make(tmp_path))
    assert isinstance(vocab, Vocabulary) and not vocab.builtin
    assert vocab.entries[1].maisi_id == ID["liver"] and vocab.entries[2].maisi_id == ID["right kidney"]
    assert vocab.entries[3].match.kind == "split" and vocab.entries[7].match.kind == "unknown"


def _nnunet_regions(tmp):
    (tmp / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "whole": [1, 2], "core": 2}}))
    return tmp / "dataset.json"


def _two_layers(tmp):
    header = "NRRD0004\nSegment0_Name:=a\nSegment0_LabelValue:=1\nSegment0_Layer:=0\n"
    header += "Segment1_Name:=b\nSegment1_LabelValue:=1\nSegment1_Layer:=1\n\n"
    (tmp / "x.seg.nrrd").write_text(header)
    return tmp / "x.seg.nrrd"


def _junk_table(tmp):
    (tmp / "t.txt").write_text("1 liver 1 2 3 4\nliver is red\n")
    return tmp / "t.txt"


def _bad_json_key(tmp):
    (tmp / "m.json").write_text(json.dumps({"1": "liver", "kidney": 5}))
    return tmp / "m.json"


def _bad_maisi_id(tmp):
    (tmp / "m.json").write_text(json.dumps({"1": 250}))
    return tmp / "m.json"


BAD = [
    (_nnunet_regions, "dataset.json", "are nnU-Net regions"),
    (_two_layers, "x.seg.nrrd", "segments lie in 2 layers"),
    (_junk_table, "t.txt", "line 2 is neither a 3D Slicer color table entry"),
    (_bad_json_key, "m.json", "key 'kidney' is not a non-negative integer label id"),
    (_bad_maisi_id, "m.json", "id 1 maps to 250, which is not a MAISI label id"),
]


@pytest.mark.parametrize(("make", "file", "problem"), BAD, ids=[b[0].__name__[1:] for b in BAD])
def test_bad_names_files_give_one_line_errors(tmp_path, make, file, problem):
    with pytest.raises(DataError) as info:
        resolve(make(tmp_path))
    assert "\n" not in str(info.value) and file in str(info.value) and problem in str(info.value)
