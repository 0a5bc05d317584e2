"""Reading and writing images, safely.

Images are read with SimpleITK (NIfTI, NRRD, MHA, ... and DICOM series folders)
and checked where they enter: a 3-D scalar real-valued image with at least 2 voxels
along every axis, positive spacing, an orthonormal direction matrix and finite values.
Before SimpleITK reads the voxels, the header is checked (:mod:`SHMoAReg.io.validation`):
shape, pixel type and size first (so a header claiming terabytes is refused without
allocating), then what SimpleITK would read silently - truncated data, invalid or
negative spacings, sheared NIfTI matrices. Compressed files are decompressed completely
first, because SimpleITK 2.5 reads a truncated ``.nii.gz`` without error and fills the
missing voxels with zeros. A DICOM folder must hold exactly one series (or the series
asked for), with evenly spaced slices and no unreadable DICOM files.
Every write goes to a temporary file beside the target and is renamed into place,
so a reader never sees a half-written file.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from .validation import MAX_ORIGIN_MM, MAX_SPACING_MM, check_file_header, check_nifti, gzip_length, pixel_bytes

__all__ = ["read_image", "read_labels", "write_image", "check_image", "check_gzip_complete", "as_label_map",
           "as_float32", "itk_reason", "atomic_path"]


def check_gzip_complete(path: Path) -> None:
    """Raise :class:`InputError` unless the gzip stream in ``path`` decompresses to its end with a valid CRC."""
    gzip_length(Path(path))


@contextlib.contextmanager
def _quiet_itk() -> Iterator[None]:
    """ITK prints warnings straight to stderr; the checks here turn the ones that matter into errors."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def itk_reason(error: Exception) -> str:
    """The informative last line of a SimpleITK/ITK exception."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if len(lines) > 1 and lines[-1].startswith("Reason:"):
        lines.pop()  # ITK appends strerror(errno), often stale ("No such file or directory" for a parse error)
    text = lines[-1] if lines else type(error).__name__
    for prefix in ("sitk::ERROR:", "ITK ERROR:", "itk::ERROR:"):
        text = text.split(prefix)[-1].strip()
    text = re.sub(r"^\w+\(0x[0-9a-f]+\):\s*", "", text)  # "MetaImageIO(0x55c1...): " - an address, no help
    return text[:200]


def _check_shape(name: str, dimension: int, size: Sequence[int], components: int, pixel: str) -> None:
    if dimension != 3:
        raise InputError(f"{name}: expected a 3-D image, got a {dimension}-D image of size {tuple(size)}")
    if components != 1:
        raise InputError(f"{name}: expected a scalar image, got {components} components per voxel")
    if "complex" in pixel:
        raise InputError(f"{name}: pixel type {pixel} is not supported; give a real-valued (e.g. magnitude) image")
    if min(size) < 2:
        raise InputError(f"{name}: every axis needs at least 2 voxels, got size {tuple(size)}")


def _check_fits(name: str, size: Sequence[int], components: int, pixel_id: int) -> int:
    from ..pipeline.memory import available_bytes, format_bytes

    need = int(np.prod(size, dtype=np.float64)) * components * pixel_bytes(pixel_id)
    have = available_bytes(None)
    if 2 * need > have:  # the image as read, and its float32 copy
        raise InputError(f"{name}: the image is too large to load: size {tuple(size)} of "
                         f"{sitk.GetPixelIDValueAsString(pixel_id)} needs {format_bytes(2 * need)}, only "
                         f"{format_bytes(have)} of memory is available")
    return need


def _series_description(uid: str, files: tuple[str, ...]) -> str:
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
        tags = [reader.GetMetaData(k).strip() for k in ("0008|0060", "0008|103e") if reader.HasMetaDataKey(k)]
    except RuntimeError:
        tags = []
    return f"{uid} ({len(files)} files{''.join(', ' + t for t in tags if t)})"


def _check_slices(folder: Path, reader: sitk.ImageSeriesReader, count: int) -> None:
    """Refuse a series whose slice positions are not evenly spaced (a missing or duplicated slice)."""
    try:
        positions = np.array([[float(v) for v in reader.GetMetaData(i, "0020|0032").split("\\")]
                              for i in range(count)])
        rows = np.array([float(v) for v in reader.GetMetaData(0, "0020|0037").split("\\")]).reshape(2, 3)
    except (RuntimeError, ValueError, IndexError):
        return  # positions not recorded: nothing to compare
    if count < 3:
        return
    gaps = np.diff(np.sort(positions @ np.cross(rows[0], rows[1])))
    if gaps.min() <= 1e-3 or gaps.max() - gaps.min() > 1e-2 * np.median(gaps) + 1e-3:
        raise InputError(f"{folder}: the DICOM slices are not evenly spaced (gaps from {gaps.min():.3g} to "
                         f"{gaps.max():.3g} mm): a slice is missing or duplicated; check that the folder holds "
                         f"the complete series")


def _read_dicom_series(folder: Path, name: str, series_uid: str | None) -> sitk.Image:
    with _quiet_itk():
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or ()
    if not series:
        raise InputError(f"{folder}: the folder holds no DICOM series")
    option = "--fixed-series" if name.startswith("fixed") else "--moving-series" if name.startswith("moving") \
        else "series_uid"
    # each call scans the folder and parses every header: once per series
    files_of = {uid: sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid) for uid in series}
    if series_uid is None and len(series) > 1:
        listing = "; ".join(_series_description(uid, files_of[uid]) for uid in series)
        raise InputError(f"{folder}: the folder holds {len(series)} DICOM series; pick one with {option} UID: "
                         f"{listing}")
    uid = series_uid or series[0]
    if uid not in series:
        raise InputError(f"{folder}: no DICOM series with UID {uid}; found: {', '.join(series)}")
    files = files_of[uid]
    in_series = {Path(f).name for names in files_of.values() for f in names}
    unreadable = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in in_series and _is_dicom(p))
    if unreadable:
        raise InputError(f"{folder}: {len(unreadable)} DICOM file(s) could not be read (truncated or corrupt?): "
                         f"{', '.join(unreadable[:5])}")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    try:
        with _quiet_itk():
            image = reader.Execute()
    except RuntimeError as error:
        raise InputError(f"{folder}: the DICOM series {uid} is not readable ({itk_reason(error)})") from None
    _check_slices(folder, reader, len(files))
    return image


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as stream:
            return stream.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _read_any(path: str | os.PathLike, name: str, series_uid: str | None = None) -> sitk.Image:
    path = Path(path)
    name = f"{name} ({path})"
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        return _read_dicom_series(path, name, series_uid)
    try:
        with open(path, "rb") as stream:
            empty = not stream.read(1)
    except OSError as error:
        raise InputError(f"{path}: cannot read the file ({error.strerror or error})") from None
    if empty:
        raise InputError(f"{path}: the file is empty")
    lower = path.name.lower()
    if lower.endswith((".nii", ".nii.gz", ".hdr", ".hdr.gz")):
        check_nifti(path, name)
    elif lower.endswith(".gz"):
        gzip_length(path)
    io_name = sitk.ImageFileReader.GetImageIOFromFileName(str(path))
    if not io_name:
        raise InputError(f"{path}: not a readable image: no SimpleITK reader recognises the file (NIfTI, NRRD, "
                         f"MetaImage, DICOM ... or a DICOM folder)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    check_file_header(path, io_name)
    try:
        with _quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{path}: not a readable image: the {io_name.replace('ImageIO', '')} header is "
                         f"invalid ({itk_reason(error)})") from None
    pixel = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    _check_shape(name, reader.GetDimension(), reader.GetSize(), reader.GetNumberOfComponents(), pixel)
    _check_fits(name, reader.GetSize(), reader.GetNumberOfComponents(), reader.GetPixelID())
    try:
        with _quiet_itk():
            image = reader.Execute()
        if image.GetNumberOfComponentsPerPixel() == 1 and "vector" in image.GetPixelIDTypeAsString():
            image = sitk.VectorIndexSelectionCast(image, 0)  # a "vector" of one component is a scalar
        return image
    except RuntimeError as error:
        raise InputError(f"{path}: not a readable image: the voxel data is truncated or corrupt "
                         f"({itk_reason(error)})") from None
    except MemoryError:
        raise InputError(f"{name}: not enough memory to read the image") from None


def check_image(image: sitk.Image, name: str, *, require_contrast: bool = True) -> None:
    """Raise :class:`InputError` naming ``name`` unless ``image`` is a usable 3-D scalar volume."""
    _check_shape(name, image.GetDimension(), image.GetSize(), image.GetNumberOfComponentsPerPixel(),
                 image.GetPixelIDTypeAsString())
    spacing = np.array(image.GetSpacing())
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0) or np.any(spacing > MAX_SPACING_MM):
        raise InputError(f"{name}: spacing must be positive and at most {MAX_SPACING_MM:g} mm, got "
                         f"{tuple(float(v) for v in spacing)}")
    direction = np.array(image.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4):
        raise InputError(f"{name}: the direction matrix is not orthonormal "
                         f"{tuple(float(round(v, 4)) for v in direction.ravel())}")
    if not np.all(np.abs(image.GetOrigin()) <= MAX_ORIGIN_MM):
        raise InputError(f"{name}: the origin {tuple(image.GetOrigin())} is not a finite position within "
                         f"{MAX_ORIGIN_MM:g} mm")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        count = int(np.size(array) - np.count_nonzero(np.isfinite(array)))
        raise InputError(f"{name}: {count} voxel{'s are' if count != 1 else ' is'} NaN or infinite")
    if require_contrast and array.min() == array.max():
        raise InputError(f"{name}: the image is constant (every voxel is {array.min()}); nothing to register")


def as_float32(image: sitk.Image, name: str) -> sitk.Image:
    """``image`` as float32, refusing values beyond the float32 range (they would become infinite)."""
    if image.GetPixelID() == sitk.sitkFloat64:
        array = sitk.GetArrayViewFromImage(image)
        limit = float(np.finfo(np.float32).max)
        if np.abs(array).max() > limit:
            raise InputError(f"{name}: voxel values up to {np.abs(array).max():.3g} exceed the float32 range "
                             f"(at most {limit:.3g}); rescale the image")
    try:
        return sitk.Cast(image, sitk.sitkFloat32)
    except RuntimeError:
        raise InputError(f"{name}: pixel type {image.GetPixelIDTypeAsString()} cannot be converted to "
                         f"32-bit float") from None


def read_image(path: str | os.PathLike, name: str = "image", series_uid: str | None = None) -> sitk.Image:
    """Read and check a 3-D scalar image; returns it as float32."""
    image = _read_any(path, name, series_uid)
    check_image(image, f"{name} ({path})")
    return as_float32(image, f"{name} ({path})")


def read_labels(path: str | os.PathLike, name: str = "labels") -> sitk.Image:
    """Read a 3-D integer label map (checked: non-negative integers); returns it as uint16."""
    image = _read_any(path, name)
    check_image(image, f"{name} ({path})", require_contrast=False)
    return as_label_map(image, f"{name} ({path})")


def as_label_map(image: sitk.Image, name: str) -> sitk.Image:
    """Check that ``image`` holds non-negative integer labels and return it as uint16."""
    if image.GetNumberOfComponentsPerPixel() != 1 or "complex" in image.GetPixelIDTypeAsString():
        raise InputError(f"{name}: a label map needs one integer value per voxel, got "
                         f"{image.GetPixelIDTypeAsString()}")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise InputError(f"{name}: label values must be integers, found NaN or infinite values")
        if not np.array_equal(array, np.round(array)):
            raise InputError(f"{name}: label values must be integers, found non-integer values")
    if array.min() < 0 or array.max() > 65535:
        raise InputError(f"{name}: labels must lie in 0..65535, found {array.min()}..{array.max()}")
    return sitk.Cast(image, sitk.sitkUInt16)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: os.umask can only be read by setting it


def with_default_permissions(path: str | os.PathLike, directory: bool = False) -> Path:
    """Give a file or folder made by ``tempfile.mkstemp`` / ``mkdtemp`` (0600 / 0700: private) the permissions an
    ordinary ``open`` / ``mkdir`` would (0666 / 0777 less the umask), so that results written atomically can be
    read by the colleagues a user shares them with, like any other file they write."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_UMASK)
    return Path(path)


def atomic_path(target: Path) -> Path:
    """A fresh temporary path beside ``target`` with the same (possibly double) suffix (ordinary permissions)."""
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".gz") else target.suffix
    handle, name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".partial" + suffix, dir=target.parent)
    os.close(handle)
    return with_default_permissions(name)


def write_atomically(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (bytes, or text as UTF-8) to ``path`` through a temporary file beside it and one rename, so
    that a reader never sees half a file and a failed write leaves no temporary behind."""
    path = Path(path)
    temporary = atomic_path(path)
    try:
        temporary.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def _check_written(path: Path, image: sitk.Image, name: str, compress: bool) -> None:
    """Raise :class:`OSError` unless ``path`` holds all of ``image``'s voxel bytes.

    SimpleITK 2.5 reports no error when a ``.nii.gz`` write runs out of space (disk full, file
    size limit): the file is silently cut short. So a gzip file must decompress completely, and
    an uncompressed one must be at least as long as its voxel data (other compressed formats
    report their write errors themselves).
    """
    data = image.GetNumberOfPixels() * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    if name.lower().endswith((".hdr", ".mhd", ".nhdr")):
        return  # the voxels are in another file
    if path.name.lower().endswith(".gz"):
        try:
            length = gzip_length(path)
        except InputError:
            length = -1
    elif not compress:
        length = path.stat().st_size
    else:
        return
    if length < data:
        raise OSError(f"writing {name} failed: the file on disk is incomplete (disk full or file too large?)")


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` to ``path`` atomically (temporary file + rename), checked and flushed to disk.

    A failed write raises :class:`OSError` (SimpleITK's own error, e.g. a full disk, included).
    """
    path = Path(path)
    temporary = atomic_path(path)
    try:
        try:
            sitk.WriteImage(image, str(temporary), useCompression=compress)
        except RuntimeError as error:
            raise OSError(f"writing {path.name} failed ({itk_reason(error)})") from None
        _check_written(temporary, image, path.name, compress)
        with open(temporary, "rb") as stream:
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
