"""Score a transform on label maps and landmarks (used by ``register`` and ``shmoareg evaluate``)."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..preprocess.grid import resample
from .metrics import (dice_per_label, folding_fraction, hd95_per_label, label_presence, sdlogj, summarize, tre_mm)

__all__ = ["check_same_grid", "label_metrics", "landmark_metrics", "field_metrics", "warp_labels"]


def check_same_grid(image: sitk.Image, reference: sitk.Image, what: str, tolerance: float = 1e-3) -> None:
    """Raise :class:`InputError` unless ``image`` lies on ``reference``'s voxel grid."""
    from ..errors import InputError

    same = (image.GetSize() == reference.GetSize()
            and np.allclose(image.GetSpacing(), reference.GetSpacing(), atol=tolerance)
            and np.allclose(image.GetOrigin(), reference.GetOrigin(), atol=tolerance * max(reference.GetSpacing()))
            and np.allclose(image.GetDirection(), reference.GetDirection(), atol=tolerance))
    if not same:
        raise InputError(f"{what} is not on its image's grid: size {image.GetSize()} spacing "
                         f"{tuple(round(s, 4) for s in image.GetSpacing())} origin "
                         f"{tuple(round(o, 3) for o in image.GetOrigin())} vs image size {reference.GetSize()} "
                         f"spacing {tuple(round(s, 4) for s in reference.GetSpacing())} origin "
                         f"{tuple(round(o, 3) for o in reference.GetOrigin())}")


def warp_labels(moving_labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None) -> sitk.Image:
    """Nearest-neighbour resampling of a label map onto ``reference`` (no new label values)."""
    return resample(moving_labels, reference, transform, sitk.sitkNearestNeighbor, 0)


def label_metrics(fixed_labels: sitk.Image, warped: sitk.Image, before: sitk.Image, with_hd95: bool = True) -> dict:
    both, only_one = label_presence(fixed_labels, warped)
    dice = dice_per_label(fixed_labels, warped, both)
    dice_before = dice_per_label(fixed_labels, before, label_presence(fixed_labels, before)[0])
    result = {"dice": {str(k): v for k, v in dice.items()}, "dice_mean": summarize(dice),
              "dice_before": {str(k): v for k, v in dice_before.items()}, "dice_mean_before": summarize(dice_before),
              "labels_in_one_image_only": only_one}
    if with_hd95:
        hd95 = hd95_per_label(fixed_labels, warped, both)
        result.update(hd95_mm={str(k): v for k, v in hd95.items()}, hd95_mm_mean=summarize(hd95))
    return result


def landmark_metrics(transform: sitk.Transform, fixed_points: np.ndarray, moving_points: np.ndarray) -> dict:
    from ..errors import InputError

    if fixed_points.shape != moving_points.shape:
        raise InputError(f"fixed and moving landmark files hold {len(fixed_points)} and {len(moving_points)} points; "
                         f"they must correspond one to one")
    mapped = np.array([transform.TransformPoint(tuple(map(float, p))) for p in fixed_points])
    return {"tre_mm": tre_mm(mapped, moving_points), "tre_mm_before": tre_mm(fixed_points, moving_points),
            "landmarks": int(len(fixed_points))}


def field_metrics(determinant: np.ndarray) -> dict:
    return {"sdlogj": sdlogj(determinant), "folding_fraction": folding_fraction(determinant),
            "jacobian_min": float(determinant.min()), "jacobian_max": float(determinant.max())}
