"""Run methods x pairs, each in its own process, and score every result with the same code.

For each (pair, method) the runner writes ``runs/<suite>/<pair>/<method>/job.json``
and starts ``python peers.py job.json``. Wall and CPU time come from the worker
(the peer call only: reading inputs, registering, computing the dense field);
peak RSS is the worker process's ``ru_maxrss`` from ``os.wait4`` (interpreter and
the method's libraries included). The displacement it writes is scored here:
the moving labels are warped onto the fixed grid (nearest neighbour) with
``T(x) = x + u(x)``, the Jacobian determinant comes from ``u``. A method that
fails, times out or is not installed gets a row with its status and message.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from . import _metrics as metrics
from .pairs import Pair, Suite
from .peers import METHODS

__all__ = ["RunSettings", "COLUMNS", "LABEL_COLUMNS", "run_suites", "score", "warp_labels", "run_dir"]

COLUMNS = ("suite", "pair", "method", "status", "error", "dice_mean", "dice_before", "hd95_mm", "hd95_before_mm",
           "tre_mm", "tre_before_mm", "field_error_mm", "field_error_before_mm", "sdlogj", "folding_pct",
           "time_s", "cpu_s", "peak_rss_mb", "peak_gpu_mb", "device", "threads")
LABEL_COLUMNS = ("suite", "pair", "method", "label", "dice", "hd95_mm")
_PEERS_SCRIPT = Path(__file__).with_name("peers.py")
_PACKAGE_PARENT = Path(__file__).resolve().parents[2]


@dataclass
class RunSettings:
    """How to run: methods, threads per run, device for the torch methods, limits."""

    methods: tuple[str, ...] = METHODS
    output_dir: Path = Path("benchmark-out")
    threads: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    device: str = "auto"
    weights: str | None = None
    timeout_s: float = 3600.0
    keep_fields: bool = False  # keep every displacement (else only the first pair's, for the figures)

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ValueError(f"unknown methods {unknown}; expected a comma list of {list(METHODS)}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        self.output_dir = Path(self.output_dir)


def run_dir(output_dir: Path, suite: str, pair: str, method: str) -> Path:
    return Path(output_dir) / "runs" / suite / pair / method


# --- scoring -----------------------------------------------------------------------------

def warp_labels(labels: sitk.Image, reference: sitk.Image, displacement: sitk.Image | None) -> sitk.Image:
    """``labels(T(x))`` on ``reference``'s grid, nearest neighbour; identity when ``displacement`` is None."""
    transform = sitk.Transform() if displacement is None else \
        sitk.DisplacementFieldTransform(sitk.Cast(displacement, sitk.sitkVectorFloat64))
    return sitk.Resample(labels, reference, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())


def _read_points(path: Path) -> np.ndarray:
    points = np.loadtxt(path, delimiter=",", ndmin=2, comments="#")
    if points.shape[1] != 3:
        raise ValueError(f"{path}: expected rows of x,y,z (LPS mm), got {points.shape[1]} columns")
    return points


def score(pair: Pair, displacement: sitk.Image | None) -> tuple[dict, list[dict]]:
    """Metrics of ``displacement`` (None: the identity, i.e. before registration) on ``pair``.

    Returns the row's metric columns and one ``{label, dice, hd95_mm}`` per scored label.
    """
    fixed = sitk.ReadImage(str(pair.fixed))
    row: dict = {}
    per_label: list[dict] = []
    if pair.fixed_labels is not None:
        fixed_labels = sitk.ReadImage(str(pair.fixed_labels))
        moving_labels = sitk.ReadImage(str(pair.moving_labels))
        if fixed_labels.GetSize() != fixed.GetSize():
            raise ValueError(f"pair {pair.id}: fixed labels {fixed_labels.GetSize()} and image {fixed.GetSize()} differ")
        warped = warp_labels(moving_labels, fixed_labels, displacement)
        dice = metrics.dice_per_label(fixed_labels, warped, pair.labels)
        hd95 = metrics.hd95_mm(fixed_labels, warped, pair.labels)
        row["dice_mean"] = float(np.mean(list(dice.values()))) if dice else math.nan
        row["hd95_mm"] = float(np.mean(list(hd95.values()))) if hd95 else math.nan
        per_label = [{"label": label, "dice": dice[label], "hd95_mm": hd95.get(label, math.nan)} for label in dice]
    if pair.fixed_landmarks is not None:
        fixed_points, moving_points = _read_points(pair.fixed_landmarks), _read_points(pair.moving_landmarks)
        if displacement is not None:
            transform = sitk.DisplacementFieldTransform(sitk.Cast(displacement, sitk.sitkVectorFloat64))
            fixed_points = np.array([transform.TransformPoint(p.tolist()) for p in fixed_points])
        row["tre_mm"] = metrics.tre_mm(fixed_points, moving_points)
    if pair.true_displacement is not None:
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(pair.true_displacement), sitk.sitkVectorFloat64))
        estimate = 0.0 if displacement is None else sitk.GetArrayFromImage(displacement).astype(np.float64)
        error = np.linalg.norm(truth - estimate, axis=-1)
        region = sitk.GetArrayViewFromImage(sitk.ReadImage(str(pair.fixed_labels))) > 0 \
            if pair.fixed_labels is not None else np.ones(error.shape, bool)
        row["field_error_mm"] = float(error[region].mean())
    if displacement is not None:
        jacobian = metrics.jacobian_determinant(displacement)
        row["sdlogj"] = metrics.sdlogj(jacobian)
        row["folding_pct"] = 100.0 * metrics.folding_fraction(jacobian)
    return row, per_label


# --- running -----------------------------------------------------------------------------

def _worker_env(threads: int) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(_PACKAGE_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _run_worker(job: dict, folder: Path, settings: RunSettings) -> dict:
    """Start the worker for ``job``; return its record plus ``peak_rss_mb`` (or a failure record)."""
    (folder / "job.json").write_text(json.dumps(job, indent=1))
    with open(folder / "worker.log", "wb") as log:
        process = subprocess.Popen([sys.executable, str(_PEERS_SCRIPT), str(folder / "job.json")], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_worker_env(settings.threads),
                                   cwd=folder)
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            process.kill()

        timer = threading.Timer(settings.timeout_s, stop)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except BaseException:
            process.kill()
            process.wait()
            raise
        finally:
            timer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    peak_rss_mb = usage.ru_maxrss / 1024.0  # kB on Linux
    result_file = folder / "result.json"
    if timed_out.is_set():
        return {"status": "timeout", "error": f"no result within {settings.timeout_s:g} s", "peak_rss_mb": peak_rss_mb}
    if not result_file.exists():
        tail = (folder / "worker.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return {"status": "failed", "error": f"worker exited with {process.returncode}: {tail[0][:300]}",
                "peak_rss_mb": peak_rss_mb}
    record = json.loads(result_file.read_text())
    record["peak_rss_mb"] = peak_rss_mb
    return record


def run_suites(suites: list[Suite], settings: RunSettings, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Run every method on every pair; return (rows, per-label rows), one row per (pair, method) plus "none".

    The "none" rows score the identity (before registration) and take no time.
    """
    from tqdm import tqdm

    jobs = [(suite, pair, method) for suite in suites for pair in suite.pairs for method in settings.methods]
    rows: list[dict] = []
    label_rows: list[dict] = []
    bar = tqdm(total=len(jobs), disable=not progress, unit="run", dynamic_ncols=True)
    try:
        for suite in suites:
            for index, pair in enumerate(suite.pairs):
                before, before_labels = score(pair, None)
                base = {"suite": suite.name, "pair": pair.id}
                rows.append({**base, "method": "none", "status": "ok", "error": "", **before, "time_s": 0.0})
                label_rows += [{**base, "method": "none", **entry} for entry in before_labels]
                for method in settings.methods:
                    bar.set_description(f"{suite.name}/{pair.id}/{method}")
                    folder = run_dir(settings.output_dir, suite.name, pair.id, method)
                    if folder.exists():
                        shutil.rmtree(folder)
                    folder.mkdir(parents=True)
                    job = {"method": method, "fixed": str(pair.fixed), "moving": str(pair.moving),
                           "preset": pair.preset, "device": settings.device, "threads": settings.threads,
                           "seed": settings.seed, "weights": settings.weights, "output_dir": str(folder)}
                    record = _run_worker(job, folder, settings)
                    row = {**base, "method": method, "threads": settings.threads,
                           **{k: record.get(k) for k in ("status", "error", "time_s", "cpu_s", "peak_rss_mb",
                                                         "peak_gpu_mb", "device")}}
                    row["dice_before"] = before.get("dice_mean")
                    row["hd95_before_mm"] = before.get("hd95_mm")
                    row["tre_before_mm"] = before.get("tre_mm")
                    row["field_error_before_mm"] = before.get("field_error_mm")
                    field_file = folder / "displacement.nii.gz"
                    if record.get("status") == "ok":
                        try:
                            values, per_label = score(pair, sitk.ReadImage(str(field_file), sitk.sitkVectorFloat64))
                            row.update(values)
                            label_rows += [{**base, "method": method, **entry} for entry in per_label]
                        except Exception as error:  # scoring failures are reported like peer failures
                            row.update(status="failed", error=f"scoring: {type(error).__name__}: {error}")
                    if field_file.exists() and index > 0 and not settings.keep_fields:
                        field_file.unlink()
                    rows.append(row)
                    bar.update()
    finally:
        bar.close()
    return rows, label_rows
