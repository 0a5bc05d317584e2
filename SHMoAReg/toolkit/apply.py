"""Apply a registration transform to another image, label map or landmark file (``shmoareg apply``).

``T`` (from ``register``, or any ITK transform / displacement file, :mod:`.convert`) maps
fixed-space points to moving-space points, so an image *of the moving subject* is
brought onto the **fixed** grid by pulling back: ``out(x) = image(T(x))`` for every voxel
``x`` of ``reference`` - exactly ``sitk.Resample(image, reference, T, ...)``.

Images are read and written as float32. Label maps never get new values: ``nearest``
takes the label of the nearest voxel; ``label`` votes per label (each label's indicator
is interpolated linearly, the largest wins; SimpleITK's ``sitkLabelLinear``), which gives
smoother boundaries. Voxels mapped outside the input get 0 (background).

Landmarks move in the direction asked for (:mod:`.points`).
"""
from __future__ import annotations

import os
from enum import Enum
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.image_io import read_image, read_labels, write_image
from .components import read_grid
from .convert import TransformFormat, read_transform_file
from .points import POINT_SUFFIXES, PointDirection, map_points, read_points, write_points

__all__ = ["Interpolation", "apply_to_image", "apply_to_labels", "apply_transform"]


class Interpolation(str, Enum):
    LINEAR = "linear"
    NEAREST = "nearest"  # label maps: the nearest voxel's label
    BSPLINE = "bspline"  # cubic B-spline (images; may overshoot)
    LABEL = "label"  # label maps: per-label linear voting


_SITK = {Interpolation.LINEAR: sitk.sitkLinear, Interpolation.NEAREST: sitk.sitkNearestNeighbor,
         Interpolation.BSPLINE: sitk.sitkBSpline, Interpolation.LABEL: sitk.sitkLabelLinear}


def apply_to_image(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                   interpolation: Interpolation | str = Interpolation.LINEAR, default: float = 0.0) -> sitk.Image:
    """``image(T(x))`` at every voxel ``x`` of ``reference``, in ``image``'s pixel type (= ``sitk.Resample``)."""
    interpolation = Interpolation(interpolation)
    return sitk.Resample(image, reference, transform, _SITK[interpolation], float(default), image.GetPixelID())


def apply_to_labels(labels: sitk.Image, reference: sitk.Image, transform: sitk.Transform,
                    interpolation: Interpolation | str = Interpolation.LABEL) -> sitk.Image:
    """A label map on ``reference``'s grid with only labels of ``labels`` (and 0 outside it)."""
    interpolation = Interpolation(interpolation)
    if interpolation not in (Interpolation.NEAREST, Interpolation.LABEL):
        raise InputError(f"label maps are warped with 'nearest' or 'label' (voting), not {interpolation.value!r}: "
                         f"other interpolators create label values that were not in the input")
    return sitk.Resample(labels, reference, transform, _SITK[interpolation], 0.0, labels.GetPixelID())


def _is_points(path: Path) -> bool:
    return path.name.lower().endswith(POINT_SUFFIXES)


def apply_transform(transform: str | os.PathLike | sitk.Transform, input_path: str | os.PathLike,
                    output_path: str | os.PathLike, reference: str | os.PathLike | sitk.Image | None = None,
                    interpolation: Interpolation | str = Interpolation.LINEAR,
                    direction: PointDirection | str = PointDirection.FIXED_TO_MOVING,
                    inverse: str | os.PathLike | sitk.Transform | None = None, default: float = 0.0,
                    transform_format: TransformFormat | str | None = None) -> dict:
    """Warp an image / label map onto ``reference``, or map a landmark file; write ``output_path``.

    ``interpolation`` 'nearest' or 'label' treats the input as a label map. Landmark files
    (``.csv``, ``.fcsv``, ``.mrk.json``) move ``direction``; ``reference`` is then unused.
    Returns a summary dict (what was done; the largest point residual for landmarks).
    """
    input_path, output_path = Path(input_path), Path(output_path)
    reference_image = _reference(reference)
    forward = _transform(transform, transform_format, reference_image)
    if _is_points(input_path):
        if not _is_points(output_path):
            raise InputError(f"{output_path}: landmarks are written as .csv, .fcsv or .mrk.json")
        points = read_points(input_path)
        inverse_tf = _transform(inverse, None, reference_image) if inverse is not None else None
        mapped, residual = map_points(points, forward, direction, inverse_tf)
        write_points(mapped, output_path, template=input_path)
        return {"kind": "points", "direction": PointDirection(direction).value, "points": int(len(points)),
                "residual_mm_max": float(residual.max(initial=0.0)), "output": str(output_path),
                "method": "T" if PointDirection(direction) is PointDirection.FIXED_TO_MOVING
                else ("inverse transform" if inverse is not None else "Newton on T")}
    if reference_image is None:
        raise InputError("warping an image needs --reference: the image whose grid the output takes (the fixed image)")
    interpolation = Interpolation(interpolation)
    if interpolation in (Interpolation.NEAREST, Interpolation.LABEL):
        labels = read_labels(input_path, "input label map")
        warped = apply_to_labels(labels, reference_image, forward, interpolation)
        new = set(np.unique(sitk.GetArrayViewFromImage(warped)).tolist()) - set(
            np.unique(sitk.GetArrayViewFromImage(labels)).tolist()) - {0}
        if new:  # cannot happen with these interpolators; checked because it is the promise made
            raise RuntimeError(f"label warping created new values {sorted(new)}")
        kind = "labels"
    else:
        image = read_image(input_path, "input image")
        warped = apply_to_image(image, reference_image, forward, interpolation, default)
        kind = "image"
    write_image(warped, output_path)
    return {"kind": kind, "interpolation": interpolation.value, "size": list(warped.GetSize()),
            "output": str(output_path)}


def _reference(reference) -> sitk.Image | None:
    return None if reference is None else read_grid(reference)


def _transform(transform, transform_format, reference: sitk.Image | None) -> sitk.Transform:
    if isinstance(transform, sitk.Transform):
        return transform
    return read_transform_file(transform, transform_format, reference)
