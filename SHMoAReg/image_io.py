"""Reading and writing images, safely.

Images are read with SimpleITK (NIfTI, NRRD, MHA, ... and DICOM series folders)
and checked where they enter: a 3-D scalar image with at least 2 voxels along
every axis, positive spacing, an orthonormal direction matrix and finite values.
Compressed files are decompressed completely first, because SimpleITK 2.5 reads a
truncated ``.nii.gz`` without error and fills the missing voxels with zeros.
Every write goes to a temporary file beside the target and is renamed into place,
so a reader never sees a half-written file.
"""
from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputError

__all__ = ["read_image", "read_labels", "write_image", "check_image", "check_gzip_complete", "atomic_path"]


def check_gzip_complete(path: Path) -> None:
    """Raise :class:`InputError` unless the gzip stream in ``path`` decompresses to its end with a valid CRC."""
    try:
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 24):
                pass
    except (EOFError, OSError, zlib.error) as error:
        raise InputError(f"{path}: the compressed file is truncated or corrupt ({error})") from None


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series:
        raise InputError(f"{folder}: the folder holds no DICOM series")
    if series_uid is None and len(series) > 1:
        listing = ", ".join(series)
        raise InputError(f"{folder}: the folder holds {len(series)} DICOM series; pick one with its UID: {listing}")
    uid = series_uid or series[0]
    if uid not in series:
        raise InputError(f"{folder}: no DICOM series with UID {uid}; found: {', '.join(series)}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    return reader.Execute()


def _read_any(path: str | os.PathLike, series_uid: str | None = None) -> sitk.Image:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_series(path, series_uid)
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    if path.name.lower().endswith(".gz"):
        check_gzip_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        first = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
        raise InputError(f"{path}: not a readable image ({first})") from None


def check_image(image: sitk.Image, name: str, *, require_contrast: bool = True) -> None:
    """Raise :class:`InputError` naming ``name`` unless ``image`` is a usable 3-D scalar volume."""
    if image.GetDimension() != 3:
        raise InputError(f"{name}: expected a 3-D image, got a {image.GetDimension()}-D image of size {image.GetSize()}")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{name}: expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    if min(image.GetSize()) < 2:
        raise InputError(f"{name}: every axis needs at least 2 voxels, got size {image.GetSize()}")
    spacing = np.array(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise InputError(f"{name}: spacing must be positive, got {tuple(spacing)}")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4):
        raise InputError(f"{name}: the direction matrix is not orthonormal ({tuple(np.round(direction.ravel(), 4))})")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        count = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputError(f"{name}: {count} voxels are NaN or infinite")
    if require_contrast and array.min() == array.max():
        raise InputError(f"{name}: the image is constant (every voxel is {array.min()}); nothing to register")


def read_image(path: str | os.PathLike, name: str = "image", series_uid: str | None = None) -> sitk.Image:
    """Read and check a 3-D scalar image; returns it as float32."""
    image = _read_any(path, series_uid)
    check_image(image, f"{name} ({path})")
    return sitk.Cast(image, sitk.sitkFloat32)


def read_labels(path: str | os.PathLike, name: str = "labels") -> sitk.Image:
    """Read a 3-D integer label map (checked: non-negative integers); returns it as uint16."""
    image = _read_any(path)
    check_image(image, f"{name} ({path})", require_contrast=False)
    return as_label_map(image, f"{name} ({path})")


def as_label_map(image: sitk.Image, name: str) -> sitk.Image:
    """Check that ``image`` holds non-negative integer labels and return it as uint16."""
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise InputError(f"{name}: label values must be integers, found non-integer values")
    if array.min() < 0 or array.max() > 65535:
        raise InputError(f"{name}: labels must lie in 0..65535, found {array.min()}..{array.max()}")
    return sitk.Cast(image, sitk.sitkUInt16)


def atomic_path(target: Path) -> Path:
    """A fresh temporary path beside ``target`` with the same (possibly double) suffix."""
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".gz") else target.suffix
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".partial" + suffix, dir=target.parent)
    os.close(handle)
    return Path(name)


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file + rename)."""
    path = Path(path)
    temporary = atomic_path(path)
    try:
        sitk.WriteImage(image, str(temporary), useCompression=compress)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
