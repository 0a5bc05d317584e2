"""The coordinate conventions of SHMoAReg.conventions, checked against SimpleITK."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from SHMoAReg.conventions import AXIS_NAMES, lps_to_ras, mm_to_voxel, voxel_to_mm
from SHMoAReg.transforms.field_transform import compose, displacement_transform
from SHMoAReg.preprocess.grid import image_to_tensor, working_grid
from SHMoAReg.optimise.warp import warp_image

OBLIQUE = tuple(sitk.VersorTransform((0.3, -0.5, 0.8), 0.6).GetMatrix())


def _grid(size=(12, 10, 8), spacing=(1.5, 2.0, 3.0)) -> sitk.Image:
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(OBLIQUE)
    grid.SetOrigin((10.0, -20.0, 5.0))
    return grid


def test_voxel_mm_round_trip_on_an_oblique_grid():
    grid = _grid()
    voxels = np.random.default_rng(0).normal(size=(3, 8, 10, 12))
    assert np.allclose(mm_to_voxel(voxel_to_mm(voxels, grid), grid), voxels)


def test_voxel_channels_follow_array_axes():
    """Channel 2 (named "x") moves along ITK index axis i: one voxel = spacing[0] mm along direction column 0."""
    grid = _grid()
    voxels = np.zeros((3, 8, 10, 12))
    voxels[2] = 1.0
    mm = voxel_to_mm(voxels, grid)
    column_i = np.array(OBLIQUE).reshape(3, 3)[:, 0] * 1.5
    assert np.allclose(mm[0, 0, 0], column_i)
    assert AXIS_NAMES[2] == "x"


def test_warp_matches_simpleitk_resampling():
    """warp_image(moving, u) == sitk.Resample(moving, fixed, D) for the same field in mm (fixed->moving)."""
    grid = _grid(size=(16, 14, 12))
    rng = np.random.default_rng(1)
    array = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.normal(size=(12, 14, 16)).astype(np.float32)), 1.5))
    moving = sitk.GetImageFromArray(array)
    moving.CopyInformation(grid)
    z, y, x = np.meshgrid(*[np.linspace(0, np.pi, n) for n in (12, 14, 16)], indexing="ij")
    voxels = np.stack([0.8 * np.sin(x), 0.6 * np.cos(z), 1.1 * np.sin(y) * np.sin(z)])  # stays inside the grid
    voxels[:, [0, -1]] = 0
    voxels[:, :, [0, -1]] = 0
    voxels[:, :, :, [0, -1]] = 0
    ours = warp_image(image_to_tensor(moving), torch.from_numpy(voxels[None]).float())[0, 0].numpy()
    transform = displacement_transform(voxel_to_mm(voxels, grid), grid)
    theirs = sitk.GetArrayFromImage(sitk.Resample(moving, grid, transform, sitk.sitkLinear, 0.0))
    assert np.abs(ours - theirs).max() < 1e-4


def test_composite_applies_the_displacement_first():
    grid = _grid()
    shift = sitk.TranslationTransform(3, (1.0, 2.0, 3.0))
    mm = np.zeros((8, 10, 12, 3))
    mm[..., 0] = 5.0
    total = compose(shift, displacement_transform(mm, grid))
    point = grid.TransformIndexToPhysicalPoint((3, 3, 3))
    assert np.allclose(total.TransformPoint(point), np.array(point) + [6.0, 2.0, 3.0])


def test_working_grid_covers_every_fixed_voxel():
    fixed = _grid(size=(33, 21, 17), spacing=(0.7, 0.9, 2.5))
    grid = working_grid(fixed, 2.0)
    corner = np.array(fixed.TransformIndexToPhysicalPoint([n - 1 for n in fixed.GetSize()]))
    index = np.array(grid.TransformPhysicalPointToContinuousIndex(corner.tolist()))
    assert np.all(index >= -1e-6) and np.all(index <= np.array(grid.GetSize()) - 1 + 1e-6)
    assert grid.GetDirection() == fixed.GetDirection() and grid.GetOrigin() == fixed.GetOrigin()


def test_lps_ras_flip():
    assert np.allclose(lps_to_ras([[1.0, 2.0, 3.0]]), [[-1.0, -2.0, 3.0]])
