"""Taking an ITK transform apart, and putting it back together.

A registration result is a chain of transforms (``transform.h5`` holds
``CompositeTransform([A, D])``: the affine ``A`` and the deformable ``D``). In ITK's
composite the *last* transform in the list is applied *first*, so the list
``[A, D]`` maps a fixed point ``x`` to ``A(D(x))``. :func:`components` returns that
list (nested composites flattened), :func:`assemble` rebuilds a transform from it;
:func:`read_grid` reads only the geometry of a reference image.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError

__all__ = ["components", "assemble", "is_displacement_field", "grid_of", "input_grid", "read_grid"]


def components(transform: sitk.Transform) -> list[sitk.Transform]:
    """The transforms of ``transform`` in ITK order (the last one is applied first), composites flattened."""
    if transform.GetName() == "CompositeTransform":
        composite = sitk.CompositeTransform(transform)
        parts: list[sitk.Transform] = []
        for index in range(composite.GetNumberOfTransforms()):
            parts.extend(components(composite.GetNthTransform(index).Downcast()))
        return parts
    return [transform.Downcast()]


def assemble(parts: list[sitk.Transform]) -> sitk.Transform:
    """One transform applying ``parts`` in ITK order (the last first); the identity when empty."""
    if not parts:
        return sitk.Transform(3, sitk.sitkIdentity)
    if len(parts) == 1:
        return parts[0]
    return sitk.CompositeTransform(parts)


def is_displacement_field(transform: sitk.Transform) -> bool:
    return transform.GetName() == "DisplacementFieldTransform"


def grid_of(image: sitk.Image) -> sitk.Image:
    """An empty float32 image with ``image``'s geometry (size, origin, spacing, direction)."""
    grid = sitk.Image(image.GetSize(), sitk.sitkFloat32)
    grid.SetOrigin(image.GetOrigin())
    grid.SetSpacing(image.GetSpacing())
    grid.SetDirection(image.GetDirection())
    return grid


def input_grid(transform: sitk.Transform) -> sitk.Image | None:
    """The grid of the displacement field applied first, when it is applied first (else None).

    That field's grid lies in the transform's *input* space (the fixed image's space for
    a registration result), so it is a natural grid on which to sample the whole transform.
    """
    first = components(transform)[-1]
    if not is_displacement_field(first):
        return None
    return grid_of(sitk.DisplacementFieldTransform(first).GetDisplacementField())


def read_grid(reference: str | os.PathLike | sitk.Image, name: str = "reference image") -> sitk.Image:
    """The geometry of a reference image (only its header is read; a DICOM folder is read whole).

    Any 3-D image will do, constant or not: only its grid is used.
    """
    if isinstance(reference, sitk.Image):
        return grid_of(reference)
    path = Path(reference)
    if path.is_dir():
        from ..io.image_io import read_image

        return grid_of(read_image(path, name))
    if not path.is_file():
        raise InputError(f"{name}: {path}: no such file or folder")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise InputError(f"{name}: {path}: not a readable image ({str(error).strip().splitlines()[-1]})") from None
    if reader.GetDimension() != 3:
        raise InputError(f"{name}: {path}: expected a 3-D image, got {reader.GetDimension()}-D")
    grid = sitk.Image([int(n) for n in reader.GetSize()], sitk.sitkFloat32)
    grid.SetOrigin(reader.GetOrigin())
    grid.SetSpacing(reader.GetSpacing())
    direction = np.array(reader.GetDirection()).reshape(3, 3)
    if not np.allclose(direction @ direction.T, np.eye(3), atol=1e-4):
        raise InputError(f"{name}: {path}: the direction matrix is not orthonormal")
    grid.SetDirection(reader.GetDirection())
    return grid
