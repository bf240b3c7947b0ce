from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from maisi.data.nifti import Volume, load_dicom_series, load_nifti, load_pair, save_nifti, to_ras
from maisi.errors import DataError
from maisi.io import OutputExistsError

DATA = Path(__file__).parent / "data"
CT = DATA / "example_ct_sm.nii.gz"
SEG = DATA / "example_seg.nii.gz"
MR = DATA / "example_mr_sm.nii.gz"


def test_ct_loads_as_float32_ras_with_header_geometry():
    vol = load_nifti(CT)
    raw = nib.load(str(CT))
    assert vol.array.dtype == np.float32
    assert vol.shape == (122, 101, 30)
    assert vol.spacing == pytest.approx((3.0, 3.0, 3.0))
    np.testing.assert_allclose(vol.affine, raw.affine, atol=1e-6)  # already RAS on disk
    np.testing.assert_array_equal(vol.array, np.asanyarray(raw.dataobj).astype(np.float32))
    assert vol.path == str(CT)


def test_lps_mr_loads_as_ras_with_same_world_coordinates():
    raw = nib.load(str(MR))
    assert nib.aff2axcodes(raw.affine) == ("L", "P", "S")
    vol = load_nifti(MR)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.shape == raw.shape
    raw_data = np.asanyarray(raw.dataobj)
    nx, ny, _ = raw.shape
    for i, j, k in [(10, 20, 5), (0, 0, 0), (nx - 1, ny - 1, 19), (58, 45, 10)]:
        # L->R and P->A flips: on-disk voxel (i, j, k) is RAS voxel (nx-1-i, ny-1-j, k)
        ras = (nx - 1 - i, ny - 1 - j, k)
        world_raw = raw.affine[:3, :3] @ (i, j, k) + raw.affine[:3, 3]
        np.testing.assert_allclose(vol.world(ras), world_raw, atol=1e-4)
        assert vol.array[ras] == raw_data[i, j, k]


def test_to_ras_keeps_every_voxel_world_position_for_permuted_axes():
    rng = np.random.default_rng(0)
    array = rng.normal(size=(4, 5, 6)).astype(np.float32)
    # voxel axes: 0 -> Superior (flipped to inferior), 1 -> Right, 2 -> Posterior
    affine = np.array([[0, 2.0, 0, 10], [0, 0, -1.5, 20], [-3.0, 0, 0, 30], [0, 0, 0, 1]])
    out, new_affine = to_ras(array, affine)
    assert nib.aff2axcodes(new_affine) == ("R", "A", "S")
    assert out.shape == (5, 6, 4)
    src = Volume(array=array, affine=affine)
    dst = Volume(array=out, affine=new_affine)
    inv = np.linalg.inv(new_affine)
    for idx in np.ndindex(array.shape):
        w = src.world(idx)
        j = np.rint(inv[:3, :3] @ w + inv[:3, 3]).astype(int)
        np.testing.assert_allclose(dst.world(j), w, atol=1e-9)
        assert out[tuple(j)] == array[idx]


def test_label_dtypes_and_pair(tmp_path):
    image, label = load_pair(CT, SEG)
    assert label.array.dtype == np.uint8
    assert int(label.array.max()) == 117
    big = label.array.astype(np.int32) * 3  # ids up to 351 need int16
    p = save_nifti(tmp_path / "big.nii.gz", big, label.affine)
    assert load_nifti(p, kind="label").array.dtype == np.int16
    f = save_nifti(tmp_path / "f.nii", label.array.astype(np.float32), label.affine)
    loaded = load_nifti(f, kind="label")  # float storage with integer values is fine
    assert loaded.array.dtype == np.uint8
    np.testing.assert_array_equal(loaded.array, label.array)


def test_save_round_trip_sets_header_and_refuses_overwrite(tmp_path):
    vol = load_nifti(MR)
    p = save_nifti(tmp_path / "mr.nii.gz", vol.array, vol.affine)
    img = nib.load(str(p))
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert img.header.get_zooms() == pytest.approx((3.0, 3.0, 3.0))
    assert img.get_data_dtype() == np.float32
    back = load_nifti(p)
    np.testing.assert_allclose(back.affine, vol.affine, atol=1e-5)
    np.testing.assert_array_equal(back.array, vol.array)
    with pytest.raises(OutputExistsError, match="mr.nii.gz"):
        save_nifti(p, vol.array, vol.affine)
    save_nifti(p, np.zeros((2, 2, 2), dtype=bool), np.eye(4), overwrite=True)
    assert nib.load(str(p)).get_data_dtype() == np.uint8
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]  # no temp files left


def test_singleton_4d_is_squeezed(tmp_path):
    p = tmp_path / "s4.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((3, 4, 5, 1), np.float32), np.eye(4)), str(p))
    assert load_nifti(p).shape == (3, 4, 5)


def test_save_rejects_bad_name(tmp_path):
    with pytest.raises(DataError, match=r"x\.npy: output file name must end in \.nii"):
        save_nifti(tmp_path / "x.npy", np.zeros((2, 2, 2)), np.eye(4))


def test_dicom_message_when_missing(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "pydicom":
            raise ImportError("no pydicom")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(DataError, match=r"install maisi\[dicom\]"):
        load_dicom_series(tmp_path)


def _write_dicom_series(
    folder: Path, pixels: np.ndarray, *, spacing=(0.8, 0.6), dz=2.0, origin=(10.0, -20.0, 30.0)
):
    """Write pixels (rows, cols, slices) as a CT series in LPS, slices in a shuffled file order."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    series = generate_uid()
    for k in np.random.default_rng(0).permutation(pixels.shape[2]).tolist():
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "CT"
        ds.Rows, ds.Columns = pixels.shape[:2]
        ds.PixelSpacing = list(spacing)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [origin[0], origin[1], origin[2] + dz * k]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = 2
        ds.RescaleIntercept = -1024
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k], dtype=np.uint16).tobytes()
        pydicom.dcmwrite(str(folder / f"slice{k}.dcm"), ds, enforce_file_format=True)


def test_dicom_series_reads_as_ras_with_world_coordinates(tmp_path):
    pytest.importorskip("pydicom")
    rows, cols, slices = 4, 5, 3
    r, c, k = np.meshgrid(np.arange(rows), np.arange(cols), np.arange(slices), indexing="ij")
    pixels = 100 * r + 10 * c + k
    _write_dicom_series(tmp_path, pixels)
    vol = load_dicom_series(tmp_path)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.shape == (cols, rows, slices)
    assert vol.spacing == pytest.approx((0.6, 0.8, 2.0))
    inv = np.linalg.inv(vol.affine)
    for rr, cc, kk in [(0, 0, 0), (3, 4, 2), (1, 2, 1)]:
        lps = np.array([10.0 + 0.6 * cc, -20.0 + 0.8 * rr, 30.0 + 2.0 * kk])
        ras = lps * [-1, -1, 1]
        voxel = tuple(np.rint(inv[:3, :3] @ ras + inv[:3, 3]).astype(int))
        assert vol.array[voxel] == pytest.approx(2 * pixels[rr, cc, kk] - 1024)
