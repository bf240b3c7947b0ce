"""Reading and writing NIfTI volumes in RAS orientation.

Every array maisi handles is (X, Y, Z) with the voxel axes pointing (as closely as the scanner geometry allows)
Right, Anterior, Superior: :func:`load_nifti` reorients on load and updates the affine so that each voxel keeps
its world (scanner) coordinate. Errors caused by the file raise :class:`~maisi.errors.DataError` with one line
naming the file and the problem.
"""

from __future__ import annotations

import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt
from nibabel.fileholders import FileHolder
from nibabel.openers import ImageOpener

from maisi.errors import DataError
from maisi.io import atomic_path

#: Largest mismatch (mm) tolerated between the affines of an image and its label map.
AFFINE_TOLERANCE_MM = 1e-3
NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class Volume:
    """A 3D array with its voxel-to-world (RAS+, mm) affine.

    Attributes:
        array: (X, Y, Z) voxel values; float32 for images, an integer type for label maps.
        affine: (4, 4) float64 voxel index -> world coordinate (RAS+, mm) matrix.
        path: the file it was read from, or None.
    """

    array: np.ndarray
    affine: np.ndarray
    path: str | None = None

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size (mm) along X, Y, Z: the norms of the affine's first three columns."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)

    def world(self, voxel) -> np.ndarray:
        """World coordinates (mm) of voxel indices ``voxel`` of shape (..., 3)."""
        v = np.asarray(voxel, dtype=np.float64)
        return v @ self.affine[:3, :3].T + self.affine[:3, 3]


def is_nifti_path(path: str | os.PathLike) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def nifti_stem(path: str | os.PathLike) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    name = Path(path).name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Permute/flip the voxel axes of ``array`` to the closest RAS orientation and update ``affine``.

    World coordinates of every voxel are unchanged; only the voxel indexing changes.

    Args:
        array: (X, Y, Z, ...) voxel array (extra trailing axes are carried along).
        affine: (4, 4) voxel -> world matrix.

    Returns:
        The reoriented array (a view when possible) and its (4, 4) affine.
    """
    affine = np.asarray(affine, dtype=np.float64)
    transform = ornt.ornt_transform(ornt.io_orientation(affine), ornt.axcodes2ornt("RAS"))
    if np.array_equal(transform, [[0, 1], [1, 1], [2, 1]]):
        return array, affine
    new_array = ornt.apply_orientation(array, transform)
    new_affine = affine @ ornt.inv_ornt_aff(transform, array.shape[:3])
    return new_array, new_affine


#: largest volume read, in voxels (1024^3: twice the biggest MAISI output on every axis, 4 GiB as float32)
MAX_VOXELS = 1024**3


def check_header(img: nib.Nifti1Image, path: Path) -> None:
    """Refuse, before reading voxels, a header whose shape is not a 3D volume (or a 4D one with one frame), whose
    voxel count or memory (as float32) exceeds :data:`MAX_VOXELS` or the memory available, or whose affine is
    singular or not finite."""
    from maisi.memory.budget import available_memory, format_bytes

    shape = tuple(int(n) for n in img.header.get_data_shape())
    if len(shape) < 3:
        raise DataError(f"{path}: expected a 3D volume, got shape {shape}")
    voxels = int(np.prod(shape, dtype=np.int64))
    need = voxels * max(4, img.get_data_dtype().itemsize)
    room = available_memory("cpu")
    if voxels > MAX_VOXELS or need > room:
        raise DataError(
            f"{path}: the header claims {' x '.join(map(str, shape))} voxels ({format_bytes(need)} in memory), "
            f"over the limit ({MAX_VOXELS:,} voxels, {format_bytes(room)} available); a corrupt or hostile file?"
        )
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(f"{path}: invalid (singular or non-finite) affine in the header")


def load_nifti(
    path: str | os.PathLike,
    *,
    kind: Literal["image", "label"] = "image",
    allow_empty: bool = False,
) -> Volume:
    """Read a 3D NIfTI file as a RAS :class:`Volume`.

    A 4D file whose 4th dimension is 1 is squeezed to 3D.

    Args:
        path: ``.nii`` or ``.nii.gz`` file.
        kind: ``"image"`` returns float32 voxels (scaling slope/intercept applied, NaN/inf rejected);
            ``"label"`` returns integer ids (uint8 when all ids < 256, else int16/int32) and rejects
            non-integer, negative and (unless ``allow_empty``) all-zero label maps.
        allow_empty: accept a label map without any non-zero voxel.

    Raises:
        DataError: naming the file, when it is missing, unreadable, not 3D, or has invalid voxel values.
    """
    if kind not in ("image", "label"):
        raise ValueError(f"kind must be 'image' or 'label', got {kind!r}")
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        raise DataError(f"{p}: is a folder, expected a .nii or .nii.gz file")
    try:
        img = nib.load(str(p))
    except Exception as e:  # nibabel raises ImageFileError, gzip errors, struct errors... for junk files
        raise DataError(f"{p}: not a readable NIfTI file ({_reason(e)})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise DataError(f"{p}: not a NIfTI file (nibabel read it as {type(img).__name__})")
    check_header(img, p)  # before any voxel is read: a header may claim more than memory (or be a gzip bomb)
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # truncated or corrupt gzip stream, short file
        raise DataError(f"{p}: corrupt or truncated voxel data ({_reason(e)})") from None

    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DataError(f"{p}: expected a 3D volume, got shape {tuple(data.shape)}")
    if data.dtype.fields is not None or np.iscomplexobj(data):
        raise DataError(f"{p}: unsupported voxel type {data.dtype}")
    data, affine = to_ras(data, img.affine)

    if kind == "image":
        array = np.ascontiguousarray(data, dtype=np.float32)
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise DataError(f"{p}: {bad} NaN/inf voxels")
    else:
        array = _as_label_array(data, source=str(p), allow_empty=allow_empty)
    return Volume(array=array, affine=affine, path=str(p))


def _as_label_array(data: np.ndarray, *, source: str, allow_empty: bool) -> np.ndarray:
    if not np.issubdtype(data.dtype, np.integer) and data.dtype != np.bool_:
        data = np.asarray(data, dtype=np.float64)
        if not np.all(np.isfinite(data)):
            raise DataError(f"{source}: label map contains NaN/inf voxels")
        frac = data != np.round(data)
        if frac.any():
            example = float(data[frac].flat[0])
            raise DataError(
                f"{source}: label map has non-integer values (e.g. {example:g} in {int(frac.sum())} voxels); "
                "is this an image rather than a segmentation?"
            )
    lo = int(data.min()) if data.size else 0
    hi = int(data.max()) if data.size else 0
    if lo < 0:
        raise DataError(f"{source}: label map has negative ids (min {lo})")
    if hi == 0 and not allow_empty:
        raise DataError(f"{source}: label map is empty (every voxel is 0)")
    return np.ascontiguousarray(data, dtype=label_dtype(hi))


def label_dtype(max_id: int) -> np.dtype:
    """Smallest of uint8 / int16 / int32 that holds ids up to ``max_id``."""
    if max_id < 256:
        return np.dtype(np.uint8)
    if max_id < 2**15:
        return np.dtype(np.int16)
    return np.dtype(np.int32)


def load_pair(image_path: str | os.PathLike, label_path: str | os.PathLike) -> tuple[Volume, Volume]:
    """Load an image and its label map and check they share the voxel grid.

    Raises:
        DataError: naming both files when shapes differ or affines differ by more than
            :data:`AFFINE_TOLERANCE_MM`.
    """
    image = load_nifti(image_path, kind="image")
    label = load_nifti(label_path, kind="label")
    check_same_grid(image, label)
    return image, label


def check_same_grid(image: Volume, label: Volume) -> None:
    """Raise a :class:`DataError` naming both files when two volumes do not share shape and affine."""
    if image.shape != label.shape:
        raise DataError(
            f"{label.path}: label shape {label.shape} differs from image {image.path} shape {image.shape}"
        )
    diff = float(np.max(np.abs(image.affine - label.affine)))
    if diff > AFFINE_TOLERANCE_MM:
        raise DataError(
            f"{label.path}: label affine differs from image {image.path} affine by up to {diff:.4g} mm "
            f"(tolerance {AFFINE_TOLERANCE_MM} mm)"
        )


def save_nifti(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    overwrite: bool = False,
    dtype: np.dtype | type | str | None = None,
) -> Path:
    """Write a 3D array atomically as NIfTI-1 (``.nii`` or ``.nii.gz``, compressed by suffix).

    The qform and sform are both set to ``affine`` (code 1, scanner), pixdim to its column norms.

    Args:
        path: target file; refused if it exists and ``overwrite`` is False.
        array: (X, Y, Z) voxels (a torch tensor is accepted and moved to CPU).
        affine: (4, 4) voxel -> world matrix.
        dtype: on-disk type; default keeps the array's type except bool -> uint8, float64 -> float32 and
            int64 -> int32 (or int16/uint8 when the values fit).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    p = Path(path)
    if not is_nifti_path(p):
        raise DataError(f"{p}: output file name must end in .nii or .nii.gz")
    if hasattr(array, "detach"):  # torch tensor
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (X, Y, Z), got shape {array.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
    out = array.astype(_disk_dtype(array) if dtype is None else np.dtype(dtype), copy=False)
    img = nib.Nifti1Image(out, affine)
    img.header.set_data_dtype(out.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    # the file object is ours and closed whatever happens: nibabel's own stays open when a write fails (a full
    # disk), keeping the removed temporary's space until garbage collection; the bytes are those of nib.save
    with atomic_path(p, overwrite=overwrite) as tmp, ImageOpener(str(tmp), "wb") as f:
        img.to_file_map({"image": FileHolder(fileobj=f), "header": FileHolder(fileobj=f)})
    return p


def _disk_dtype(array: np.ndarray) -> np.dtype:
    if array.dtype == np.bool_:
        return np.dtype(np.uint8)
    if array.dtype == np.float64 or array.dtype == np.float16:
        return np.dtype(np.float32)
    if array.dtype in (np.int64, np.uint64, np.uint32, np.uint16):
        lo = int(array.min()) if array.size else 0
        hi = int(array.max()) if array.size else 0
        if lo >= 0:
            return label_dtype(hi)
        if lo >= -(2**15) and hi < 2**15:
            return np.dtype(np.int16)
        return np.dtype(np.int32)
    return array.dtype


def load_dicom_series(folder: str | os.PathLike) -> Volume:
    """Read one axial DICOM series (a folder of single-slice files) as a float32 RAS :class:`Volume`.

    Slices are sorted along the slice normal; rescale slope/intercept are applied (CT values in HU). Requires
    the optional ``pydicom`` dependency (``pip install maisi[dicom]``).

    Raises:
        DataError: naming the folder when pydicom is missing, no slices are found, or slices are inconsistent.
    """
    folder = Path(folder)
    try:
        import pydicom
    except ImportError:
        raise DataError(f"{folder}: reading DICOM needs pydicom; install maisi[dicom]") from None
    if not folder.is_dir():
        raise DataError(f"{folder}: DICOM series folder not found")
    slices = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(f))
        except Exception:
            continue  # non-DICOM files (DICOMDIR notes, thumbnails) are skipped
        if "PixelData" in ds and "ImagePositionPatient" in ds:
            slices.append(ds)
    if not slices:
        raise DataError(f"{folder}: no DICOM slices with pixel data found")
    uids = {getattr(s, "SeriesInstanceUID", None) for s in slices}
    if len(uids) > 1:
        raise DataError(f"{folder}: contains {len(uids)} DICOM series; put one series per folder")

    row_dir, col_dir = (
        np.asarray(v, dtype=np.float64) for v in np.reshape(slices[0].ImageOrientationPatient, (2, 3))
    )
    normal = np.cross(row_dir, col_dir)
    slices.sort(key=lambda s: float(np.dot(normal, np.asarray(s.ImagePositionPatient, dtype=np.float64))))
    shapes = {s.pixel_array.shape for s in slices}
    if len(shapes) > 1:
        raise DataError(f"{folder}: DICOM slices have different sizes {sorted(shapes)}")
    dy, dx = (float(v) for v in slices[0].PixelSpacing)  # (row spacing, column spacing)
    p0 = np.asarray(slices[0].ImagePositionPatient, dtype=np.float64)
    if len(slices) > 1:
        step = (np.asarray(slices[-1].ImagePositionPatient, dtype=np.float64) - p0) / (len(slices) - 1)
    else:
        step = normal * float(getattr(slices[0], "SliceThickness", 1.0) or 1.0)
    # voxel (i = column, j = row, k = slice) -> LPS world, then LPS -> RAS by negating x and y
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * dx
    affine_lps[:3, 1] = col_dir * dy
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = p0
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_lps
    volume = np.stack(
        [
            s.pixel_array.astype(np.float32) * float(getattr(s, "RescaleSlope", 1.0))
            + float(getattr(s, "RescaleIntercept", 0.0))
            for s in slices
        ],
        axis=-1,
    )  # (rows, cols, slices) -> transpose to (cols = i, rows = j, slices = k)
    volume = np.transpose(volume, (1, 0, 2))
    array, affine = to_ras(volume, affine)
    return Volume(array=np.ascontiguousarray(array, dtype=np.float32), affine=affine, path=str(folder))


def _reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, zlib.error | EOFError) and not text:
        text = "truncated compressed stream"
    name = type(e).__name__
    return f"{name}: {text}" if text else name
