"""``shmoareg evaluate``: metrics of an existing transform (fixed->moving) on labels and landmarks."""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..evaluate.evaluation import check_same_grid, field_metrics, label_metrics, landmark_metrics, warp_labels
from ..errors import InputError
from ..transforms.field_transform import read_transform, transform_to_displacement
from ..io.image_io import read_image, read_labels
from ..io.landmarks import read_landmarks
from ..evaluate.metrics import jacobian_determinant

__all__ = ["evaluate"]


def evaluate(transform_path, fixed_path, fixed_labels=None, moving_labels=None, fixed_landmarks=None,
             moving_landmarks=None) -> dict:
    transform = read_transform(transform_path)
    fixed = read_image(fixed_path, "fixed image")
    displacement = sitk.GetArrayFromImage(transform_to_displacement(transform, fixed))
    metrics = field_metrics(jacobian_determinant(displacement, fixed))
    if (fixed_labels is None) != (moving_labels is None):
        raise InputError("label metrics need both --fixed-labels and --moving-labels")
    if fixed_labels is not None:
        fixed_lab = read_labels(fixed_labels, "fixed labels")
        check_same_grid(fixed_lab, fixed, "fixed labels")
        moving_lab = read_labels(moving_labels, "moving labels")
        metrics.update(label_metrics(fixed_lab, warp_labels(moving_lab, fixed, transform),
                                     warp_labels(moving_lab, fixed, None)))
    if (fixed_landmarks is None) != (moving_landmarks is None):
        raise InputError("landmark metrics need both --fixed-landmarks and --moving-landmarks")
    if fixed_landmarks is not None:
        metrics.update(landmark_metrics(transform, read_landmarks(fixed_landmarks), read_landmarks(moving_landmarks)))
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in metrics.items()}
