"""Registration quality metrics (Learn2Reg definitions, in millimetres).

* Dice per label, over labels present in **both** label maps (labels present in
  only one are reported separately and excluded from the mean, as in Learn2Reg).
* HD95: 95th percentile of the symmetric surface distance in mm, per label, as MONAI's
  ``compute_hausdorff_distance(percentile=95)`` defines and computes it (surface = the mask minus its
  face-connected erosion; nearest surface voxel by a SciPy KD-tree; float32 ``torch.quantile``; the larger
  of the two directions). It is done here with the same SciPy and torch calls because importing MONAI
  took 1.5 s of every labelled command (``Testing/test_metrics.py`` checks the values against MONAI's).
* Jacobian determinant of ``T(x) = x + u(x)`` computed in physical space (the
  direction matrix is taken into account); SDlogJ is the standard deviation of
  ``log(clip(det J, 1e-9, 1e9))`` - Learn2Reg's script adds 3 before clipping to
  undo its own offset, which is not needed here; folding is the fraction of voxels
  with ``det J <= 0`` on the raw determinant.
* TRE: mean Euclidean distance in mm between ``T(p_fixed)`` and ``p_moving``.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..conventions import voxel_to_mm
from ..optimise.regularisers import determinant_3x3

__all__ = ["dice_per_label", "label_presence", "hd95_per_label", "jacobian_determinant", "sdlogj",
           "folding_fraction", "jacobian_scores", "tre_mm", "summarize"]


def _array(image: sitk.Image | np.ndarray) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image) if isinstance(image, sitk.Image) else np.asarray(image)


def label_presence(fixed_labels, warped_labels) -> tuple[list[int], list[int]]:
    """(labels present in both, labels present in only one), background 0 excluded."""
    a, b = set(np.unique(_array(fixed_labels)).tolist()), set(np.unique(_array(warped_labels)).tolist())
    a.discard(0)
    b.discard(0)
    return sorted(a & b), sorted(a ^ b)


_MAX_BOXED_LABEL = 1 << 16  # find_objects keeps one entry per value up to the largest


def _label_boxes(a: np.ndarray, b: np.ndarray) -> dict[int, tuple[slice, ...]]:
    """Per positive label of two integer label maps on one grid, the box around its voxels in either map, grown
    by one voxel (within the grid). A label's Dice and surface distances computed inside its box equal those of
    the whole grid: both maps' voxels of the label lie inside, and the one-voxel rim of background lets an
    erosion find the same surface as on the whole grid. Empty where the maps are not such label maps (then
    the whole grid is used)."""
    if not (np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer)) or a.size == 0:
        return {}
    if min(a.min(), b.min()) < 0 or max(a.max(), b.max()) > _MAX_BOXED_LABEL:
        return {}
    boxes: dict[int, tuple[slice, ...]] = {}
    for found in (ndimage.find_objects(a), ndimage.find_objects(b)):
        for index, box in enumerate(found):
            if box is None:
                continue
            grown = tuple(slice(max(0, part.start - 1), min(n, part.stop + 1)) for part, n in zip(box, a.shape))
            other = boxes.get(index + 1)
            boxes[index + 1] = grown if other is None else tuple(
                slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(grown, other))
    return boxes


def _label_masks(a: np.ndarray, b: np.ndarray, label: int, boxes: dict) -> tuple[np.ndarray, np.ndarray]:
    """``a == label`` and ``b == label``, inside the label's box where :func:`_label_boxes` gave one."""
    box = boxes.get(label, ())
    return a[box] == label, b[box] == label


def dice_per_label(fixed_labels, warped_labels, labels: list[int] | None = None) -> dict[int, float]:
    """Dice of every label present in both maps (or of ``labels``)."""
    a, b = _array(fixed_labels), _array(warped_labels)
    if a.shape != b.shape:
        raise ValueError(f"label maps must share a grid, got shapes {a.shape} and {b.shape}")
    labels = label_presence(a, b)[0] if labels is None else labels
    boxes = _label_boxes(a, b)
    scores = {}
    for label in labels:
        x, y = _label_masks(a, b, label, boxes)
        total = x.sum() + y.sum()
        scores[int(label)] = float(2.0 * np.logical_and(x, y).sum() / total) if total else float("nan")
    return scores


def _surface_mm(mask: np.ndarray, spacing: np.ndarray) -> np.ndarray:
    """``(N, 3)`` mm coordinates (array axes) of the voxels of ``mask`` that its face-connected erosion removes
    (outside the array counts as background)."""
    return np.argwhere(mask & ~ndimage.binary_erosion(mask)).astype(np.float64) * spacing


def _percentile_distance(source: np.ndarray, target: np.ndarray, percentile: float) -> torch.Tensor:
    """``percentile`` of the distances from each ``source`` point to its nearest ``target`` point (float32, as
    MONAI's ``get_surface_distance``: when one set is empty, the other's points are all at infinity, which the
    quantile's interpolation turns into nan; both empty: nan)."""
    from scipy.spatial import KDTree

    if len(source) and len(target):
        distances = KDTree(target, leafsize=32).query(source, k=1)[0].astype(np.float32)
    else:
        distances = np.full(max(len(source), len(target)), np.inf, dtype=np.float32)
    if not len(distances):
        return torch.tensor(float("nan"))
    return torch.quantile(torch.from_numpy(distances), percentile / 100)


def hd95_per_label(fixed_labels: sitk.Image, warped_labels: sitk.Image, labels: list[int] | None = None) -> dict[int, float]:
    """95th-percentile symmetric Hausdorff distance in mm per label (MONAI's definition; module docstring)."""
    a, b = _array(fixed_labels), _array(warped_labels)
    labels = label_presence(a, b)[0] if labels is None else labels
    spacing = np.array(fixed_labels.GetSpacing()[::-1] if isinstance(fixed_labels, sitk.Image) else (1.0,) * a.ndim)
    boxes = _label_boxes(a, b)  # per-label work on the whole grid took 6 s for 43 brain labels at 1 mm
    scores = {}
    for label in labels:
        x, y = _label_masks(a, b, label, boxes)
        surface_x, surface_y = _surface_mm(x, spacing), _surface_mm(y, spacing)
        both = torch.stack([_percentile_distance(surface_y, surface_x, 95), _percentile_distance(surface_x, surface_y, 95)])
        scores[int(label)] = float(both.max())  # nan if either is (torch.max propagates it, as MONAI's does)
    return scores


def jacobian_determinant(displacement_mm: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """``det(dT/dx)`` of ``T(x) = x + u(x)`` for ``u`` given as ``(D, H, W, 3)`` LPS mm on ``grid``.

    With ``x = origin + R S idx``, ``du/dx = (du/dxi) R^T`` where ``xi = S idx`` are the
    mm coordinates along the index axes, so ``det J = det(I + G R^T)``.
    """
    spacing = grid.GetSpacing()
    rotation = np.array(grid.GetDirection()).reshape(3, 3)
    gradient = np.empty(displacement_mm.shape[:3] + (3, 3), dtype=np.float32)
    for component in range(3):  # du_component / d(xi_i, xi_j, xi_k); array axes are (k, j, i)
        dk, dj, di = np.gradient(displacement_mm[..., component], spacing[2], spacing[1], spacing[0])
        gradient[..., component, 0], gradient[..., component, 1], gradient[..., component, 2] = di, dj, dk
    # one (N*3, 3) x (3, 3) product and the 3x3 determinant written out: ~3x faster than a batched matmul and
    # np.linalg.det on ~1M voxels (0.43 -> 0.15 s on 2 idle cores), equal within float32 rounding
    jacobian = (gradient.reshape(-1, 3) @ rotation.T.astype(np.float32)).reshape(gradient.shape)
    jacobian += np.eye(3, dtype=np.float32)
    return determinant_3x3(jacobian)


def sdlogj(determinant: np.ndarray) -> float:
    return float(np.log(np.clip(determinant, 1e-9, 1e9)).std())


def folding_fraction(determinant: np.ndarray) -> float:
    return float(np.mean(determinant <= 0))


def jacobian_scores(displacement: np.ndarray) -> tuple[float, float]:
    """SDlogJ and folding fraction of ``det(I + grad u)`` for a voxel displacement ``u (3, D, H, W)`` (channel c along
    array axis c = z, y, x), on an isotropic grid of unit spacing (central differences): the network's and the
    training grid's fields, whose determinant has no unit, so the values are those of the grid in mm."""
    grid = sitk.Image([int(n) for n in displacement.shape[:0:-1]], sitk.sitkUInt8)  # spacing 1, identity direction
    determinant = jacobian_determinant(voxel_to_mm(displacement, grid), grid)
    return sdlogj(determinant), folding_fraction(determinant)


def tre_mm(mapped_fixed_points: np.ndarray, moving_points: np.ndarray) -> float:
    """Mean distance (mm) between fixed landmarks mapped by T and their moving counterparts."""
    a, b = np.asarray(mapped_fixed_points, float), np.asarray(moving_points, float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] != 3:
        raise ValueError(f"landmark sets must both be (N, 3), got {a.shape} and {b.shape}")
    return float(np.linalg.norm(a - b, axis=1).mean())


def summarize(scores: dict[int, float]) -> float:
    values = [v for v in scores.values() if np.isfinite(v)]
    return float(np.mean(values)) if values else float("nan")
