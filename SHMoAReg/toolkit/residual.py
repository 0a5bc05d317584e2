"""How well an inverse inverts: the residual ``|T(T^-1(y)) - y|`` in mm.

Evaluated by ITK (the same code that applies the files) at the voxels ``y`` of a
reference grid - normally the moving image, every ``f``-th voxel when it has more than
2 million - counting only voxels whose path through ``T^-1`` and then ``T`` stays inside
every displacement field's grid: outside its grid a field is not defined (ITK then
treats it as zero), so no inverse can be judged there.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..transforms.field_transform import transform_to_displacement
from .components import assemble, components, is_displacement_field

__all__ = ["inverse_residual", "residual_grid"]


def inverse_residual(transform: sitk.Transform, inverse: sitk.Transform, reference: sitk.Image) -> dict:
    """``|T(T^-1(y)) - y|`` (mm) over the voxels ``y`` of ``reference`` where every field of the chain is defined.

    The chain ``T^-1`` then ``T`` passes through each displacement field once; a voxel
    counts only where the point reaching each field lies inside that field's grid.
    """
    forward, backward = components(transform), components(inverse)
    both = sitk.CompositeTransform(forward + backward)  # ITK order: T^-1 is applied first, then T
    error = np.linalg.norm(sitk.GetArrayFromImage(transform_to_displacement(both, reference)), axis=-1)
    inside = _inside_fields(backward[::-1] + forward[::-1], reference)
    values = error[inside]
    if values.size == 0:
        return {"voxels": 0, "voxels_total": int(error.size)}
    return {"mean": float(values.mean()), "p99": float(np.percentile(values, 99)), "max": float(values.max()),
            "voxels": int(values.size), "voxels_total": int(error.size)}


def residual_grid(reference: sitk.Image, max_voxels: int = 2_000_000) -> sitk.Image:
    """``reference``, or a grid over the same extent with every ``f``-th voxel when it has more than ``max_voxels``."""
    count = int(np.prod(reference.GetSize()))
    if count <= max_voxels:
        return reference
    factor = int(np.ceil((count / max_voxels) ** (1.0 / 3.0)))
    grid = sitk.Image([max(1, -(-n // factor)) for n in reference.GetSize()], sitk.sitkFloat32)
    grid.SetOrigin(reference.GetOrigin())
    grid.SetSpacing([s * factor for s in reference.GetSpacing()])
    grid.SetDirection(reference.GetDirection())
    return grid


def _inside_fields(chain: list[sitk.Transform], reference: sitk.Image) -> np.ndarray:
    """Voxels of ``reference`` whose path through ``chain`` (in application order) stays inside every field grid."""
    positions = _physical_points(reference)
    inside = np.ones(positions.shape[:3], bool)
    for k, part in enumerate(chain):
        if not is_displacement_field(part):
            continue
        points = positions
        if k:
            points = positions + sitk.GetArrayFromImage(transform_to_displacement(assemble(chain[:k][::-1]), reference))
        grid = sitk.DisplacementFieldTransform(part).GetDisplacementField()
        matrix = np.array(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
        index = (points - np.array(grid.GetOrigin())) @ np.linalg.inv(matrix).T
        inside &= np.all((index >= 0) & (index <= np.array(grid.GetSize()) - 1), axis=-1)
    return inside


def _physical_points(grid: sitk.Image) -> np.ndarray:
    """``(D, H, W, 3)`` LPS-mm positions of every voxel of ``grid``."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.GetSize()[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1).astype(np.float64)
    matrix = np.array(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
    return index @ matrix.T + np.array(grid.GetOrigin())
