"""One transform, every file format users meet (``shmoareg convert``).

Every format describes the same mapping ``T`` from **fixed**-space points to
**moving**-space points (the ITK resampling direction, :mod:`SHMoAReg.conventions`):

==================== ========================== =================================================
format               file                       content
==================== ========================== =================================================
itk-h5               ``.h5`` (HDF5)             ITK transform file, exact (composites kept: affine
                                                + displacement field on its own grid); LPS mm.
itk-tfm              ``.tfm`` / ``.txt``        the same as ITK text (large for fields).
nifti-displacement   ``.nii.gz``                ``u(x) = T(x) - x`` in LPS mm at every voxel of a
                                                grid, 5-D vector NIfTI (intent 1007): what ITK,
                                                ANTs (``antsApplyTransforms -t warp.nii.gz``)
                                                and Slicer read and write.
l2r-voxel            ``.nii.gz``                Learn2Reg: 4-D ``(X, Y, Z, 3)`` NIfTI on the fixed
                                                grid, component ``c`` = displacement along array
                                                axis ``c`` (nibabel order) in voxels of that grid.
slicer-grid          ``.nrrd``                  LPS mm displacement as a NRRD vector volume, which
                                                Slicer loads as a grid transform (from parent).
==================== ========================== =================================================

Grid formats sample ``T`` at the voxels of a grid: ``reference`` when given (required
for l2r-voxel: the fixed image), else the grid of the displacement field that ``T``
applies first. At the grid's voxels every format holds the same displacement (to
float32 precision, ~1e-5 mm); between voxels readers interpolate linearly.
"""
from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..conventions import learn2reg_displacement_image, voxel_to_mm
from ..errors import InputError
from ..transforms.field_transform import field_image, read_transform, transform_to_displacement, write_transform
from ..io.image_io import check_gzip_complete, write_image
from .components import assemble, components, input_grid

__all__ = ["TransformFormat", "read_transform_file", "write_transform_file", "convert_transform", "format_of"]


class TransformFormat(str, Enum):
    ITK_H5 = "itk-h5"
    ITK_TFM = "itk-tfm"
    NIFTI_DISPLACEMENT = "nifti-displacement"
    L2R_VOXEL = "l2r-voxel"
    SLICER_GRID = "slicer-grid"


SUFFIXES = {
    TransformFormat.ITK_H5: (".h5", ".hdf5"),
    TransformFormat.ITK_TFM: (".tfm", ".txt"),
    TransformFormat.NIFTI_DISPLACEMENT: (".nii.gz", ".nii"),
    TransformFormat.L2R_VOXEL: (".nii.gz", ".nii"),
    TransformFormat.SLICER_GRID: (".nrrd", ".nhdr", ".mha", ".mhd"),
}
_ITK_TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm", ".txt", ".mat", ".xfm")
# NIfTI keeps 79 characters of notes (the descrip field); NRRD/MetaImage keep them whole.
NOTES = {
    TransformFormat.NIFTI_DISPLACEMENT: "SHMoAReg u(x)=T(x)-x, LPS mm, T maps fixed->moving (ITK/ANTs warp)",
    TransformFormat.L2R_VOXEL: "SHMoAReg Learn2Reg u: fixed-grid voxels, comp c=array axis c, fixed->moving",
    TransformFormat.SLICER_GRID: "SHMoAReg u(x)=T(x)-x, LPS mm, T maps fixed->moving (ITK resampling / Slicer "
                                 "from-parent); load in Slicer as a grid transform, put the moving image under it",
}


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def format_of(path: str | os.PathLike) -> TransformFormat:
    """The format a file name implies (``.nii.gz`` -> nifti-displacement; say l2r-voxel explicitly)."""
    suffix = _suffix(Path(path))
    for fmt in (TransformFormat.ITK_H5, TransformFormat.ITK_TFM, TransformFormat.NIFTI_DISPLACEMENT,
                TransformFormat.SLICER_GRID):
        if suffix in SUFFIXES[fmt]:
            return fmt
    raise InputError(f"{path}: cannot tell the transform format from the name; use one of "
                     f"{', '.join(s for f in SUFFIXES.values() for s in f)}")


def _read_image(path: Path) -> sitk.Image:
    if not path.is_file():
        raise InputError(f"{path}: no such transform file")
    if path.name.lower().endswith(".gz"):
        check_gzip_complete(path)
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: not a readable displacement image ({str(error).strip().splitlines()[-1]})") from None


def _l2r_to_field(image: sitk.Image, reference: sitk.Image | None, path: Path) -> sitk.Image:
    """A Learn2Reg file (4-D ``(X, Y, Z, 3)``, or a 3-D 3-vector image) -> LPS-mm field on the fixed grid."""
    if image.GetDimension() == 4 and image.GetSize()[3] == 3 and image.GetNumberOfComponentsPerPixel() == 1:
        voxels = sitk.GetArrayFromImage(image).astype(np.float64)  # (3, Z, Y, X), component = index axis i, j, k
        grid = sitk.Image(image.GetSize()[:3], sitk.sitkFloat32)
        grid.SetOrigin(image.GetOrigin()[:3])
        grid.SetSpacing(image.GetSpacing()[:3])
        grid.SetDirection(np.array(image.GetDirection()).reshape(4, 4)[:3, :3].ravel().tolist())
    elif image.GetDimension() == 3 and image.GetNumberOfComponentsPerPixel() == 3:
        voxels = np.moveaxis(sitk.GetArrayFromImage(image).astype(np.float64), -1, 0)
        grid = image
    else:
        raise InputError(f"{path}: a Learn2Reg displacement is (X, Y, Z, 3); got size {image.GetSize()} with "
                         f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    if reference is not None:
        if tuple(reference.GetSize()) != tuple(grid.GetSize()):
            raise InputError(f"{path}: Learn2Reg field of size {grid.GetSize()[:3]} does not match the reference "
                             f"(fixed) image size {reference.GetSize()}")
        grid = reference
    return field_image(voxel_to_mm(voxels[::-1], grid), grid)  # channels (i, j, k) -> array axes (k, j, i)


def read_transform_file(path: str | os.PathLike, fmt: TransformFormat | str | None = None,
                        reference: sitk.Image | None = None) -> sitk.Transform:
    """Read any supported format as a SimpleITK transform (fixed -> moving, LPS mm).

    ``fmt`` None guesses from the name (ITK transform file, or an LPS-mm displacement image);
    Learn2Reg files need ``fmt="l2r-voxel"``, with ``reference`` = the fixed image when the
    file's header does not carry the fixed grid's geometry.
    """
    path = Path(path)
    fmt = TransformFormat(fmt) if fmt is not None else None
    itk_file = fmt in (TransformFormat.ITK_H5, TransformFormat.ITK_TFM)
    if itk_file or (fmt is None and _suffix(path) in _ITK_TRANSFORM_SUFFIXES):
        return read_transform(path)
    image = _read_image(path)
    if fmt is TransformFormat.L2R_VOXEL:
        field = _l2r_to_field(image, reference, path)
    else:
        if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 3:
            raise InputError(f"{path}: a displacement field is a 3-D image of 3-vectors (LPS mm); got a "
                             f"{image.GetDimension()}-D image with {image.GetNumberOfComponentsPerPixel()} "
                             f"component(s) per voxel (a Learn2Reg file? use --from l2r-voxel)")
        field = sitk.Cast(image, sitk.sitkVectorFloat64)
    return sitk.DisplacementFieldTransform(field)


def _sampling_grid(transform: sitk.Transform, reference: sitk.Image | None, fmt: TransformFormat) -> sitk.Image:
    if reference is not None:
        return reference
    if fmt is TransformFormat.L2R_VOXEL:
        raise InputError("l2r-voxel needs --reference FIXED: Learn2Reg displacements are voxels of the fixed "
                         "image grid")
    grid = input_grid(transform)
    if grid is None:
        raise InputError(f"{fmt.value} samples the transform on a grid: give --reference (normally the fixed image)")
    return grid


def write_transform_file(transform: sitk.Transform, path: str | os.PathLike, fmt: TransformFormat | str | None = None,
                         reference: sitk.Image | None = None) -> Path:
    """Write ``transform`` in ``fmt`` (default: from the name) atomically; returns the path."""
    path = Path(path)
    fmt = TransformFormat(fmt) if fmt is not None else format_of(path)
    if _suffix(path) not in SUFFIXES[fmt]:
        raise InputError(f"{path}: a {fmt.value} file is named *{' or *'.join(SUFFIXES[fmt])}")
    if fmt in (TransformFormat.ITK_H5, TransformFormat.ITK_TFM):
        return write_transform(assemble(components(transform)), path)
    grid = _sampling_grid(transform, reference, fmt)
    displacement = transform_to_displacement(transform, grid)
    if fmt is TransformFormat.L2R_VOXEL:
        image = learn2reg_displacement_image(displacement)
    else:
        image = sitk.Cast(displacement, sitk.sitkVectorFloat32)
    image.SetMetaData("ITK_FileNotes", NOTES[fmt])
    return write_image(image, path)


def convert_transform(source: str | os.PathLike, output: str | os.PathLike, to: TransformFormat | str,
                      source_format: TransformFormat | str | None = None,
                      reference: sitk.Image | None = None) -> Path:
    """Read ``source`` (any format) and write it to ``output`` as ``to``."""
    transform = read_transform_file(source, source_format, reference)
    return write_transform_file(transform, output, to, reference)
