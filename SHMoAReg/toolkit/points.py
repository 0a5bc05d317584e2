"""Landmarks through a transform, in the direction the user asks for.

``T`` maps fixed-space points to moving-space points (:mod:`SHMoAReg.conventions`):

* ``fixed-to-moving``: a point ``p`` picked on the **fixed** image goes to ``T(p)`` on the
  moving image - exact, one evaluation of ``T``.
* ``moving-to-fixed``: a point ``q`` picked on the **moving** image goes to ``T^-1(q)`` on
  the fixed image. With an inverse transform file (``register --inverse`` /
  ``shmoareg invert``) that is used; without one ``T(x) = q`` is solved per point by
  Newton's method (finite-difference Jacobian). Either way the residual
  ``|T(x) - q|`` (mm) is returned for every point.

Files: CSV (LPS mm, see :mod:`SHMoAReg.io.landmarks`), Slicer ``.fcsv`` and ``.mrk.json``.
Written files are always in LPS and say so; a ``.fcsv`` / ``.mrk.json`` template (the
input file) keeps its point labels and other fields.
"""
from __future__ import annotations

import copy
import json
import os
from enum import Enum
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.image_io import write_atomically
from ..io.landmarks import read_landmarks

__all__ = ["PointDirection", "map_points", "read_points", "write_points", "POINT_SUFFIXES"]

POINT_SUFFIXES = (".csv", ".fcsv", ".json")


class PointDirection(str, Enum):
    FIXED_TO_MOVING = "fixed-to-moving"  # T(p): points of the fixed image onto the moving image
    MOVING_TO_FIXED = "moving-to-fixed"  # T^-1(q): points of the moving image onto the fixed image


def read_points(path: str | os.PathLike) -> np.ndarray:
    """``(N, 3)`` LPS-mm points of a CSV / ``.fcsv`` / ``.mrk.json`` file."""
    return read_landmarks(path)


def _apply(transform: sitk.Transform, point: np.ndarray) -> np.ndarray:
    return np.array(transform.TransformPoint(tuple(float(c) for c in point)))


def _solve(transform: sitk.Transform, target: np.ndarray, start: np.ndarray, max_iterations: int,
           tolerance_mm: float, step_mm: float = 0.05) -> np.ndarray:
    """Newton's method for ``T(x) = target`` with a central-difference Jacobian."""
    x = start.copy()
    for _ in range(max_iterations):
        residual = _apply(transform, x) - target
        if np.linalg.norm(residual) < tolerance_mm:
            break
        jacobian = np.column_stack([(_apply(transform, x + step_mm * e) - _apply(transform, x - step_mm * e))
                                    / (2 * step_mm) for e in np.eye(3)])
        try:
            x = x - np.linalg.solve(jacobian, residual)
        except np.linalg.LinAlgError:
            x = x - residual  # fixed-point step where the Jacobian is singular
    return x


def map_points(points: np.ndarray, transform: sitk.Transform,
               direction: PointDirection | str = PointDirection.FIXED_TO_MOVING,
               inverse: sitk.Transform | None = None, max_iterations: int = 50,
               tolerance_mm: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Map ``(N, 3)`` LPS-mm points; returns (mapped points, residual ``|T(x) - q|`` in mm per point).

    fixed-to-moving: ``T(p)`` (residual 0). moving-to-fixed: ``inverse(q)`` when given, else
    the solution of ``T(x) = q``.
    """
    points = np.asarray(points, dtype=float)
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"expected (N, 3) points, got shape {points.shape}")
    if PointDirection(direction) is PointDirection.FIXED_TO_MOVING:
        return np.array([_apply(transform, p) for p in points]).reshape(-1, 3), np.zeros(len(points))
    if inverse is not None:
        mapped = np.array([_apply(inverse, q) for q in points]).reshape(-1, 3)
    else:
        mapped = np.array([_solve(transform, q, q, max_iterations, tolerance_mm) for q in points]).reshape(-1, 3)
    residual = np.array([np.linalg.norm(_apply(transform, x) - q) for x, q in zip(mapped, points)])
    return mapped, residual


def _kind(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".fcsv"):
        return "fcsv"
    if name.endswith(".json"):
        return "json"
    if name.endswith(".csv"):
        return "csv"
    raise InputError(f"{path}: landmark files are .csv (LPS mm), .fcsv or .mrk.json")


def _xyz(point: np.ndarray) -> str:
    """``x,y,z`` with every digit of the float64 values (so files round-trip exactly)."""
    return ",".join(repr(float(c)) for c in point)


def _fcsv_text(points: np.ndarray, template: Path | None) -> str:
    if template is None:
        header = ["# Markups fiducial file version = 4.11", "# CoordinateSystem = LPS",
                  "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID"]
        rows = [f"{i + 1},{_xyz(p)},0,0,0,1,1,1,0,F-{i + 1},," for i, p in enumerate(points)]
        return "\n".join(header + rows) + "\n"
    lines, index = [], 0
    for line in template.read_text().splitlines():
        if line.startswith("#"):
            lines.append("# CoordinateSystem = LPS" if "CoordinateSystem" in line else line)
        elif line.strip():
            cells = line.split(",")
            cells[1:4] = _xyz(points[index]).split(",")
            index += 1
            lines.append(",".join(cells))
    if not any("CoordinateSystem" in line for line in lines):
        lines.insert(1 if lines and lines[0].startswith("#") else 0, "# CoordinateSystem = LPS")
    return "\n".join(lines) + "\n"


def _json_text(points: np.ndarray, template: Path | None) -> str:
    if template is None:
        document = {"@schema": "https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
                               "Resources/Schema/markups-schema-v1.0.3.json#",
                    "markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "coordinateUnits": "mm",
                                 "controlPoints": [{"id": str(i + 1), "label": f"F-{i + 1}", "position": [0, 0, 0]}
                                                   for i in range(len(points))]}]}
    else:
        document = copy.deepcopy(json.loads(template.read_text()))
    markups = document["markups"][0]
    markups["coordinateSystem"] = "LPS"
    for control_point, point in zip(markups["controlPoints"], points):
        control_point["position"] = [float(c) for c in point]
    return json.dumps(document, indent=2) + "\n"


def write_points(points: np.ndarray, path: str | os.PathLike, template: str | os.PathLike | None = None) -> Path:
    """Write ``(N, 3)`` LPS-mm points as CSV / ``.fcsv`` / ``.mrk.json`` (chosen by the name), atomically.

    ``template``: the file the points came from; a ``.fcsv`` or ``.mrk.json`` template of the
    same kind keeps its labels and fields (it must hold as many points).
    """
    path, points = Path(path), np.asarray(points, dtype=float).reshape(-1, 3)
    kind = _kind(path)
    template = Path(template) if template is not None and _kind(Path(template)) == kind and kind != "csv" else None
    if kind == "csv":
        text = "x_lps_mm,y_lps_mm,z_lps_mm\n" + "".join(_xyz(p) + "\n" for p in points)
    elif kind == "fcsv":
        text = _fcsv_text(points, template)
    else:
        text = _json_text(points, template)
    return write_atomically(path, text)
