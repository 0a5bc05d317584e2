"""Landmark files: CSV, Slicer ``.fcsv`` and ``.mrk.json``, always returned as ``(N, 3)`` LPS mm.

CSV: one point per row, the last three numeric columns are x, y, z in **LPS mm**;
a header row and a leading id/label column are allowed.
``.fcsv`` and ``.mrk.json`` state their coordinate system (RAS or LPS) and are converted.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np

from ..conventions import ras_to_lps
from ..errors import InputError

__all__ = ["read_landmarks", "write_landmarks_csv"]


def _floats(row: list[str]) -> list[float] | None:
    values = []
    for cell in row:
        try:
            values.append(float(cell))
        except ValueError:
            values.append(None)
    numeric = [v for v in values if v is not None]
    return numeric[-3:] if len(numeric) >= 3 else None


def _read_csv(path: Path) -> np.ndarray:
    points = []
    with open(path, newline="") as stream:
        for number, row in enumerate(csv.reader(stream), start=1):
            if not row or row[0].lstrip().startswith("#"):
                continue
            values = _floats(row)
            if values is None:
                if points or number > 1:
                    raise InputError(f"{path}: line {number} has no x, y, z numbers: {','.join(row)[:80]}")
                continue  # header
            points.append(values)
    return np.array(points, dtype=float).reshape(-1, 3)


def _read_fcsv(path: Path) -> np.ndarray:
    lps = False
    points = []
    with open(path) as stream:
        for number, line in enumerate(stream, start=1):
            if line.startswith("#"):
                if "CoordinateSystem" in line:
                    value = line.split("=")[-1].strip().upper()
                    lps = value in ("LPS", "1")
                continue
            cells = line.strip().split(",")
            if len(cells) < 4:
                if line.strip():
                    raise InputError(f"{path}: line {number} is not 'id,x,y,z,...'")
                continue
            try:
                points.append([float(c) for c in cells[1:4]])
            except ValueError:
                raise InputError(f"{path}: line {number} has non-numeric coordinates") from None
    array = np.array(points, dtype=float).reshape(-1, 3)
    return array if lps else ras_to_lps(array)


def _read_mrk_json(path: Path) -> np.ndarray:
    try:
        markups = json.loads(path.read_text())["markups"][0]
        system = markups.get("coordinateSystem", "LPS").upper()
        array = np.array([p["position"] for p in markups.get("controlPoints", [])], dtype=float).reshape(-1, 3)
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise InputError(f"{path}: not a Slicer markups JSON file ({error})") from None
    return array if system == "LPS" else ras_to_lps(array)


def read_landmarks(path: str | os.PathLike) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such landmark file")
    name = path.name.lower()
    points = _read_fcsv(path) if name.endswith(".fcsv") else _read_mrk_json(path) if name.endswith(".json") else _read_csv(path)
    if len(points) == 0:
        raise InputError(f"{path}: no landmarks found")
    if not np.all(np.isfinite(points)):
        raise InputError(f"{path}: landmarks contain NaN or infinite coordinates")
    return points


def write_landmarks_csv(points: np.ndarray, path: str | os.PathLike) -> None:
    np.savetxt(path, np.asarray(points, float), delimiter=",", header="x_lps_mm,y_lps_mm,z_lps_mm", comments="")
