"""The transform toolkit: apply, invert and convert registration transforms.

The Python API behind ``shmoareg apply`` (:func:`apply_transform`), ``shmoareg invert``
(:func:`invert_file`) and ``shmoareg convert`` (:func:`convert_transform`), plus the
in-memory functions they are made of. All transforms follow :mod:`SHMoAReg.conventions`:
``T`` maps a **fixed**-space point to the corresponding **moving**-space point (LPS mm), so
``sitk.Resample(moving, fixed, T)`` is the moving image on the fixed grid, and points
move fixed -> moving with ``T``, moving -> fixed with ``T^-1``. See ``docs/transforms.md``.
"""
from __future__ import annotations

import importlib

# Where each public name lives. Imported on first use, so that ``apply``, ``convert`` and ``points``
# (SimpleITK only) load without torch: the Slicer module calls them inside Slicer's own process.
_HOME = {
    "Interpolation": "apply", "apply_to_image": "apply", "apply_to_labels": "apply", "apply_transform": "apply",
    "TransformFormat": "convert", "convert_transform": "convert", "read_transform_file": "convert",
    "write_transform_file": "convert",
    "Inversion": "invert", "exponential": "invert", "invert_field": "invert", "invert_file": "invert",
    "invert_transform": "invert",
    "PointDirection": "points", "map_points": "points", "read_points": "points", "write_points": "points",
    "inverse_residual": "residual",
}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
