"""The engine's ``report.json`` as a ``vtkMRMLTableNode`` (one row per metric).

Columns: ``Metric`` (text), ``Before`` and ``After`` (numbers; NaN where the engine
reports no value, e.g. timings have no "before"), ``Unit`` (text). Per-label values
(Dice, HD95, ...) get one row each, named ``"<metric> (<label name>)"``. The run's
device, weights and peak memory are also stored as node attributes ``SHMoAReg.*``.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping

import slicer
import vtk

__all__ = ["MetricRow", "metric_rows", "update_metrics_table", "metric_value", "COLUMNS"]

COLUMNS = ("Metric", "Before", "After", "Unit")

MetricRow = tuple[str, float, float, str]

# report key -> (display name, unit); keys not listed are shown as they are.
_METRICS: dict[str, tuple[str, str]] = {
    "dice_mean": ("Dice mean", ""),
    "dice": ("Dice", ""),
    "hd95_mm_mean": ("HD95 mean", "mm"),
    "hd95_mm": ("HD95", "mm"),
    "tre_mm": ("TRE", "mm"),
    "landmarks": ("Landmarks", ""),
    "sdlogj": ("SDlogJ", ""),
    "folding_fraction": ("Folding fraction", ""),
    "jacobian_min": ("Jacobian min", ""),
    "jacobian_max": ("Jacobian max", ""),
}


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def metric_rows(report: Mapping, label_name: Callable[[str], str] = str) -> list[MetricRow]:
    """Rows ``(metric, before, after, unit)`` for a report dict (the content of ``report.json``).

    Args:
        report: the engine's report.
        label_name: maps a per-label key of the report (a label value as text) to a display name.
    """
    metrics: Mapping = report.get("metrics", {}) or {}
    rows: list[MetricRow] = []
    keys = [key for key in metrics if not key.endswith("_before")]
    keys.sort(key=lambda key: list(_METRICS).index(key) if key in _METRICS else len(_METRICS))
    for key in keys:
        name, unit = _METRICS.get(key, (key, ""))
        after, before = metrics[key], metrics.get(f"{key}_before")
        if isinstance(after, (str, list, tuple)) or after is None:
            continue  # lists (e.g. labels present in one image only) stay in the report attribute
        if isinstance(after, Mapping):
            before = before if isinstance(before, Mapping) else {}
            for label, value in after.items():
                rows.append((f"{name} ({label_name(str(label))})", _number(before.get(label)), _number(value), unit))
        else:
            rows.append((name, _number(before), _number(after), unit))
    check = report.get("deformable_check")
    if isinstance(check, Mapping):  # the deformable stage is kept only when it does not make things worse
        kept = "deformable result kept" if check.get("kept") == "deformable" else "WORSE: start transform kept"
        rows.append((f"Similarity loss ({kept})", _number(check.get("loss_start")),
                     _number(check.get("loss_deformable")), "lower is better"))
    for stage, seconds in (report.get("timings_s", {}) or {}).items():
        rows.append((f"Time {stage}", math.nan, _number(seconds), "s"))
    memory = report.get("peak_memory_mb")
    if isinstance(memory, Mapping):  # e.g. {"host_rss_mb": ..., "cuda_mb": ...}
        for key, value in memory.items():
            rows.append((f"Peak memory ({key.removesuffix('_mb').replace('_', ' ')})", math.nan, _number(value), "MB"))
    elif memory is not None:
        rows.append(("Peak memory", math.nan, _number(memory), "MB"))
    return rows


def update_metrics_table(table: slicer.vtkMRMLTableNode, report: Mapping, label_name: Callable[[str], str] = str) -> None:
    """Replace the content of ``table`` with the rows of ``report``."""
    rows = metric_rows(report, label_name)
    metric, before, after, unit = vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray()
    for array, column in zip((metric, before, after, unit), COLUMNS):
        array.SetName(column)
    for row in rows:
        metric.InsertNextValue(row[0])
        before.InsertNextValue(row[1])
        after.InsertNextValue(row[2])
        unit.InsertNextValue(row[3])
    was_modifying = table.StartModify()
    table.RemoveAllColumns()
    for array in (metric, before, after, unit):
        table.AddColumn(array)
    table.SetUseColumnTitleAsColumnHeader(True)
    for key, value in report.items():
        if key == "timings_s":
            continue
        table.SetAttribute(f"SHMoAReg.{key}", value if isinstance(value, str) else json.dumps(value, sort_keys=True))
    table.EndModify(was_modifying)


def metric_value(table: slicer.vtkMRMLTableNode, metric: str, column: str = "After") -> float:
    """The value of row ``metric`` in ``column`` ("Before" or "After") of a metrics table.

    Raises:
        KeyError: no such row or column.
    """
    vtk_table = table.GetTable()
    values = vtk_table.GetColumnByName(column)
    names = vtk_table.GetColumnByName("Metric")
    if values is None or names is None:
        raise KeyError(f"metrics table '{table.GetName()}' has no column {column!r}")
    for row in range(vtk_table.GetNumberOfRows()):
        if names.GetValue(row) == metric:
            return float(values.GetValue(row))
    raise KeyError(f"metrics table '{table.GetName()}' has no row {metric!r}")
