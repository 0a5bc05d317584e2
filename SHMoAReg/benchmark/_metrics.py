"""Interim metrics for the benchmark, until :mod:`SHMoAReg.metrics` exists (then this file goes).

Label maps are SimpleITK images on the same grid; distances are in mm.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

__all__ = ["dice_per_label", "hd95_mm", "jacobian_determinant", "sdlogj", "folding_fraction", "tre_mm"]


def _labels_in_both(a: np.ndarray, b: np.ndarray, labels: list[int] | None) -> list[int]:
    present = set(np.unique(a).tolist()) & set(np.unique(b).tolist())
    wanted = present if labels is None else present & set(labels)
    return sorted(int(label) for label in wanted if label != 0)


def dice_per_label(fixed_labels: sitk.Image, warped_labels: sitk.Image, labels: list[int] | None = None) -> dict[int, float]:
    """Dice of each label present in both maps (labels missing on one side are left out)."""
    a = sitk.GetArrayViewFromImage(fixed_labels)
    b = sitk.GetArrayViewFromImage(warped_labels)
    scores = {}
    for label in _labels_in_both(a, b, labels):
        in_a, in_b = a == label, b == label
        scores[label] = float(2.0 * np.count_nonzero(in_a & in_b) / (np.count_nonzero(in_a) + np.count_nonzero(in_b)))
    return scores


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def hd95_mm(fixed_labels: sitk.Image, warped_labels: sitk.Image, labels: list[int] | None = None) -> dict[int, float]:
    """95th-percentile symmetric surface distance (max of both directions) per label, in mm."""
    a = sitk.GetArrayViewFromImage(fixed_labels)
    b = sitk.GetArrayViewFromImage(warped_labels)
    spacing = fixed_labels.GetSpacing()[::-1]
    scores = {}
    for label in _labels_in_both(a, b, labels):
        surface_a, surface_b = _surface(a == label), _surface(b == label)
        to_a = ndimage.distance_transform_edt(~surface_a, sampling=spacing)
        to_b = ndimage.distance_transform_edt(~surface_b, sampling=spacing)
        scores[label] = float(max(np.percentile(to_b[surface_a], 95), np.percentile(to_a[surface_b], 95)))
    return scores


def jacobian_determinant(displacement: sitk.Image) -> np.ndarray:
    """``det(dT/dx)`` of ``T(x) = x + u(x)`` on the displacement's grid, (D, H, W), central differences."""
    u = sitk.GetArrayFromImage(displacement).astype(np.float64)  # (D, H, W, 3) LPS mm
    spacing = displacement.GetSpacing()[::-1]
    # g[..., c, a] = du_c / d(xi_a), xi = index * spacing along array axis a (a = k, j, i)
    g = np.stack([np.stack(np.gradient(u[..., c], *spacing), axis=-1) for c in range(3)], axis=-2)
    g = g[..., ::-1]  # array axes (k, j, i) -> index axes (i, j, k)
    direction = np.array(displacement.GetDirection()).reshape(3, 3)
    return np.linalg.det(np.eye(3) + g @ direction.T)  # x = origin + D xi  =>  dxi/dx = D^T


def sdlogj(jacobian: np.ndarray) -> float:
    """Standard deviation of ``log(clip(detJ, 1e-9, 1e9))``."""
    return float(np.std(np.log(np.clip(jacobian, 1e-9, 1e9))))


def folding_fraction(jacobian: np.ndarray) -> float:
    """Fraction of voxels with ``detJ <= 0``."""
    return float(np.count_nonzero(jacobian <= 0) / jacobian.size)


def tre_mm(points_a: np.ndarray, points_b: np.ndarray) -> float:
    """Mean Euclidean distance between corresponding rows, in mm."""
    return float(np.mean(np.linalg.norm(np.asarray(points_a) - np.asarray(points_b), axis=1)))
