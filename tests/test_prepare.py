from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from maisi import labels
from maisi.data.datalist import read_datalist, write_datalist
from maisi.data.label_mapping import LabelMapping
from maisi.data.nifti import Volume, load_nifti, load_pair, save_nifti
from maisi.data.prepare import pad_to_multiple, pair_files, prepare, resample
from maisi.errors import DataError
from maisi.io import OutputExistsError

DATA = Path(__file__).parent / "data"
CT = DATA / "example_ct_sm.nii.gz"
SEG = DATA / "example_seg.nii.gz"
MR = DATA / "example_mr_sm.nii.gz"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    return prepare(images=[CT], labels=[SEG], output_dir=out)


def test_prepare_writes_datalist_and_keeps_world_coordinates(prepared):
    entries = read_datalist(prepared)
    assert len(entries) == 1
    entry = entries[0]
    assert Path(entry["image"]).name == "example_ct_sm_image.nii.gz"
    assert entry["dim"] == [128, 128, 128]
    assert entry["spacing"] == [3.0, 3.0, 3.0]
    assert entry["top_region_index"] == [0, 1, 0, 0]  # lungs present: chest
    assert entry["bottom_region_index"] == [0, 0, 1, 0]  # liver/kidneys, no pelvis marker: abdomen
    assert entry["modality"] == "ct" and entry["fold"] == 0
    raw = json.loads(prepared.read_text())["training"][0]
    assert raw["image"] == "example_ct_sm_image.nii.gz"  # stored relative to the datalist

    src_img, src_seg = load_pair(CT, SEG)
    img, lab = load_pair(entry["image"], entry["label"])
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert nib.load(entry["image"]).get_data_dtype() == np.int16
    # the source centre voxel sits at the same world point, with the same HU, in the prepared volume
    centre = np.array(src_img.shape) // 2
    world = src_img.world(centre)
    new = np.linalg.solve(img.affine[:3, :3], world - img.affine[:3, 3])
    np.testing.assert_allclose(new, np.rint(new), atol=1e-4)
    new = tuple(np.rint(new).astype(int))
    np.testing.assert_allclose(img.world(new), world, atol=1e-4)
    assert img.array[new] == src_img.array[tuple(centre)]
    # every source voxel is found at a fixed offset; padding is -1000 HU and background
    offset = tuple(n - c for n, c in zip(new, centre))
    inner = tuple(slice(o, o + s) for o, s in zip(offset, src_img.shape))
    np.testing.assert_array_equal(img.array[inner], src_img.array)
    pad = np.ones(img.shape, bool)
    pad[inner] = False
    assert (img.array[pad] == -1000).all() and (lab.array[pad] == 0).all()
    # labels: TotalSegmentator ids mapped to MAISI, body 200 fills the unlabelled envelope
    mapped = LabelMapping.from_totalsegmentator().apply(src_seg.array)
    inner_lab = lab.array[inner]
    np.testing.assert_array_equal(inner_lab[mapped > 0], mapped[mapped > 0])
    assert set(np.unique(inner_lab[mapped == 0]).tolist()) == {0, labels.BODY}
    assert (inner_lab == labels.BODY).sum() > 100_000


def test_prepare_resamples_to_spacing(tmp_path):
    datalist = prepare(images=[CT], labels=[SEG], output_dir=tmp_path, spacing=(2.0, 2.0, 4.5), divisor=None)
    entry = read_datalist(datalist)[0]
    img, lab = load_pair(entry["image"], entry["label"])
    assert img.shape == (183, 152, 20) and entry["dim"] == [183, 152, 20]
    assert img.spacing == pytest.approx((2.0, 2.0, 4.5))
    src = load_nifti(CT)
    # the field of view's outer corner is kept (183 * 2 = 366 = 122 * 3 ...) up to the shape rounding
    corner_src = src.world(np.array([-0.5, -0.5, -0.5]))
    np.testing.assert_allclose(img.world(np.array([-0.5, -0.5, -0.5])), corner_src, atol=1e-4)
    # a world point away from edges keeps its value within interpolation error
    world = src.world(np.array([60, 50, 15]))
    v = np.linalg.solve(img.affine[:3, :3], world - img.affine[:3, 3])
    assert np.all(v > 0)
    v0 = tuple(np.rint(v).astype(int))
    assert abs(img.array[v0] - src.array[60, 50, 15]) < 300
    liver = labels.LABELS["liver"]
    frac = (lab.array == liver).sum() * 2 * 2 * 4.5 / ((load_nifti(SEG, kind="label").array == 5).sum() * 27)
    assert 0.9 < frac < 1.1  # nearest-neighbour resampling keeps the liver volume


def test_resample_and_pad_keep_world_positions():
    rng = np.random.default_rng(1)
    affine = np.array([[-1.5, 0, 0, 10], [0, 2.0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    vol = Volume(array=rng.normal(size=(8, 6, 4)).astype(np.float32), affine=affine)
    same = resample(vol, (1.5, 2.0, 3.0), order=1)
    assert same is vol
    fine = resample(vol, (0.75, 1.0, 1.5), order=1)
    assert fine.shape == (16, 12, 8)
    # new voxel 2k+... centres: old voxel i lies between new voxels 2i and 2i+1, linear -> their mean is exact
    np.testing.assert_allclose(fine.world([1.5, 1.5, 1.5]), vol.world([0.5, 0.5, 0.5]), atol=1e-9)
    coarse = resample(vol, (3.0, 4.0, 6.0), order=0)
    assert coarse.shape == (4, 3, 2)
    np.testing.assert_allclose(coarse.world([-0.5, -0.5, -0.5]), vol.world([-0.5, -0.5, -0.5]), atol=1e-9)
    padded = pad_to_multiple(vol, 16, value=-7.0)
    assert padded.shape == (16, 16, 16)
    np.testing.assert_allclose(padded.world([4, 5, 6]), vol.world([0, 0, 0]), atol=1e-9)
    assert padded.array[4, 5, 6] == vol.array[0, 0, 0] and padded.array[0, 0, 0] == -7.0


def test_prepare_mr_without_labels_is_ras(tmp_path):
    datalist = prepare(images=[MR], output_dir=tmp_path, modality="mri", divisor=32)
    entry = read_datalist(datalist)[0]
    assert "label" not in entry and "top_region_index" not in entry
    img = load_nifti(entry["image"])
    assert img.shape == (128, 96, 32)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    raw = nib.load(str(MR))
    i = np.array([10, 20, 5])
    world = raw.affine[:3, :3] @ i + raw.affine[:3, 3]
    v = np.rint(np.linalg.solve(img.affine[:3, :3], world - img.affine[:3, 3])).astype(int)
    assert img.array[tuple(v)] == np.asanyarray(raw.dataobj)[tuple(i)]


def test_folder_pairing_and_folds(tmp_path):
    images, segs = tmp_path / "img", tmp_path / "seg"
    images.mkdir()
    segs.mkdir()
    for name in ("b", "a", "c"):
        shutil.copy(CT, images / f"{name}_0000.nii.gz")
        shutil.copy(SEG, segs / f"{name}_seg.nii.gz")
    triples = pair_files(images, segs)
    assert [(n, i.name, s.name) for n, i, s in sorted(triples)] == [
        ("a", "a_0000.nii.gz", "a_seg.nii.gz"),
        ("b", "b_0000.nii.gz", "b_seg.nii.gz"),
        ("c", "c_0000.nii.gz", "c_seg.nii.gz"),
    ]
    datalist = prepare(images=images, labels=segs, output_dir=tmp_path / "out", folds=2, divisor=None)
    entries = read_datalist(datalist)
    assert [Path(e["label"]).name for e in entries] == ["a_label.nii.gz", "b_label.nii.gz", "c_label.nii.gz"]
    assert [e["fold"] for e in entries] == [0, 1, 0]
    with pytest.raises(OutputExistsError, match="already exists"):
        prepare(images=images, labels=segs, output_dir=tmp_path / "out", divisor=None)
    (segs / "b_seg.nii.gz").rename(segs / "x_seg.nii.gz")
    with pytest.raises(DataError, match=r"no label file matches image\(s\) \[.*b_0000\.nii\.gz"):
        pair_files(images, segs)


def test_datalist_round_trip(tmp_path):
    (tmp_path / "v").mkdir()
    img = tmp_path / "v" / "x.nii.gz"
    img.write_bytes(b"")
    entries = [{"image": str(img), "dim": np.array([4, 4, 4]), "spacing": (1.0, 1, 2.5), "extra": "kept"}]
    p = write_datalist(tmp_path / "dl" / "list.json", entries)
    assert json.loads(p.read_text())["training"][0]["image"] == "../v/x.nii.gz"
    back = read_datalist(p)
    assert back == [
        {"image": str(img.resolve()), "dim": [4, 4, 4], "spacing": [1.0, 1, 2.5], "extra": "kept"}
    ]


# --------------------------------------------------------------------------------------------- bad inputs


def _nii(path: Path, array, affine=None) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


def _good_pair(tmp: Path) -> tuple[Path, Path]:
    label = np.zeros((8, 8, 8), np.uint8)
    label[2:6, 2:6, 2:6] = 5  # TotalSegmentator liver
    return _nii(tmp / "img.nii.gz", np.zeros((8, 8, 8), np.int16)), _nii(tmp / "lab.nii.gz", label)


def _missing(tmp):
    return prepare(images=[tmp / "nothere.nii.gz"], output_dir=tmp / "o")


def _not_gzip(tmp):
    (tmp / "junk.nii.gz").write_bytes(b"this is not a nifti file at all" * 20)
    return prepare(images=[tmp / "junk.nii.gz"], output_dir=tmp / "o")


def _truncated(tmp):
    data = CT.read_bytes()
    (tmp / "cut.nii.gz").write_bytes(data[: len(data) // 2])
    return prepare(images=[tmp / "cut.nii.gz"], output_dir=tmp / "o")


def _not_nifti_header(tmp):
    with gzip.open(tmp / "hdr.nii.gz", "wb") as f:
        f.write(b"\x00" * 400)
    return prepare(images=[tmp / "hdr.nii.gz"], output_dir=tmp / "o")


def _two_d(tmp):
    return prepare(images=[_nii(tmp / "flat.nii.gz", np.zeros((8, 8), np.int16))], output_dir=tmp / "o")


def _four_d(tmp):
    return prepare(images=[_nii(tmp / "four.nii.gz", np.zeros((8, 8, 8, 2), np.int16))], output_dir=tmp / "o")


def _nan(tmp):
    arr = np.zeros((8, 8, 8), np.float32)
    arr[1, 2, 3] = np.nan
    return prepare(images=[_nii(tmp / "nan.nii.gz", arr)], output_dir=tmp / "o")


def _shape_mismatch(tmp):
    img, _ = _good_pair(tmp)
    lab = _nii(tmp / "small.nii.gz", np.ones((8, 8, 7), np.uint8))
    return prepare(images=[img], labels=[lab], output_dir=tmp / "o")


def _affine_mismatch(tmp):
    img, _ = _good_pair(tmp)
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    lab = _nii(tmp / "moved.nii.gz", np.ones((8, 8, 8), np.uint8), shifted)
    return prepare(images=[img], labels=[lab], output_dir=tmp / "o")


def _empty_label(tmp):
    img, _ = _good_pair(tmp)
    lab = _nii(tmp / "empty.nii.gz", np.zeros((8, 8, 8), np.uint8))
    return prepare(images=[img], labels=[lab], output_dir=tmp / "o")


def _float_label(tmp):
    img, _ = _good_pair(tmp)
    lab = _nii(tmp / "prob.nii.gz", np.full((8, 8, 8), 0.5, np.float32))
    return prepare(images=[img], labels=[lab], output_dir=tmp / "o")


def _unknown_ids(tmp):
    img, _ = _good_pair(tmp)
    arr = np.zeros((8, 8, 8), np.uint8)
    arr[1:4, 1:4, 1:4] = 5
    arr[5, 5, 5] = 150
    lab = _nii(tmp / "odd.nii.gz", arr)
    return prepare(images=[img], labels=[lab], output_dir=tmp / "o", label_set="totalsegmentator")


def _bad_mapping_key(tmp):
    (tmp / "mapping.json").write_text(json.dumps({"1": "liver", "kidney": 5}))
    return LabelMapping.from_file(tmp / "mapping.json")


def _bad_mapping_value(tmp):
    (tmp / "mapping.json").write_text(json.dumps({"1": "livr"}))
    return LabelMapping.from_file(tmp / "mapping.json")


def _no_region(tmp):
    img, _ = _good_pair(tmp)
    arr = np.zeros((8, 8, 8), np.uint8)
    arr[2:6, 2:6, 2:6] = 4  # TotalSegmentator gallbladder: no region marker
    lab = _nii(tmp / "gb.nii.gz", arr)
    return prepare(images=[img], labels=[lab], output_dir=tmp / "o", label_set="totalsegmentator")


def _datalist_missing_image(tmp):
    (tmp / "dl.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}, {"label": "b.nii.gz"}]}))
    return read_datalist(tmp / "dl.json", check_files=False)


def _datalist_bad_dim(tmp):
    (tmp / "dl.json").write_text(json.dumps({"training": [{"image": "a.nii.gz", "dim": [1, 2]}]}))
    return read_datalist(tmp / "dl.json", check_files=False)


def _datalist_missing_file(tmp):
    (tmp / "dl.json").write_text(json.dumps({"training": [{"image": "gone.nii.gz"}]}))
    return read_datalist(tmp / "dl.json")


def _unmatched_folder(tmp):
    (tmp / "i").mkdir()
    (tmp / "l").mkdir()
    img, lab = _good_pair(tmp)
    shutil.copy(img, tmp / "i" / "case1.nii.gz")
    shutil.copy(lab, tmp / "l" / "case2_seg.nii.gz")
    return prepare(images=tmp / "i", labels=tmp / "l", output_dir=tmp / "o")


def _ambiguous_label_set(tmp):
    img, _ = _good_pair(tmp)
    arr = np.zeros((8, 8, 8), np.uint8)
    arr[2:6, 2:6, 2:6] = 5  # liver in TotalSegmentator, right kidney in MAISI
    return prepare(images=[img], labels=[_nii(tmp / "amb.nii.gz", arr)], output_dir=tmp / "o")


BAD_INPUTS = [
    (_missing, "nothere.nii.gz", "file not found"),
    (_not_gzip, "junk.nii.gz", "not a readable NIfTI file"),
    (_truncated, "cut.nii.gz", "corrupt or truncated voxel data"),
    (_not_nifti_header, "hdr.nii.gz", "not a readable NIfTI file"),
    (_two_d, "flat.nii.gz", "expected a 3D volume, got shape (8, 8)"),
    (_four_d, "four.nii.gz", "expected a 3D volume, got shape (8, 8, 8, 2)"),
    (_nan, "nan.nii.gz", "1 NaN/inf voxels"),
    (_shape_mismatch, "small.nii.gz", "label shape (8, 8, 7) differs from image"),
    (_affine_mismatch, "moved.nii.gz", "label affine differs from image"),
    (_empty_label, "empty.nii.gz", "label map is empty"),
    (_float_label, "prob.nii.gz", "label map has non-integer values (e.g. 0.5"),
    (
        _unknown_ids,
        "odd.nii.gz",
        "1 label without a MAISI id under totalsegmentator-v2: 150 (not in the vocabulary)",
    ),
    (_bad_mapping_key, "mapping.json", "key 'kidney' is not a non-negative integer label id"),
    (_bad_mapping_value, "mapping.json", "key '1': value 'livr' is not a MAISI label name"),
    (_no_region, "gb.nii.gz", "no organ that identifies a body region"),
    (_datalist_missing_image, "dl.json", "training[1]: missing required key 'image'"),
    (_datalist_bad_dim, "dl.json", "training[0]: key 'dim' must be 3 positive integers"),
    (_datalist_missing_file, "dl.json", "image file"),
    (_unmatched_folder, "case1.nii.gz", "no label file matches image(s)"),
    (_unmatched_folder, "case2_seg.nii.gz", "no image file matches label(s)"),
    (_ambiguous_label_set, "amb.nii.gz", "cannot tell the label vocabulary"),
]


@pytest.mark.parametrize(("make", "file", "problem"), BAD_INPUTS, ids=[b[0].__name__[1:] for b in BAD_INPUTS])
def test_bad_input_gives_one_line_error_naming_file(tmp_path, make, file, problem):
    with pytest.raises(DataError) as info:
        make(tmp_path)
    message = str(info.value)
    assert "\n" not in message
    assert file in message
    assert problem in message
    assert not (tmp_path / "o" / "datalist.json").exists()


def test_overwrite_and_save_guard(tmp_path):
    img, lab = _good_pair(tmp_path)
    kwargs = dict(
        images=[img], labels=[lab], output_dir=tmp_path / "o", divisor=None, label_set="totalsegmentator"
    )
    out = prepare(**kwargs)
    before = out.read_text()
    out2 = prepare(**kwargs, overwrite=True)
    assert out2 == out and out.read_text() == before
    with pytest.raises(OutputExistsError):
        save_nifti(tmp_path / "o" / "img_image.nii.gz", np.zeros((2, 2, 2)), np.eye(4))


def test_prepare_mr_with_user_mapping_and_lps_label(tmp_path):
    raw = nib.load(str(MR))
    arr = np.zeros(raw.shape, np.uint8)
    arr[40:70, 30:60, 5:15] = 7  # user id 7 = liver
    arr[10:20, 10:20, 2:4] = 9  # user id 9, not in the mapping
    lab = _nii(tmp_path / "mr_seg.nii.gz", arr, raw.affine)  # LPS on disk, like the image
    (tmp_path / "map.json").write_text(json.dumps({"7": "liver"}))
    with pytest.warns(
        UserWarning, match=r"mr_seg\.nii\.gz: 1 label set to background: 9 \(not in the vocabulary\)"
    ):
        datalist = prepare(
            images=[MR],
            labels=[lab],
            output_dir=tmp_path / "o",
            modality="mri_t2",
            label_set=tmp_path / "map.json",
            unknown_labels="background",
            divisor=None,
        )
    entry = read_datalist(datalist)[0]
    assert entry["top_region_index"] == entry["bottom_region_index"] == [0, 0, 1, 0]
    img, out = load_pair(entry["image"], entry["label"])
    assert nib.aff2axcodes(out.affine) == ("R", "A", "S")
    # the liver box keeps its world position: on-disk voxel (40, 30, 5) is RAS voxel (nx-1-40, ny-1-30, 5)
    nx, ny, _ = raw.shape
    assert out.array[nx - 1 - 40, ny - 1 - 30, 5] == labels.LABELS["liver"]
    assert (out.array == labels.LABELS["liver"]).sum() == 30 * 30 * 10
    # MRI body comes from the labels (closing + filling): a lone box is its own envelope
    assert not (out.array == labels.BODY).any()
    assert img.array.dtype == np.float32 and nib.load(entry["image"]).get_data_dtype() == np.float32


# ------------------------------------------------------------------------------------- label vocabularies


def test_datalist_records_the_mapping_report(prepared):
    entry = json.loads(prepared.read_text())["training"][0]
    report = entry["label_mapping"]
    assert report["vocabulary"] == "totalsegmentator-v2" and report["evidence"]["decided_by"] == "auto"
    assert report["file"] == str(SEG) and report["body"] == "added from the CT"
    assert len(report["labels"]) == 41 and report["warnings"] == []  # the CT gives the body: no such warning
    liver = next(r for r in report["labels"] if r["source_id"] == 5)
    assert liver == {
        "source_id": 5,
        "source_name": "liver",
        "voxels": 38634,
        "ml": 1043.118,
        "maisi_id": labels.LABELS["liver"],
        "maisi_name": "liver",
        "status": "mapped",
    }
    assert read_datalist(prepared)[0]["label_mapping"] == report  # the datalist reader keeps it


def test_prepare_refuses_custom_ids_under_auto_and_reads_them_with_names(tmp_path, prepared):
    from label_map_cases import V2_NAMES, custom_ids, example, renumber, save

    array, affine = example()
    custom = custom_ids([int(i) for i in np.unique(array) if i])
    lab = save(tmp_path / "example_ct_sm_seg.nii.gz", renumber(array, custom), affine)
    with pytest.raises(DataError, match=r"example_ct_sm_seg\.nii\.gz: cannot tell the label vocabulary"):
        prepare(images=[CT], labels=[lab], output_dir=tmp_path / "auto")
    assert not (tmp_path / "auto" / "datalist.json").exists()
    (tmp_path / "names.txt").write_text(
        "".join(f'{c} 0 0 0 1 1 1 "{V2_NAMES[i]}"\n' for i, c in custom.items())
    )
    out = prepare(images=[CT], labels=[lab], output_dir=tmp_path / "named", label_set=tmp_path / "names.txt")
    mine, reference = read_datalist(out)[0], read_datalist(prepared)[0]
    assert mine["label_mapping"]["vocabulary"] == str(tmp_path / "names.txt")
    assert mine["top_region_index"] == reference["top_region_index"]
    np.testing.assert_array_equal(
        load_nifti(mine["label"], kind="label").array, load_nifti(reference["label"]).array
    )


def test_prepare_cli_unknown_labels_one_hot_and_verbose(tmp_path, capsys):
    from label_map_cases import V2_NAMES, example, save
    from maisi.cli import main

    array, affine = example()
    present = [int(i) for i in np.unique(array)]
    stack = np.stack([array == i for i in present], axis=3).astype(np.uint8)
    lab = save(tmp_path / "example_ct_sm_seg.nii", stack, affine)
    names = {str(k): V2_NAMES[i] for k, i in enumerate(present) if i}
    names["1"] = "Brainstem"  # channel 1 (spleen) renamed to a structure MAISI lacks
    (tmp_path / "channels.json").write_text(json.dumps(names))
    args = [
        "prepare",
        "--images",
        str(CT),
        "--labels",
        str(lab),
        "--label-set",
        str(tmp_path / "channels.json"),
    ]
    assert main([*args, "--output-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "a 4-D stack of 42 volumes" in err and "pass --one-hot" in err and err.count("\n") == 1
    assert main([*args, "--output-dir", str(tmp_path / "b"), "--one-hot"]) == 2
    err = capsys.readouterr().err
    assert (
        "1 label without a MAISI id under" in err and "1 Brainstem (no MAISI structure of that name)" in err
    )
    rc = main(
        [*args, "--output-dir", str(tmp_path / "c"), "--one-hot", "--unknown-labels", "body", "--verbose"]
    )
    out, err = capsys.readouterr()
    assert rc == 0
    assert "maisi prepare: warning:" in err and "1 label set to body (200): 1 Brainstem" in err
    assert (
        "      1  Brainstem" in out and "200 body" in out and "body (no MAISI structure of that name)" in out
    )
    entry = read_datalist(tmp_path / "c" / "datalist.json")[0]
    row = entry["label_mapping"]["labels"][0]
    assert (row["source_name"], row["maisi_id"], row["status"]) == ("Brainstem", labels.BODY, "body")
