"""DICOM export: CT series + SEG round trips to the NIfTI pair, synthetic marking, reproducible UIDs, dciodvfy."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from test_export_common import affine_of, sample_arrays, sidecar_of, tree, write_run

pytest.importorskip("pydicom", reason="DICOM export needs pydicom (pip install maisi[dicom])")
pytest.importorskip("highdicom", reason="DICOM export needs highdicom (pip install maisi[dicom])")

import pydicom  # noqa: E402

from maisi.data.nifti import load_dicom_series, load_nifti, to_ras  # noqa: E402
from maisi.export import Sample, export_run, open_exporter  # noqa: E402
from maisi.export.dicom_seg import read_segmentation  # noqa: E402
from maisi.io import OutputExistsError  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    run = write_run(tmp_path_factory.mktemp("dicom") / "run", 2)
    summary = export_run(run, "dicom")
    return run, run / "dicom", summary


def test_series_and_seg_round_trip_to_the_nifti_pair(exported):
    run, out, summary = exported
    assert summary == {"format": "dicom", "path": str(out), "added": 2, "skipped": 0}
    for index in (0, 1):
        image = load_nifti(run / f"sample_0000{index}_image.nii.gz")
        label = load_nifti(run / f"sample_0000{index}_label.nii.gz", kind="label")
        series = load_dicom_series(out / f"sample_0000{index}" / "CT")
        assert series.shape == image.shape and np.abs(series.array - image.array).max() <= 1.0
        assert np.allclose(series.affine, image.affine, atol=1e-4)
        seg = read_segmentation(out / f"sample_0000{index}/SEG/SEG.dcm", out / f"sample_0000{index}/CT")
        assert np.array_equal(seg.array, label.array) and np.allclose(seg.affine, label.affine, atol=1e-4)


def test_series_is_marked_synthetic_with_a_pseudonym_and_hu_rescaling(exported):
    _, out, _ = exported
    files = sorted((out / "sample_00000/CT").glob("*.dcm"))
    assert len(files) == 12
    ds = pydicom.dcmread(files[0])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"] and ds.Modality == "CT"
    assert "SYNTHETIC" in ds.SeriesDescription and ds.BurnedInAnnotation == "NO"
    assert str(ds.PatientName) == f"SYNTHETIC^{ds.PatientID}" and ds.PatientID.startswith("MAISI-")
    assert ds.PatientBirthDate == "" and ds.PatientSex == ""
    assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0
    assert [float(v) for v in ds.ImageOrientationPatient] == [
        1,
        0,
        0,
        0,
        1,
        0,
    ]  # LPS: patient right on the left
    assert len({pydicom.dcmread(f).SOPInstanceUID for f in files}) == 12


def test_seg_has_one_named_coded_segment_per_present_label(exported):
    _, out, _ = exported
    seg = pydicom.dcmread(out / "sample_00000/SEG/SEG.dcm")
    ct = pydicom.dcmread(next((out / "sample_00000/CT").glob("*.dcm")))
    assert seg.Modality == "SEG" and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == ct.StudyInstanceUID and seg.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID
    segments = {s.SegmentLabel: s for s in seg.SegmentSequence}
    assert list(segments) == ["liver", "spleen", "hepatic tumor", "body"]
    liver = segments["liver"].SegmentedPropertyTypeCodeSequence[0]
    assert (liver.CodeValue, liver.CodingSchemeDesignator, liver.CodeMeaning) == ("10200004", "SCT", "Liver")
    tumor = segments["hepatic tumor"]
    assert tumor.SegmentedPropertyCategoryCodeSequence[0].CodeMeaning == "Morphologically Abnormal Structure"
    assert tumor.SegmentedPropertyTypeCodeSequence[0].CodeValue == "108369006"  # Neoplasm


def test_reexport_is_byte_identical_and_reruns_skip(exported, tmp_path):
    run, out, _ = exported
    assert export_run(run, "dicom")["skipped"] == 2
    export_run(run, "dicom", output=tmp_path / "again")
    assert tree(tmp_path / "again") == tree(out)


def test_other_sample_gets_other_uids_and_is_never_written_over_another(exported, tmp_path):
    _, out, _ = exported
    image, label = sample_arrays(0)
    other = Sample.from_arrays(image, label, affine_of(), sidecar_of(0, seed=8))
    exporter = open_exporter("dicom", tmp_path)
    exporter.add(other)
    a = pydicom.dcmread(out / "sample_00000/SEG/SEG.dcm")
    b = pydicom.dcmread(tmp_path / "sample_00000/SEG/SEG.dcm")
    assert a.StudyInstanceUID != b.StudyInstanceUID and a.PatientID != b.PatientID
    before = tree(out)
    with pytest.raises(OutputExistsError, match="sample_00000: already exists and holds another sample"):
        open_exporter("dicom", out).add(other)
    assert tree(out) == before


def test_an_oblique_non_ras_grid_keeps_its_geometry(tmp_path):
    image, label = sample_arrays(3)
    affine = np.array(
        [[0.0, -2.5, 0.0, 40.0], [1.8, 0.0, 0.6, -12.0], [0.0, 0.0, -3.0, 75.0], [0, 0, 0, 1.0]]
    )
    paths = open_exporter("dicom", tmp_path).add(Sample.from_arrays(image, label, affine, sidecar_of(3)))
    expect_image, expect_affine = to_ras(image, affine)
    series = load_dicom_series(paths["series"])
    assert np.array_equal(series.array, expect_image) and np.allclose(series.affine, expect_affine, atol=1e-4)
    seg = read_segmentation(paths["seg"], paths["series"])
    assert np.array_equal(seg.array, to_ras(label, affine)[0])


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian package dicom3tools)"
)
def test_series_and_seg_pass_dciodvfy(exported):
    _, out, _ = exported
    for path in [*sorted((out / "sample_00000/CT").glob("*.dcm"))[:2], out / "sample_00000/SEG/SEG.dcm"]:
        result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]
        assert result.returncode == 0 and not errors, f"{path.name}: {errors}"
