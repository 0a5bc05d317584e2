"""Benchmark outputs: results.csv, results_labels.csv, summary.md and PNG plots.

summary.md has one table per suite: mean ± sd over the pairs that a method
registered, the wall-time and CPU-time ratios ``sum(time of method) / sum(time of
SHMoAReg)`` over the pairs both finished (SHMoAReg = "shmoareg" when it ran, else "shmoareg-io"), and a
list of every failed, timed-out or unavailable run. Plots: Dice per method (box
plot), Dice against wall time, and for the first pair of each suite one
checkerboard / difference figure per method.
"""
from __future__ import annotations

import csv
import math
import os
import platform
from importlib import metadata
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..evaluate.qa import checkerboard
from .pairs import Suite
from .runner import COLUMNS, LABEL_COLUMNS, run_dir

__all__ = ["write_csv", "summary_markdown", "machine_description", "plot_dice_box",
           "plot_dice_vs_time", "plot_checkerboards", "write_report", "reference_method"]

_METRICS = (  # column, header, decimals
    ("dice_mean", "Dice", 3), ("hd95_mm", "HD95 mm", 2), ("field_error_mm", "field error mm", 2),
    ("tre_mm", "TRE mm", 2), ("sdlogj", "SDlogJ", 3), ("folding_pct", "folding %", 3),
    ("time_s", "time s", 1), ("cpu_s", "CPU s", 1), ("peak_rss_mb", "peak RSS MB", 0), ("peak_gpu_mb", "peak GPU MB", 0))
_PACKAGES = ("torch", "SimpleITK", "itk-elastix", "antspyx", "convexAdam", "numpy", "monai")


def write_csv(rows: list[dict], path: Path, columns: tuple[str, ...] = COLUMNS) -> Path:
    with open(path, "w", newline="") as stream:
        writer = csv.DictWriter(stream, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return path


def _number(value) -> float:
    try:
        return float(value) if value not in (None, "") else math.nan
    except (TypeError, ValueError):
        return math.nan


def _finite_mean(values: list[float]) -> float:
    values = [v for v in values if np.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


def _ok(rows: list[dict], suite: str, method: str) -> list[dict]:
    return [r for r in rows if r["suite"] == suite and r["method"] == method and r["status"] == "ok"]


def _ordered(values) -> list:
    return list(dict.fromkeys(values))


def reference_method(rows: list[dict], suite: str) -> str | None:
    """The SHMoAReg row that time ratios refer to: "shmoareg" when it ran, else "shmoareg-io"."""
    for method in ("shmoareg", "shmoareg-io"):
        if _ok(rows, suite, method):
            return method
    return None


def _time_ratio(rows: list[dict], suite: str, method: str, reference: str | None, column: str) -> str:
    if reference is None or method == "none":
        return ""
    mine = {r["pair"]: _number(r.get(column)) for r in _ok(rows, suite, method)}
    theirs = {r["pair"]: _number(r.get(column)) for r in _ok(rows, suite, reference)}
    common = [p for p in mine if p in theirs and np.isfinite(mine[p]) and np.isfinite(theirs[p])]
    if not common:
        return "n/a"
    return f"{sum(mine[p] for p in common) / sum(theirs[p] for p in common):.2f}"


def _mean_sd(values: list[float], decimals: int) -> str:
    values = [v for v in values if np.isfinite(v)]
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.{decimals}f}"
    return f"{np.mean(values):.{decimals}f} ± {np.std(values, ddof=1):.{decimals}f}"


def summary_markdown(rows: list[dict], suites: list[Suite] | None = None) -> str:
    """One Markdown table per suite (mean ± sd over pairs), then the runs that did not succeed."""
    descriptions = {s.name: s.description for s in suites or []}
    lines = []
    for suite in _ordered(r["suite"] for r in rows):
        in_suite = [r for r in rows if r["suite"] == suite]
        pairs = _ordered(r["pair"] for r in in_suite)
        methods = _ordered(r["method"] for r in in_suite)
        reference = reference_method(rows, suite)
        shown = [(c, h, d) for c, h, d in _METRICS
                 if any(np.isfinite(_number(r.get(c))) for r in in_suite if r["method"] != "none" or c == "dice_mean")]
        means = {m: _finite_mean([_number(r["dice_mean"]) for r in _ok(rows, suite, m)]) for m in methods}
        peers = [m for m in methods if m != "none" and np.isfinite(means[m])]
        best = max(peers, key=lambda m: means[m]) if peers else None
        lines += [f"### {suite} ({len(pairs)} pair{'s' if len(pairs) != 1 else ''})", ""]
        if descriptions.get(suite):
            lines += [descriptions[suite], ""]
        reference_name = reference or "SHMoAReg"
        header = ["method", "ok"] + [h for _, h, _ in shown] + [f"time / {reference_name}", f"CPU / {reference_name}"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in methods:
            ok = _ok(rows, suite, method)
            name = "none (before)" if method == "none" else method
            cells = [f"**{name}**" if method == best else name, f"{len(ok)}/{len(pairs)}"]
            for column, _, decimals in shown:
                if method == "none" and column in ("time_s", "cpu_s", "peak_rss_mb", "peak_gpu_mb", "sdlogj",
                                                   "folding_pct"):
                    cells.append("")
                    continue
                cells.append(_mean_sd([_number(r.get(column)) for r in ok], decimals))
            cells += [_time_ratio(rows, suite, method, reference, "time_s"),
                      _time_ratio(rows, suite, method, reference, "cpu_s")]
            lines.append("| " + " | ".join(cells) + " |")
        problems = [r for r in in_suite if r["status"] != "ok"]
        if problems:
            lines += ["", "Runs that did not succeed:", ""]
            lines += [f"- {r['method']} on {r['pair']}: {r['status']}: {r.get('error') or 'no message'}" for r in problems]
        lines.append("")
    return "\n".join(lines)


def machine_description() -> str:
    """CPU model, cores, memory, OS, Python and the versions of the methods' packages."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        memory = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        memory = "RAM unknown"
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = []
    for package in _PACKAGES:
        try:
            versions.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    return (f"{cpu}, {usable} usable cores, {memory}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}; " + ", ".join(versions))


# --- plots -------------------------------------------------------------------------------

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_dice_box(rows: list[dict], path: Path) -> Path:
    """Mean Dice per pair, one box per method, one panel per suite."""
    plt = _pyplot()
    suites = _ordered(r["suite"] for r in rows)
    figure, axes = plt.subplots(1, len(suites), figsize=(4.5 * len(suites), 4), squeeze=False)
    for axis, suite in zip(axes[0], suites):
        methods = _ordered(r["method"] for r in rows if r["suite"] == suite)
        data = [[_number(r["dice_mean"]) for r in _ok(rows, suite, m)] for m in methods]
        keep = [(m, [v for v in d if np.isfinite(v)]) for m, d in zip(methods, data)]
        keep = [(m, d) for m, d in keep if d]
        if keep:
            axis.boxplot([d for _, d in keep], showmeans=True)
            axis.set_xticks(range(1, len(keep) + 1), [m for m, _ in keep], rotation=35, ha="right")
        axis.set_title(suite)
        axis.set_ylabel("mean Dice per pair")
        axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_dice_vs_time(rows: list[dict], path: Path) -> Path:
    """Mean Dice against wall time (log scale): small dots per pair, large markers per method mean."""
    plt = _pyplot()
    suites = _ordered(r["suite"] for r in rows)
    figure, axes = plt.subplots(1, len(suites), figsize=(4.5 * len(suites), 4), squeeze=False)
    for axis, suite in zip(axes[0], suites):
        methods = [m for m in _ordered(r["method"] for r in rows if r["suite"] == suite) if m != "none"]
        for index, method in enumerate(methods):
            ok = [r for r in _ok(rows, suite, method) if np.isfinite(_number(r["dice_mean"]))]
            if not ok:
                continue
            times = np.array([_number(r["time_s"]) for r in ok])
            dice = np.array([_number(r["dice_mean"]) for r in ok])
            color = f"C{index}"
            axis.scatter(times, dice, s=12, alpha=0.4, color=color)
            axis.scatter([times.mean()], [dice.mean()], s=80, color=color, edgecolor="black", label=method)
        before = _finite_mean([_number(r["dice_mean"]) for r in _ok(rows, suite, "none")])
        if np.isfinite(before):
            axis.axhline(before, color="gray", linestyle="--", linewidth=1, label="before")
        axis.set_xscale("log")
        axis.set_xlabel("wall time per pair (s)")
        axis.set_ylabel("mean Dice")
        axis.set_title(suite)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _slices(array: np.ndarray) -> list[np.ndarray]:
    """The middle slices across array axes 0 and 1."""
    return [array[array.shape[0] // 2], array[:, array.shape[1] // 2][::-1]]


def _figure_for(plt, fixed: np.ndarray, warped: dict[str, np.ndarray], window: tuple[float, float], aspects,
                title: str):
    """Rows = methods, columns = checkerboard and |difference| on two middle slices."""
    figure, axes = plt.subplots(len(warped), 4, figsize=(12, 3.0 * len(warped)), squeeze=False)
    span = window[1] - window[0]
    for row, (method, image) in enumerate(warped.items()):
        for column, (f, w, aspect) in enumerate(zip(_slices(fixed), _slices(image), aspects)):
            checker_axis, difference_axis = axes[row, 2 * column], axes[row, 2 * column + 1]
            checker_axis.imshow(checkerboard(f, w), cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect)
            difference_axis.imshow(np.abs(f - w), cmap="magma", vmin=0, vmax=0.5 * span, aspect=aspect)
            checker_axis.set_title(f"{method}: checkerboard", fontsize=9)
            difference_axis.set_title(f"{method}: |fixed - warped|", fontsize=9)
        for axis in axes[row]:
            axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    return figure


def plot_checkerboards(suites: list[Suite], output_dir: Path, methods: list[str]) -> list[Path]:
    """For the first pair of each suite: ``figures/<suite>-<method>.png`` per method and ``<suite>-all.png``."""
    plt = _pyplot()
    folder = Path(output_dir) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for suite in suites:
        pair = suite.pairs[0]
        fixed = sitk.ReadImage(str(pair.fixed), sitk.sitkFloat32)
        moving = sitk.ReadImage(str(pair.moving), sitk.sitkFloat32)
        background = float(np.percentile(sitk.GetArrayViewFromImage(moving), 0.5))
        fixed_array = sitk.GetArrayFromImage(fixed)
        window = tuple(np.percentile(fixed_array, [1, 99]).tolist())
        spacing = fixed.GetSpacing()[::-1]
        aspects = (spacing[1] / spacing[2], spacing[0] / spacing[2])
        warped = {"none (before)": sitk.GetArrayFromImage(sitk.Resample(moving, fixed, sitk.Transform(),
                                                                        sitk.sitkLinear, background))}
        for method in methods:
            field_file = run_dir(output_dir, suite.name, pair.id, method) / "displacement.nii.gz"
            if field_file.exists():
                transform = sitk.DisplacementFieldTransform(sitk.ReadImage(str(field_file), sitk.sitkVectorFloat64))
                warped[method] = sitk.GetArrayFromImage(sitk.Resample(moving, fixed, transform, sitk.sitkLinear,
                                                                      background))
        for method, image in warped.items():
            if method.startswith("none"):
                continue
            figure = _figure_for(plt, fixed_array, {method: image}, window, aspects, f"{suite.name} / {pair.id}")
            written.append(folder / f"{suite.name}-{method}.png")
            figure.savefig(written[-1], dpi=90)
            plt.close(figure)
        figure = _figure_for(plt, fixed_array, warped, window, aspects, f"{suite.name} / {pair.id}")
        written.append(folder / f"{suite.name}-all.png")
        figure.savefig(written[-1], dpi=70)
        plt.close(figure)
    return written


def write_report(rows: list[dict], label_rows: list[dict], suites: list[Suite], output_dir: Path,
                 command: str, methods: list[str]) -> dict[str, Path]:
    """Write every output into ``output_dir``; return their paths by name."""
    output_dir = Path(output_dir)
    paths = {"results": write_csv(rows, output_dir / "results.csv"),
             "labels": write_csv(label_rows, output_dir / "results_labels.csv", LABEL_COLUMNS)}
    body = ["# SHMoAReg benchmark", "", f"Command: `{command}`", "", f"Machine: {machine_description()}", "",
            summary_markdown(rows, suites)]
    paths["summary"] = output_dir / "summary.md"
    paths["summary"].write_text("\n".join(body), encoding="utf-8")
    if not rows:
        return paths
    paths["dice_box"] = plot_dice_box(rows, output_dir / "dice_boxplot.png")
    paths["dice_time"] = plot_dice_vs_time(rows, output_dir / "dice_vs_time.png")
    for index, figure in enumerate(plot_checkerboards(suites, output_dir, methods)):
        paths[f"figure{index}"] = figure
    return paths
