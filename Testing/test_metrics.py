"""Field metrics against known answers: the Jacobian determinant of a linear map on a rotated, anisotropic grid."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from SHMoAReg.evaluate.metrics import folding_fraction, jacobian_determinant


def _linear_field(matrix: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """``u(x) = (A - I) x`` in LPS mm at every voxel of ``grid``: ``(D, H, W, 3)``, so ``T(x) = A x``."""
    size = grid.GetSize()
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in size[::-1]), indexing="ij")
    index = np.stack([i, j, k], axis=-1)  # ITK index order (i, j, k)
    direction = np.array(grid.GetDirection()).reshape(3, 3)
    points = np.array(grid.GetOrigin()) + (index * np.array(grid.GetSpacing())) @ direction.T
    return points @ (matrix - np.eye(3)).T


def test_jacobian_of_a_linear_map_is_its_determinant_on_a_rotated_anisotropic_grid():
    grid = sitk.Image(12, 10, 8, sitk.sitkFloat32)
    grid.SetSpacing((1.5, 2.0, 3.0))
    grid.SetOrigin((-10.0, 5.0, 2.0))
    angle = np.deg2rad(30)
    grid.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    stretch = np.array([[1.2, 0.1, 0.0], [0.05, 0.9, 0.2], [0.0, -0.1, 1.1]])
    determinant = jacobian_determinant(_linear_field(stretch, grid), grid)
    assert determinant.shape == (8, 10, 12)
    assert np.allclose(determinant, np.linalg.det(stretch), atol=1e-5)
    assert folding_fraction(determinant) == 0.0
    mirror = np.diag([1.0, -1.0, 1.0]) @ stretch  # orientation reversed: every voxel folds
    assert np.allclose(jacobian_determinant(_linear_field(mirror, grid), grid), np.linalg.det(mirror), atol=1e-5)
    assert folding_fraction(jacobian_determinant(_linear_field(mirror, grid), grid)) == 1.0
