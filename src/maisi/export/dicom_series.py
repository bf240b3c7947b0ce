"""A CT volume as a DICOM CT image series: one file per axial slice, geometry from the NIfTI affine.

maisi arrays are (X, Y, Z) with a voxel -> RAS world affine; DICOM patient coordinates are LPS. The volume is
first reordered so its voxel axes run towards patient Left, Posterior, Superior (the usual DICOM display: the
patient's right on the image's left, anterior at the top); then ``affine_lps = diag(-1, -1, 1, 1) @ affine``
gives, per slice k, Image Position = ``affine_lps @ (0, 0, k, 1)``, the row direction (along a row: increasing
column index = X) and column direction (down a column: increasing row index = Y) as the normalised first two
columns, and Pixel Spacing = (row spacing, column spacing) = (|Y column|, |X column|). HU are stored as unsigned
16-bit values through Rescale Slope/Intercept (slope 1 for integer HU, so they round-trip exactly).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from nibabel import orientations as ornt

from maisi import __version__
from maisi.errors import DataError
from maisi.export.dicom_identity import CONTENT_DATE, CONTENT_TIME, SyntheticIdentity
from maisi.io import atomic_path

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
SERIES_DESCRIPTION = "SYNTHETIC CT - maisi - not a patient"
MANUFACTURER = "maisi (synthetic)"


def to_lps_voxels(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorder (X, Y, Z) voxels to run towards L, P, S; returns the array and its voxel -> LPS world affine."""
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt(("L", "P", "S")))
    reordered = ornt.apply_orientation(array, transform)
    voxel_to_ras = np.asarray(affine, dtype=np.float64) @ ornt.inv_ornt_aff(transform, array.shape)
    return np.ascontiguousarray(reordered), RAS_TO_LPS @ voxel_to_ras


def hu_encoding(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Unsigned 16-bit stored values and (slope, intercept) with ``HU = stored * slope + intercept``.

    Integer-valued HU keep slope 1 (exact); other images are spread over the 16-bit range.
    """
    values = np.asarray(image, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise DataError("image has NaN/inf voxels; cannot write DICOM")
    lo, hi = float(values.min()), float(values.max())
    intercept = float(min(-1024.0, np.floor(lo)))
    integral = np.array_equal(values, np.rint(values))
    slope = 1.0 if integral and hi - intercept <= 65535 else max((hi - intercept) / 65535.0, 1e-6)
    stored = np.clip(np.rint((values - intercept) / slope), 0, 65535).astype(np.uint16)
    return stored, slope, intercept


def ct_series(image: np.ndarray, affine: np.ndarray, identity: SyntheticIdentity, *, derivation: str) -> list:
    """The CT image datasets of a volume, first slice inferior.

    Args:
        image: (X, Y, Z) HU, RAS.
        affine: (4, 4) voxel -> RAS world, mm.
        identity: UIDs and pseudonym of the sample.
        derivation: how the image was made (Derivation Description).

    Returns:
        pydicom ``Dataset`` objects, one per slice, with file meta information.
    """
    voxels, affine_lps = to_lps_voxels(np.asarray(image), affine)
    stored, slope, intercept = hu_encoding(voxels)
    steps = np.linalg.norm(affine_lps[:3, :3], axis=0)
    orientation = np.concatenate([affine_lps[:3, 0] / steps[0], affine_lps[:3, 1] / steps[1]])
    template = _ct_template(identity, derivation)
    template.Rows, template.Columns = int(voxels.shape[1]), int(voxels.shape[0])
    template.PixelSpacing = [_ds(steps[1]), _ds(steps[0])]
    template.SliceThickness = _ds(steps[2])
    template.ImageOrientationPatient = [_ds(v) for v in orientation]
    template.RescaleSlope, template.RescaleIntercept = _ds(slope), _ds(intercept)
    datasets = []
    for k in range(voxels.shape[2]):
        ds = copy.deepcopy(template)
        uid = identity.ct_instance_uid(k + 1)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
        ds.InstanceNumber = k + 1
        position = affine_lps @ np.array([0.0, 0.0, float(k), 1.0])
        ds.ImagePositionPatient = [_ds(v) for v in position[:3]]
        ds.SliceLocation = _ds(float(np.dot(np.cross(orientation[:3], orientation[3:]), position[:3])))
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # rows = Y, columns = X
        datasets.append(ds)
    return datasets


def _ct_template(identity: SyntheticIdentity, derivation: str):
    """The attributes every slice shares: patient, study, series, equipment, CT image and pixel modules."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.PatientName, ds.PatientID = identity.patient_name, identity.patient_id
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyInstanceUID, ds.StudyID, ds.AccessionNumber = identity.study_uid, "1", ""
    ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName = CONTENT_DATE, CONTENT_TIME, ""
    ds.StudyDescription = "SYNTHETIC - maisi generated image and label map"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "CT", identity.ct_series_uid, 1
    ds.SeriesDescription, ds.PatientPosition, ds.Laterality = SERIES_DESCRIPTION, "HFS", None
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = identity.frame_of_reference_uid, ""
    ds.Manufacturer, ds.ManufacturerModelName = MANUFACTURER, "MAISI latent diffusion"
    ds.SoftwareVersions, ds.DeviceSerialNumber = f"maisi {__version__}", "0"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.DerivationDescription = derivation[:1024]
    ds.BurnedInAnnotation, ds.RecognizableVisualFeatures = "NO", "NO"
    ds.ContentDate, ds.ContentTime = CONTENT_DATE, CONTENT_TIME
    ds.AcquisitionNumber, ds.KVP = None, None
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleType = "HU"
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    return ds


def _ds(value: float) -> str:
    """A Decimal String (at most 16 characters) for a float."""
    text = f"{float(value):.10g}"
    if len(text) > 16:
        text = f"{float(value):.8e}"
    return "0" if text == "-0" else text


def write_series(datasets: list, folder: Path) -> list[Path]:
    """Write the slices as ``folder/CT000001.dcm``, ... (each atomically); returns the paths."""
    paths = []
    for ds in datasets:
        path = folder / f"CT{int(ds.InstanceNumber):06d}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        paths.append(path)
    return paths
