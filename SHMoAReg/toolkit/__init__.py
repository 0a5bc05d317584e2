"""The transform toolkit: apply, invert and convert registration transforms.

The Python API behind ``shmoareg apply`` (:func:`apply_transform`), ``shmoareg invert``
(:func:`invert_file`) and ``shmoareg convert`` (:func:`convert_transform`), plus the
in-memory functions they are made of. All transforms follow :mod:`SHMoAReg.conventions`:
``T`` maps a **fixed**-space point to the corresponding **moving**-space point (LPS mm), so
``sitk.Resample(moving, fixed, T)`` is the moving image on the fixed grid, and points
move fixed -> moving with ``T``, moving -> fixed with ``T^-1``. See ``docs/transforms.md``.
"""
from .apply import Interpolation, apply_to_image, apply_to_labels, apply_transform
from .convert import TransformFormat, convert_transform, read_transform_file, write_transform_file
from .invert import Inversion, exponential, invert_field, invert_file, invert_transform
from .points import PointDirection, map_points, read_points, write_points
from .residual import inverse_residual

__all__ = ["Interpolation", "apply_to_image", "apply_to_labels", "apply_transform", "TransformFormat",
           "convert_transform", "read_transform_file", "write_transform_file", "Inversion", "exponential",
           "invert_field", "invert_file", "invert_transform", "inverse_residual", "PointDirection", "map_points",
           "read_points", "write_points"]
