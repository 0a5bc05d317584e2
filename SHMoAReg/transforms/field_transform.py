"""Displacement fields <-> ITK transforms, in physical space (LPS mm, fixed -> moving).

A registration result is ``T = A o D`` where ``D(x) = x + u(x)`` is a
:class:`SimpleITK.DisplacementFieldTransform` on the working grid and ``A`` the
optional affine pre-alignment. In ITK's composite transform the *last* added
transform is applied *first*, so ``T`` is ``CompositeTransform([A, D])``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..io.image_io import atomic_path

__all__ = ["field_image", "displacement_transform", "compose", "transform_to_displacement", "write_transform",
           "read_transform"]


def field_image(displacement_mm: np.ndarray, grid: sitk.Image, pixel_type: int = sitk.sitkVectorFloat64) -> sitk.Image:
    """A vector image of a ``(D, H, W, 3)`` LPS-mm displacement with ``grid``'s geometry."""
    if displacement_mm.shape[:3] != tuple(grid.GetSize())[::-1] or displacement_mm.shape[-1] != 3:
        raise ValueError(f"displacement of shape {displacement_mm.shape} does not match grid size {grid.GetSize()}")
    dtype = np.float64 if pixel_type == sitk.sitkVectorFloat64 else np.float32
    image = sitk.GetImageFromArray(displacement_mm.astype(dtype, copy=False), isVector=True)
    image.CopyInformation(grid)
    return image


def displacement_transform(displacement_mm: np.ndarray, grid: sitk.Image) -> sitk.DisplacementFieldTransform:
    """``D(x) = x + u(x)`` with ``u`` linearly interpolated on ``grid``."""
    return sitk.DisplacementFieldTransform(field_image(displacement_mm, grid))


def compose(affine: sitk.Transform | None, deformable: sitk.Transform) -> sitk.Transform:
    """``A o D`` (``D`` applied first); just ``D`` when there is no affine."""
    if affine is None:
        return deformable
    return sitk.CompositeTransform([affine, deformable])


def transform_to_displacement(transform: sitk.Transform, reference: sitk.Image,
                              pixel_type: int = sitk.sitkVectorFloat64) -> sitk.Image:
    """``T(x) - x`` (LPS mm) sampled at every voxel of ``reference``."""
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())
    return field if pixel_type == sitk.sitkVectorFloat64 else sitk.Cast(field, pixel_type)


def write_transform(transform: sitk.Transform, path: str | os.PathLike) -> Path:
    """Write an ITK transform file (``.h5``, ``.tfm``) atomically."""
    path = Path(path)
    temporary = atomic_path(path)
    try:
        sitk.WriteTransform(transform, str(temporary))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def read_transform(path: str | os.PathLike) -> sitk.Transform:
    from ..errors import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such transform file")
    try:
        return sitk.ReadTransform(str(path))
    except RuntimeError as error:
        raise InputError(f"{path}: not a readable ITK transform ({str(error).strip().splitlines()[-1]})") from None
