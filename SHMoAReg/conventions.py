"""The coordinate conventions of SHMoAReg, written once.

Every other module relies on what is stated here; ``Testing/test_conventions.py``
checks each statement against SimpleITK (and, in the Slicer tests, against
Slicer's transform nodes) with known analytic deformations.

Physical space
    World coordinates are **LPS millimetres** (ITK/SimpleITK/DICOM). Slicer uses
    RAS: ``ras = diag(-1, -1, 1) @ lps``. Conversions happen only at the Slicer
    boundary (:func:`lps_to_ras`).

Direction of a transform (the ITK resampling direction)
    A registration result ``T`` maps a point ``x`` of the **fixed** image's space
    to the corresponding point ``T(x)`` of the **moving** image's space, so the
    warped image is ``warped(x) = moving(T(x))`` sampled on the fixed grid.
    This is what ``sitk.Resample(moving, fixed, T)`` computes and what Slicer
    calls the "resampling" (from-parent) transform; in Slicer, placing the
    *moving* volume under the transform node shows it aligned with the fixed.
    Points measured in the fixed image move to the moving image with ``T``;
    points from the moving image need ``T^-1``.

Displacement fields
    ``T(x) = x + u(x)``. In files (``displacement.nii.gz``, ``transform.h5``)
    ``u`` is a 3-vector in LPS millimetres per voxel of a grid with geometry
    (origin, spacing, direction) stated in the file header.

Tensors (inside the network and the optimiser)
    Images are ``(B, C, D, H, W)`` tensors made with ``sitk.GetArrayFromImage``,
    so tensor axis 2/3/4 = array axis 0/1/2 = ITK index k/j/i.
    A displacement tensor is ``(B, 3, D, H, W)`` in **voxels of the working
    grid**, channel ``c`` = displacement along tensor spatial axis ``c``
    (MONAI ``Warp`` convention, also Learn2Reg's "channel i = array axis i").
    The names of the three directions, used for the per-direction expert gates,
    are ``AXIS_NAMES = ("z", "y", "x")``: channel 0 moves along ITK index
    axis k (the image's "z" axis), channel 2 along index axis i ("x").
    Conversion to mm: ``u_mm = Direction @ diag(spacing) @ (u_i, u_j, u_k)``.

Learn2Reg displacement files
    A 4-D NIfTI of shape ``(X, Y, Z, 3)`` as nibabel loads it: the total
    fixed -> moving displacement in **voxels of the fixed grid**, component ``c``
    along index axis ``c`` (i, j, k), i.e. along array axis ``c`` of the fixed
    image loaded by nibabel (:func:`learn2reg_displacement_image`).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = [
    "AXIS_NAMES",
    "LPS_TO_RAS",
    "lps_to_ras",
    "ras_to_lps",
    "voxel_to_mm",
    "mm_to_voxel",
    "learn2reg_displacement_image",
]

AXIS_NAMES = ("z", "y", "x")
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def lps_to_ras(points: np.ndarray) -> np.ndarray:
    """Flip the first two coordinates of ``(..., 3)`` points or vectors (LPS <-> RAS)."""
    points = np.asarray(points, dtype=float)
    return points * np.array([-1.0, -1.0, 1.0])


ras_to_lps = lps_to_ras  # the flip is its own inverse


def _index_to_physical_matrix(grid: sitk.Image) -> np.ndarray:
    direction = np.array(grid.GetDirection(), dtype=float).reshape(3, 3)
    return direction @ np.diag(grid.GetSpacing())


def voxel_to_mm(displacement_voxels: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """Convert a ``(3, D, H, W)`` voxel displacement (channel = array axis) to ``(D, H, W, 3)`` LPS mm."""
    if displacement_voxels.ndim != 4 or displacement_voxels.shape[0] != 3:
        raise ValueError(f"expected a (3, D, H, W) displacement, got shape {displacement_voxels.shape}")
    ijk = displacement_voxels[::-1]  # channels (k, j, i) -> (i, j, k)
    matrix = _index_to_physical_matrix(grid)
    return np.einsum("ab,b...->...a", matrix, ijk)


def mm_to_voxel(displacement_mm: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """Inverse of :func:`voxel_to_mm`: ``(D, H, W, 3)`` LPS mm to ``(3, D, H, W)`` voxels."""
    if displacement_mm.ndim != 4 or displacement_mm.shape[-1] != 3:
        raise ValueError(f"expected a (D, H, W, 3) displacement, got shape {displacement_mm.shape}")
    inverse = np.linalg.inv(_index_to_physical_matrix(grid))
    ijk = np.einsum("ab,...b->a...", inverse, displacement_mm)
    return ijk[::-1].copy()


def learn2reg_displacement_image(displacement: sitk.Image) -> sitk.Image:
    """An LPS-mm vector displacement on the fixed grid as Learn2Reg's 4-D ``(X, Y, Z, 3)`` float32 image of
    index-axis voxels; the fourth axis (spacing 1) holds the components (i, j, k)."""
    voxels = mm_to_voxel(sitk.GetArrayFromImage(displacement), displacement)[::-1]  # channels (i, j, k)
    image = sitk.GetImageFromArray(np.ascontiguousarray(voxels, dtype=np.float32), isVector=False)
    direction = np.eye(4)
    direction[:3, :3] = np.array(displacement.GetDirection()).reshape(3, 3)
    image.SetOrigin([*displacement.GetOrigin(), 0.0])
    image.SetSpacing([*displacement.GetSpacing(), 1.0])
    image.SetDirection(direction.ravel().tolist())
    return image
