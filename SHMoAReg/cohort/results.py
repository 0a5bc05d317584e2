"""One row per pair: what ``results.csv`` holds, read from each pair's ``report.json``.

A pair's results live in ``OUT/runs/<id>/``, written all at once by
:class:`~SHMoAReg.io.outputs.OutputFolder`. Such a folder is *complete* when its ``report.json``
reads and every file the run writes is there (:func:`complete_report`); ``batch`` skips the
pairs whose folder is complete.

Columns (:data:`COLUMNS`; an empty cell: not measured)
    id, status (done | skipped | failed), error (one line; empty unless failed, or a note),
    preset, dice_before / dice_after (mean Dice over the labels present in both label maps, before
    = under the identity), hd95 (mean HD95 mm after), tre_before / tre_after (mm), sdlogj,
    folding_percent (% of voxels with det J <= 0), similarity_before / similarity_after (the
    similarity loss, lower is better, of the start transform and of the deformable result on the
    working grid: report.json ``deformable_check``), kept (``deformable``, or ``start`` when the
    deformable result was refused), seconds (the registration's own time, report.json
    ``timings_s.total``), device, output_dir.

Standard library only: imported by every Dask worker.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

__all__ = ["COLUMNS", "STATUSES", "run_folder", "complete_report", "row_from_report", "failed_row", "one_line",
           "write_results"]

COLUMNS = ("id", "status", "error", "preset", "dice_before", "dice_after", "hd95", "tre_before", "tre_after",
           "sdlogj", "folding_percent", "similarity_before", "similarity_after", "kept", "seconds", "device",
           "output_dir")
STATUSES = ("done", "skipped", "failed")
RESULT_FILES = ("warped.nii.gz", "transform.h5", "displacement.nii.gz", "jacobian.nii.gz")


def run_folder(output_dir: str | os.PathLike, pair_id: str) -> Path:
    """``OUT/runs/<id>``: where one pair's results go."""
    return Path(output_dir) / "runs" / pair_id


def _expected_files(report: dict) -> list[str]:
    """The files a run with this report wrote (report.json names the optional ones or implies them)."""
    files = list(RESULT_FILES)
    if "dice" in (report.get("metrics") or {}):
        files.append("warped_labels.nii.gz")
    for optional in ("velocity", "inverse"):
        if isinstance(report.get(optional), dict) and report[optional].get("file"):
            files.append(str(report[optional]["file"]))
    return files


def complete_report(folder: str | os.PathLike) -> dict | None:
    """The report of a complete result in ``folder`` (``report.json`` reads, every file it implies exists),
    else None."""
    folder = Path(folder)
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("metrics"), dict):
        return None
    return report if all((folder / name).is_file() for name in _expected_files(report)) else None


def one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of ``text``, at most ``limit`` characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else ""
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _number(value) -> float | None:
    return None if value is None else float(value)


def row_from_report(pair_id: str, status: str, report: dict, folder: str | os.PathLike, note: str = "") -> dict:
    """The results row of a finished pair (``status`` done or skipped) from its ``report.json``."""
    metrics = report.get("metrics") or {}
    check = report.get("deformable_check") or {}
    folding = metrics.get("folding_fraction")
    return {"id": pair_id, "status": status, "error": one_line(note),
            "preset": (report.get("preset") or {}).get("name"),
            "dice_before": _number(metrics.get("dice_mean_before")), "dice_after": _number(metrics.get("dice_mean")),
            "hd95": _number(metrics.get("hd95_mm_mean")), "tre_before": _number(metrics.get("tre_mm_before")),
            "tre_after": _number(metrics.get("tre_mm")), "sdlogj": _number(metrics.get("sdlogj")),
            "folding_percent": None if folding is None else 100.0 * float(folding),
            "similarity_before": _number(check.get("loss_start")),
            "similarity_after": _number(check.get("loss_deformable")), "kept": check.get("kept"),
            "seconds": _number((report.get("timings_s") or {}).get("total")), "device": report.get("device"),
            "output_dir": str(Path(folder).resolve())}


def failed_row(pair_id: str, error: str, folder: str | os.PathLike) -> dict:
    """The results row of a pair that failed, with the one-line reason."""
    return {**{column: None for column in COLUMNS}, "id": pair_id, "status": "failed", "error": one_line(error),
            "output_dir": str(Path(folder).resolve())}


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_results(rows: list[dict], path: str | os.PathLike) -> Path:
    """Write ``rows`` as CSV (:data:`COLUMNS`) to ``path`` atomically (a reader never sees half a table)."""
    from ..io.image_io import write_atomically  # numpy and SimpleITK: not at the CLI's import time

    table = io.StringIO(newline="")
    writer = csv.DictWriter(table, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _cell(row.get(column)) for column in COLUMNS})
    return write_atomically(path, table.getvalue())
