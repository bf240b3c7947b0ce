"""A MAISI label map as a DICOM Segmentation (highdicom) over its CT series, and back.

One BINARY segment per label present in the map, numbered 1..N in MAISI id order; each segment's label is the
MAISI name and its property codes come from :mod:`maisi.export.anatomy_codes`. Frame k of the segmentation
covers CT slice k (the same LPS voxel order as :func:`maisi.export.dicom_series.ct_series`); empty frames are
omitted, and reading fills them back with background.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from maisi import __version__, labels
from maisi.data.nifti import Volume, to_ras
from maisi.errors import DataError
from maisi.export.anatomy_codes import segment_codes
from maisi.export.dicom_identity import CONTENT_DATE, CONTENT_TIME, SyntheticIdentity
from maisi.export.dicom_series import MANUFACTURER, RAS_TO_LPS, to_lps_voxels
from maisi.export.label_set import present_ids
from maisi.io import atomic_path

SEG_DESCRIPTION = "SYNTHETIC SEG - maisi label map (the CT was generated from it)"


def segmentation(label: np.ndarray, affine: np.ndarray, ct_datasets: list, identity: SyntheticIdentity):
    """A highdicom ``Segmentation`` of a label map over the CT slices written from the same grid.

    Args:
        label: (X, Y, Z) MAISI ids, RAS, on the CT's grid.
        affine: (4, 4) voxel -> RAS world of both.
        ct_datasets: the CT slices, in :func:`~maisi.export.dicom_series.ct_series` order.
        identity: UIDs of the sample.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    ids = present_ids(label)
    if not ids:
        raise DataError("label map is empty; a DICOM SEG needs at least one segment")
    voxels, _ = to_lps_voxels(np.asarray(label), affine)
    lut = np.zeros(max(ids) + 1, dtype=np.uint8 if len(ids) < 256 else np.uint16)
    lut[ids] = np.arange(1, len(ids) + 1)
    # (slices, rows = Y, columns = X), contiguous: highdicom compares every frame with every segment number
    frames = np.ascontiguousarray(np.transpose(lut[voxels], (2, 1, 0)))
    algorithm = hd.AlgorithmIdentificationSequence(
        name="maisi", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    for number, label_id in enumerate(ids, start=1):
        name = labels.name_of(label_id)
        category, kind = segment_codes(name)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=ct_datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=identity.seg_series_uid,
        series_number=2,
        sop_instance_uid=identity.seg_instance_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="MAISI latent diffusion",
        software_versions=f"maisi {__version__}",
        device_serial_number="0",
        content_label="MAISI_LABELS",
        content_description="Synthetic label map, MAISI label names",
        series_description=SEG_DESCRIPTION,
        content_date=CONTENT_DATE,
        content_time=CONTENT_TIME,
    )
    _make_reproducible(seg, identity)
    return seg


def _make_reproducible(seg, identity: SyntheticIdentity) -> None:
    """Replace what highdicom makes from the clock or a random UID by values derived from the sample."""
    seg.InstanceCreationDate, seg.InstanceCreationTime = CONTENT_DATE, CONTENT_TIME
    for item in seg.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            item.ContributionDateTime = CONTENT_DATE + CONTENT_TIME
    uid = identity.uid("seg-dimension-organization")
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        item.DimensionOrganizationUID = uid


def write_segmentation(seg, path: Path) -> Path:
    """Write a segmentation atomically."""
    with atomic_path(path) as tmp:
        seg.save_as(tmp, enforce_file_format=True)
    return path


def read_segmentation(seg_path: str | os.PathLike, series_folder: str | os.PathLike) -> Volume:
    """A DICOM SEG written by :func:`segmentation` as a MAISI label map on its CT series' grid (RAS).

    Raises:
        DataError: a segment whose label is not a MAISI name, or a series the SEG does not reference.
    """
    import highdicom as hd
    import pydicom

    seg = hd.seg.segread(str(seg_path))
    series = [
        pydicom.dcmread(str(p), stop_before_pixels=True) for p in sorted(Path(series_folder).glob("*.dcm"))
    ]
    if not series:
        raise DataError(f"{series_folder}: no DICOM files")
    row, col = (
        np.asarray(v, dtype=np.float64) for v in np.reshape(series[0].ImageOrientationPatient, (2, 3))
    )
    normal = np.cross(row, col)
    series.sort(key=lambda d: float(np.dot(normal, np.asarray(d.ImagePositionPatient, dtype=np.float64))))
    numbers = seg.get_pixels_by_source_instance(
        [d.SOPInstanceUID for d in series],
        combine_segments=True,
        relabel=False,
        assert_missing_frames_are_empty=True,
    )
    lut = np.zeros(max(seg.segment_numbers) + 1, dtype=np.uint8)
    for number in seg.segment_numbers:
        lut[number] = labels.id_of(seg.get_segment_description(number).segment_label)
    voxels = np.transpose(lut[numbers], (2, 1, 0))  # (columns, rows, slices)
    dy, dx = (float(v) for v in series[0].PixelSpacing)
    first = np.asarray(series[0].ImagePositionPatient, dtype=np.float64)
    last = np.asarray(series[-1].ImagePositionPatient, dtype=np.float64)
    affine_lps = np.eye(4)
    affine_lps[:3, 0], affine_lps[:3, 1], affine_lps[:3, 3] = row * dx, col * dy, first
    affine_lps[:3, 2] = (last - first) / max(len(series) - 1, 1) if len(series) > 1 else normal
    array, affine = to_ras(voxels, RAS_TO_LPS @ affine_lps)
    return Volume(array=np.ascontiguousarray(array), affine=affine, path=str(seg_path))
