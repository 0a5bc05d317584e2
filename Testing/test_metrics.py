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


def _blobs(shape, seed: int) -> np.ndarray:
    """A label map of a few random blobs (labels 1-5, one of them touching the grid's edge, label 6 tiny)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype=np.int16)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    for label in range(1, 6):
        centre = rng.uniform(0, np.array(shape)) if label > 1 else np.array([0, shape[1] / 2, shape[2] - 1])
        radii = rng.uniform(2, 6, size=3)
        labels[(((grid - centre) / radii) ** 2).sum(-1) < 1] = label
    labels[tuple(rng.integers(1, n - 1) for n in shape)] = 6
    return labels


def _same(found: float, expected: float) -> bool:
    return found == expected or (np.isnan(found) and np.isnan(expected))


def test_dice_and_hd95_inside_each_labels_box_equal_the_whole_grid():
    """The metrics crop each label to the box around it in either map (``_label_boxes``); on random blob maps,
    with a label on the grid's edge, one-voxel labels and a label missing from one map, they must give exactly
    what the whole grid gives (MONAI's HD95 on the full masks, Dice from the full masks)."""
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    from SHMoAReg.evaluate.metrics import dice_per_label, hd95_per_label

    shape, spacing = (20, 24, 28), (1.5, 1.0, 2.0)  # spacing along (x, y, z) = array axes reversed
    labels = [1, 2, 3, 4, 5, 6]
    for seed in range(3):
        a, b = _blobs(shape, seed), _blobs(shape, seed + 10)
        b[b == 3] = 0  # label 3 in one map only
        fixed, warped = sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)
        fixed.SetSpacing(spacing), warped.SetSpacing(spacing)
        hd95, dice = hd95_per_label(fixed, warped, labels), dice_per_label(fixed, warped, labels)
        for label in labels:
            x, y = a == label, b == label
            total = x.sum() + y.sum()
            assert _same(dice[label], 2.0 * (x & y).sum() / total if total else np.nan), (seed, label)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                whole = float(compute_hausdorff_distance(torch.from_numpy(y)[None, None], torch.from_numpy(x)[None, None],
                                                         include_background=True, percentile=95,
                                                         spacing=list(spacing)[::-1]).item())
            assert _same(hd95[label], whole), (seed, label, hd95[label], whole)


def test_hd95_is_monais_on_random_maps_with_empty_and_full_labels():
    """HD95 no longer imports MONAI (1.5 s of every labelled command) but must give its values exactly: random
    sparse label maps on anisotropic grids, a label missing from one map or from both, a label filling the grid."""
    import warnings

    import torch
    from monai.metrics import compute_hausdorff_distance

    from SHMoAReg.evaluate.metrics import hd95_per_label

    rng = np.random.default_rng(0)
    checked = 0
    for case in range(24):
        shape, spacing = tuple(int(n) for n in rng.integers(6, 24, 3)), tuple(float(s) for s in rng.uniform(0.5, 3, 3))
        a, b = (((rng.random(shape) < rng.uniform(0.01, 0.3)) * rng.integers(1, 4, shape)).astype(np.int16)
                for _ in range(2))
        if case % 4 == 0:
            b[b == 2] = 0  # in one map only: MONAI's quantile over infinite distances gives nan
        if case % 5 == 0:
            a[a == 1], b[b == 1] = 0, 0  # in neither
        if case % 3 == 0:
            a = np.ones(shape, np.int16)  # label 1 fills the grid: its surface is the grid's outer layer
        fixed, warped = sitk.GetImageFromArray(a), sitk.GetImageFromArray(b)
        fixed.SetSpacing(spacing), warped.SetSpacing(spacing)
        ours = hd95_per_label(fixed, warped, [1, 2, 3])
        for label in (1, 2, 3):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs = float(compute_hausdorff_distance(
                    torch.from_numpy(b == label)[None, None], torch.from_numpy(a == label)[None, None],
                    include_background=True, percentile=95, spacing=list(spacing)[::-1]).item())
            assert _same(ours[label], theirs), (case, label, ours[label], theirs)
            checked += np.isfinite(theirs)
    assert checked > 30  # most cases are ordinary finite distances

