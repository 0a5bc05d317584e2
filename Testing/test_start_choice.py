"""SHMoAReg.preprocess.start_choice: the start transform is chosen by the similarity, and a worse deformable result is refused."""
from __future__ import annotations

import math

import numpy as np
import pytest
import SimpleITK as sitk

from SHMoAReg.preprocess.grid import working_grid
from SHMoAReg.preprocess.normalize import normalize
from SHMoAReg.preprocess.start_choice import (centre_of_mass, centre_of_mass_translation, choose_start, compare_with_start,
                                   evaluation_grid)

SIZE = (32, 36, 40)  # ITK order (x, y, z) = array shape (40, 36, 32)
SPACING = 2.0
SHIFT_MM = (3.0, -2.0, 4.0)  # 1.5, 1 and 2 voxels


def _blobs(shift_mm=(0.0, 0.0, 0.0), offset: float = 0.0) -> sitk.Image:
    """Two anisotropic Gaussian blobs (different sizes and heights, so a rotation changes the image),
    moved by ``shift_mm`` (LPS mm), on a 2 mm grid with an off-zero origin."""
    image = sitk.Image(SIZE, sitk.sitkFloat32)
    image.SetSpacing([SPACING] * 3)
    image.SetOrigin((-20.0, 10.0, 5.0))
    points = np.stack(np.meshgrid(*[np.arange(n) for n in SIZE], indexing="ij"), axis=-1).reshape(-1, 3)
    mm = np.array(image.GetOrigin()) + points * SPACING  # identity direction: (x, y, z) LPS mm
    centre = np.array(image.GetOrigin()) + (np.array(SIZE) - 1) * SPACING / 2 + np.array(shift_mm)
    values = np.zeros(len(points))
    for delta, sigma, height in [((-10.0, 0.0, -8.0), (7.0, 6.0, 5.0), 1.0), ((10.0, 5.0, 10.0), (4.0, 5.0, 6.0), 0.6)]:
        values += height * np.exp(-0.5 * (((mm - centre - np.array(delta)) / np.array(sigma)) ** 2).sum(axis=1))
    array = (values + offset).reshape(SIZE).transpose(2, 1, 0)  # (x, y, z) -> array (z, y, x)
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out


def _bad_affine(reference: sitk.Image) -> sitk.AffineTransform:
    """A 20 degree rotation about the image centre plus a 15 mm shift."""
    centre = reference.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in reference.GetSize()])
    rotation = sitk.Euler3DTransform(centre, 0.0, 0.0, math.radians(20.0), (10.0, -10.0, 5.0))
    return sitk.AffineTransform(rotation.GetMatrix(), rotation.GetTranslation(), rotation.GetCenter())


def _percentiles(tensor):
    return normalize(tensor, "mr")


def test_centre_of_mass_translation_recovers_the_shift():
    fixed, moving = _blobs(offset=100.0), _blobs(SHIFT_MM, offset=100.0)  # an offset: weights are above the 1st percentile
    translation = centre_of_mass_translation(fixed, moving)
    assert np.allclose(translation.GetOffset(), SHIFT_MM, atol=1.0)
    assert np.allclose(np.subtract(centre_of_mass(moving), centre_of_mass(fixed)), SHIFT_MM, atol=1.0)
    # maps fixed-space points to moving space: the fixed centre of mass lands on the moving one
    assert np.allclose(translation.TransformPoint(centre_of_mass(fixed)), centre_of_mass(moving), atol=1e-6)


def test_centre_of_mass_of_a_flat_image_is_its_centre():
    flat = sitk.Image(SIZE, sitk.sitkFloat32) + 5.0
    flat.SetSpacing([SPACING] * 3)
    expected = flat.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in SIZE])
    assert np.allclose(centre_of_mass(flat), expected)


@pytest.mark.parametrize("similarity", ["lncc", "mind"])
@pytest.mark.parametrize("max_size", [64, 12])  # 12: the coarse path (resample at <= 24, pool by 2)
def test_bad_affine_is_never_chosen(similarity, max_size):
    fixed, moving = _blobs(), _blobs(SHIFT_MM)
    grid = working_grid(fixed, SPACING)
    candidates = {"identity": None, "centre-of-mass": centre_of_mass_translation(fixed, moving),
                  "affine": _bad_affine(fixed)}
    name, transform, losses = choose_start(fixed, moving, grid, candidates, _percentiles, 0.0, similarity,
                                           max_size=max_size)
    assert set(losses) == set(candidates)
    assert name != "affine", losses
    assert transform is candidates[name]
    assert losses["affine"] > min(losses["identity"], losses["centre-of-mass"])
    if similarity == "lncc":
        assert name == "centre-of-mass" and losses["centre-of-mass"] < losses["identity"], losses


def test_identity_wins_on_identical_images_and_margin_prefers_earlier():
    fixed = _blobs()
    grid = working_grid(fixed, SPACING)
    candidates = {"identity": None, "affine": _bad_affine(fixed)}
    name, transform, losses = choose_start(fixed, fixed, grid, candidates, _percentiles, 0.0, "lncc")
    assert name == "identity" and transform is None
    # a later candidate must beat the best so far by more than the margin
    shifted = _blobs(SHIFT_MM)
    com = {"identity": None, "centre-of-mass": centre_of_mass_translation(fixed, shifted)}
    _, _, losses = choose_start(fixed, shifted, grid, com, _percentiles, 0.0, "lncc")
    gain = losses["identity"] - losses["centre-of-mass"]
    assert gain > 0
    assert choose_start(fixed, shifted, grid, com, _percentiles, 0.0, "lncc", margin=2 * gain)[0] == "identity"


def test_choose_start_needs_a_candidate():
    fixed = _blobs()
    with pytest.raises(ValueError):
        choose_start(fixed, fixed, working_grid(fixed, SPACING), {}, _percentiles, 0.0, "lncc")


def test_evaluation_grid_is_coarse_isotropic_and_inside():
    grid = sitk.Image((200, 150, 100), sitk.sitkFloat32)
    grid.SetSpacing((1.5, 1.5, 1.5))
    grid.SetOrigin((3.0, -4.0, 5.0))
    grid.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    coarse = evaluation_grid(grid, 64)
    assert max(coarse.GetSize()) == 64
    assert len(set(coarse.GetSpacing())) == 1
    assert coarse.GetOrigin() == grid.GetOrigin() and coarse.GetDirection() == grid.GetDirection()
    extent = [(n - 1) * s for n, s in zip(grid.GetSize(), grid.GetSpacing())]
    assert all((n - 1) * coarse.GetSpacing()[0] <= e + 1e-6 for n, e in zip(coarse.GetSize(), extent))
    small = sitk.Image((20, 30, 40), sitk.sitkFloat32)
    assert evaluation_grid(small, 64) is small


def test_compare_with_start_keeps_the_start_when_the_deformable_stage_is_worse():
    worse = compare_with_start(-0.50, -0.30, None, None)
    assert worse["kept"] == "start" and "similarity" in worse["reason"]
    lower_dice = compare_with_start(-0.50, -0.60, 0.80, 0.70)
    assert lower_dice["kept"] == "start" and "Dice" in lower_dice["reason"]
    assert compare_with_start(-0.50, float("nan"))["kept"] == "start"
    assert compare_with_start(0.020, 0.025)["kept"] == "start"  # MIND-like losses: relative tolerance


def test_compare_with_start_keeps_a_deformable_stage_that_helps_or_is_within_tolerance():
    better = compare_with_start(-0.50, -0.62, 0.80, 0.86)
    assert better["kept"] == "deformable" and better["dice_deformable"] == 0.86
    assert compare_with_start(-0.50, -0.499)["kept"] == "deformable"  # 0.001 < 2 % of 0.5
    assert compare_with_start(-0.50, -0.60, 0.800, 0.797)["kept"] == "deformable"  # Dice within 0.005
    assert compare_with_start(-0.50, -0.60, 0.80, float("nan"))["kept"] == "deformable"  # no usable Dice
    assert set(better) >= {"kept", "reason", "loss_start", "loss_deformable", "dice_start", "dice_deformable"}
