"""Conversions between Slicer nodes (RAS) and SimpleITK images / ITK transforms (LPS).

Conventions (the engine's ``SHMoAReg/conventions.py`` states them once):

* Files and SimpleITK images are in **LPS millimetres**; Slicer's scene is in **RAS**:
  ``ras = F @ lps`` with ``F = diag(-1, -1, 1)``.
* A volume node's ``IJKToRAS`` 4x4 matrix maps voxel index ``(i, j, k, 1)`` to RAS.
  The SimpleITK image of the same volume has ``origin = F @ IJKToRAS[:3, 3]`` and
  ``direction @ diag(spacing) = F @ IJKToRAS[:3, :3]``.
* Voxel arrays are ``(k, j, i)`` (``slicer.util.arrayFromVolume`` and
  ``sitk.GetArrayFromImage`` agree), vector volumes add a last component axis.
* A registration transform maps a **fixed** point to a **moving** point (the ITK
  resampling direction). In Slicer this is the transform *from parent*, so a moving
  volume placed under the transform node is shown aligned with the fixed volume.
  A displacement field ``u`` (``T(x) = x + u(x)``) becomes a
  ``vtkOrientedGridTransform`` set as *transform from parent*, with the grid's
  origin, direction and every vector converted to RAS.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from .engine import import_engine_module

__all__ = [
    "LPS_TO_RAS",
    "ijk_to_world_matrix",
    "sitk_image_from_volume",
    "update_volume_from_sitk",
    "volume_node_from_sitk",
    "grid_transform_from_displacement",
    "displacement_from_grid_transform",
    "markups_points_lps",
    "same_geometry",
]

_conventions = import_engine_module("SHMoAReg.conventions")  # torch-free; the one statement of the conventions
LPS_TO_RAS = _conventions.LPS_TO_RAS
lps_to_ras = ras_to_lps = _conventions.lps_to_ras  # the flip is its own inverse


def _matrix_to_array(matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _array_to_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    matrix = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            matrix.SetElement(r, c, float(array[r, c]))
    return matrix


def ijk_to_world_matrix(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    """The 4x4 voxel-index -> world RAS matrix of ``node``, including linear parent transforms.

    Raises:
        ValueError: the node is under a non-linear transform (harden it first).
    """
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = _matrix_to_array(matrix)
    parent = node.GetParentTransformNode()
    if parent is None:
        return ijk_to_ras
    if not parent.IsTransformToWorldLinear():
        raise ValueError(
            f"'{node.GetName()}' is under the non-linear transform '{parent.GetName()}'; "
            "harden that transform first (Data module: right-click > Harden transform)"
        )
    to_world = vtk.vtkMatrix4x4()
    parent.GetMatrixTransformToWorld(to_world)
    return _matrix_to_array(to_world) @ ijk_to_ras


def _geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray, name: str) -> tuple[tuple, tuple, tuple]:
    """(origin, spacing, direction) in LPS of the 4x4 ``ijk_to_ras`` matrix."""
    linear_lps = LPS_TO_RAS @ ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(linear_lps, axis=0)
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"'{name}': voxel spacing must be positive, got {tuple(spacing)}")
    direction = linear_lps / spacing
    if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
        raise ValueError(
            f"'{name}': its voxel axes are not orthogonal (sheared or scaled by a parent transform); "
            "harden the transform or use a rigid one"
        )
    origin = LPS_TO_RAS @ ijk_to_ras[:3, 3]
    return tuple(origin), tuple(spacing), tuple(direction.ravel())


def sitk_image_from_volume(node: slicer.vtkMRMLVolumeNode, world: bool = True) -> sitk.Image:
    """Copy a volume node into a SimpleITK image (LPS geometry; the node is not modified).

    Args:
        node: a scalar (or label map) volume node with image data.
        world: include linear parent transforms in the geometry (the volume as shown).
    """
    if node.GetImageData() is None:
        raise ValueError(f"'{node.GetName()}' has no image data")
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    is_vector = array.ndim == 4
    image = sitk.GetImageFromArray(array, isVector=is_vector)
    if world:
        ijk_to_ras = ijk_to_world_matrix(node)
    else:
        matrix = vtk.vtkMatrix4x4()
        node.GetIJKToRASMatrix(matrix)
        ijk_to_ras = _matrix_to_array(matrix)
    origin, spacing, direction = _geometry_from_ijk_to_ras(ijk_to_ras, node.GetName())
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    return image


def ijk_to_ras_from_sitk(image: sitk.Image) -> np.ndarray:
    """The 4x4 IJKToRAS matrix of a 3-D SimpleITK image."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    ijk_to_ras = np.eye(4)
    ijk_to_ras[:3, :3] = LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    ijk_to_ras[:3, 3] = LPS_TO_RAS @ np.array(image.GetOrigin(), dtype=float)
    return ijk_to_ras


def update_volume_from_sitk(node: slicer.vtkMRMLVolumeNode, image: sitk.Image) -> None:
    """Set voxels and geometry of ``node`` from a 3-D SimpleITK image (LPS -> RAS)."""
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    array = sitk.GetArrayFromImage(image)
    if array.dtype in (np.int64, np.uint64):  # not accepted by updateVolumeFromArray
        fits = array.size == 0 or (array.min() >= np.iinfo(np.int32).min and array.max() <= np.iinfo(np.int32).max)
        array = array.astype(np.int32 if fits else np.float64)
    slicer.util.updateVolumeFromArray(node, array)
    node.SetIJKToRASMatrix(_array_to_matrix(ijk_to_ras_from_sitk(image)))


def volume_node_from_sitk(scene: slicer.vtkMRMLScene, image: sitk.Image, name: str,
                          node: slicer.vtkMRMLScalarVolumeNode | None = None) -> slicer.vtkMRMLScalarVolumeNode:
    """``image`` in ``node`` (default: a new scalar volume node called ``name``), with display nodes."""
    node = node or scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    update_volume_from_sitk(node, image)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def grid_transform_from_displacement(displacement: sitk.Image) -> slicer.vtkOrientedGridTransform:
    """A RAS ``vtkOrientedGridTransform`` equal to ``x -> x + u(x)`` for an LPS displacement image.

    ``displacement`` is a 3-D image with 3 components per voxel (LPS mm). Use the
    result as a grid transform node's *transform from parent*.
    """
    if displacement.GetDimension() != 3 or displacement.GetNumberOfComponentsPerPixel() != 3:
        raise ValueError(
            "expected a 3-D displacement field with 3 components, got "
            f"{displacement.GetDimension()}-D with {displacement.GetNumberOfComponentsPerPixel()} components"
        )
    vectors = sitk.GetArrayFromImage(displacement)  # (k, j, i, 3), LPS
    dtype = np.float32 if vectors.dtype == np.float32 else np.float64
    vectors_ras = np.ascontiguousarray(lps_to_ras(vectors).astype(dtype).reshape(-1, 3))
    grid = vtk.vtkImageData()
    grid.SetDimensions(displacement.GetSize())
    grid.SetSpacing(displacement.GetSpacing())
    grid.SetOrigin(tuple(LPS_TO_RAS @ np.array(displacement.GetOrigin())))
    grid.GetPointData().SetScalars(numpy_support.numpy_to_vtk(vectors_ras, deep=True))
    direction_ras = np.eye(4)
    direction_ras[:3, :3] = LPS_TO_RAS @ np.array(displacement.GetDirection()).reshape(3, 3)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(grid)
    transform.SetGridDirectionMatrix(_array_to_matrix(direction_ras))
    transform.SetInterpolationModeToLinear()  # as ITK and Slicer's transform reader
    return transform


def displacement_from_grid_transform(node: slicer.vtkMRMLTransformNode) -> sitk.Image:
    """The LPS displacement image (fixed -> moving) held by a grid transform node.

    Inverse of :func:`grid_transform_from_displacement`; raises ValueError if the
    node does not hold a single grid transform from parent.
    """
    transform = node.GetTransformFromParent()
    if not isinstance(transform, slicer.vtkOrientedGridTransform) or transform.GetInverseFlag():
        raise ValueError(f"'{node.GetName()}' does not hold a grid transform from parent")
    transform.Update()
    grid = transform.GetDisplacementGrid()
    shape = tuple(reversed(grid.GetDimensions())) + (3,)
    vectors = ras_to_lps(numpy_support.vtk_to_numpy(grid.GetPointData().GetScalars()).reshape(shape))
    image = sitk.GetImageFromArray(vectors.astype(np.float64), isVector=True)
    direction = vtk.vtkMatrix4x4()
    if transform.GetGridDirectionMatrix() is not None:
        direction.DeepCopy(transform.GetGridDirectionMatrix())
    image.SetOrigin(tuple(LPS_TO_RAS @ np.array(grid.GetOrigin())))
    image.SetSpacing(grid.GetSpacing())
    image.SetDirection(tuple((LPS_TO_RAS @ _matrix_to_array(direction)[:3, :3]).ravel()))
    return image


def markups_points_lps(node: slicer.vtkMRMLMarkupsNode) -> np.ndarray:
    """World positions of a markups node's control points as an ``(N, 3)`` LPS array (mm)."""
    points = np.zeros((node.GetNumberOfControlPoints(), 3))
    position = [0.0, 0.0, 0.0]
    for index in range(points.shape[0]):
        node.GetNthControlPointPositionWorld(index, position)
        points[index] = position
    return ras_to_lps(points)


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance_mm: float = 1e-3) -> bool:
    """True if two images share size, and origin/spacing/direction within ``tolerance_mm``."""
    if a.GetSize() != b.GetSize():
        return False
    return (
        np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance_mm)
        and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance_mm)
        and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-4)
    )
