"""Run methods x pairs, each in its own process, and score every result with the same code.

For each (pair, method) the runner writes ``runs/<suite>/<pair>/<method>/job.json``
and starts ``python peers.py job.json``. Wall and CPU time come from the worker
(the peer call only: reading inputs, registering, computing the dense field)
and so does peak RSS (the worker's VmHWM: interpreter and the method's libraries
included). The displacement it writes is scored here:
the moving labels are warped onto the fixed grid (nearest neighbour) with
``T(x) = x + u(x)``, the Jacobian determinant comes from ``u``. A method that
fails, times out or is not installed gets a row with its status and message.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..evaluate import metrics
from ..errors import RegistrationCancelled
from ..evaluate.evaluation import check_same_grid, warp_labels
from ..io.landmarks import read_landmarks
from .pairs import Pair, Suite
from .peers import METHODS, PEERS, PeerOptions, PeerUnavailable

__all__ = ["RunSettings", "COLUMNS", "LABEL_COLUMNS", "run_suites", "score", "run_dir"]

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

def _transform(displacement: sitk.Image | None) -> sitk.Transform | None:
    return None if displacement is None else sitk.DisplacementFieldTransform(
        sitk.Cast(displacement, sitk.sitkVectorFloat64))


def score(pair: Pair, displacement: sitk.Image | None) -> tuple[dict, list[dict]]:
    """Metrics of ``displacement`` (None: the identity, i.e. before registration) on ``pair``.

    Labels are scored when present in both the fixed and the moving label map (and in
    ``pair.labels`` when given); a label that a method makes vanish scores Dice 0.
    Returns the row's metric columns and one ``{label, dice, hd95_mm}`` per scored label.
    """
    fixed = sitk.ReadImage(str(pair.fixed))
    transform = _transform(displacement)
    row: dict = {}
    per_label: list[dict] = []
    if pair.fixed_labels is not None:
        fixed_labels = sitk.ReadImage(str(pair.fixed_labels))
        moving_labels = sitk.ReadImage(str(pair.moving_labels))
        check_same_grid(fixed_labels, fixed, f"pair {pair.id}: fixed labels")
        labels = metrics.label_presence(fixed_labels, moving_labels)[0]
        if pair.labels is not None:
            labels = [label for label in labels if label in set(pair.labels)]
        warped = warp_labels(moving_labels, fixed_labels, transform)
        dice = metrics.dice_per_label(fixed_labels, warped, labels)
        hd95 = metrics.hd95_per_label(fixed_labels, warped, labels)
        row["dice_mean"] = metrics.summarize(dice)
        row["hd95_mm"] = metrics.summarize(hd95)
        per_label = [{"label": label, "dice": dice[label], "hd95_mm": hd95[label]} for label in labels]
    if pair.fixed_landmarks is not None:
        fixed_points, moving_points = read_landmarks(pair.fixed_landmarks), read_landmarks(pair.moving_landmarks)
        if transform is not None:
            fixed_points = np.array([transform.TransformPoint(tuple(map(float, p))) for p in fixed_points])
        row["tre_mm"] = metrics.tre_mm(fixed_points, moving_points)
    if pair.true_displacement is not None:
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(pair.true_displacement), sitk.sitkVectorFloat64))
        estimate = 0.0 if displacement is None else sitk.GetArrayFromImage(displacement).astype(np.float64)
        error = np.linalg.norm(truth - estimate, axis=-1)
        region = sitk.GetArrayViewFromImage(sitk.ReadImage(str(pair.fixed_labels))) > 0 \
            if pair.fixed_labels is not None else np.ones(error.shape, bool)
        row["field_error_mm"] = float(error[region].mean())
    if displacement is not None:
        determinant = metrics.jacobian_determinant(sitk.GetArrayFromImage(displacement).astype(np.float64), displacement)
        row["sdlogj"] = metrics.sdlogj(determinant)
        row["folding_pct"] = 100.0 * metrics.folding_fraction(determinant)
    return row, per_label


# --- running -----------------------------------------------------------------------------

def _worker_env(threads: int) -> dict:
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"):
        env[name] = str(threads)
    env["PYTHONPATH"] = os.pathsep.join([str(_PACKAGE_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _unavailable(method: str, preset: str, settings: RunSettings) -> str | None:
    """Why ``method`` cannot run here (checked in this process, so no worker is started for it), or None."""
    try:
        PEERS[method].prepare(PeerOptions(preset=preset, weights=settings.weights, device=settings.device))
    except PeerUnavailable as error:
        return str(error)
    return None


def _run_worker(job: dict, folder: Path, settings: RunSettings, cancel: Callable[[], bool]) -> dict:
    """Start the worker for ``job``; return its record (or a failure record)."""
    (folder / "job.json").write_text(json.dumps(job, indent=1))
    with open(folder / "worker.log", "wb") as log:
        process = subprocess.Popen([sys.executable, str(_PEERS_SCRIPT), str(folder / "job.json")], stdout=log,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=_worker_env(settings.threads),
                                   cwd=folder)
        deadline = time.monotonic() + settings.timeout_s
        try:
            while True:
                try:
                    returncode = process.wait(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
                    break
                except subprocess.TimeoutExpired:
                    if cancel():
                        raise RegistrationCancelled("benchmark cancelled")
                    if time.monotonic() >= deadline:
                        process.kill()
                        process.wait()
                        return {"status": "timeout", "error": f"no result within {settings.timeout_s:g} s"}
        except BaseException:
            process.kill()
            process.wait()
            raise
    result_file = folder / "result.json"
    if not result_file.exists():
        tail = (folder / "worker.log").read_text(errors="replace").strip().splitlines()[-1:] or [""]
        return {"status": "failed", "error": f"worker exited with {returncode}: {tail[0][:300]}"}
    return json.loads(result_file.read_text())


def _run_one(suite: Suite, index: int, pair: Pair, method: str, before: dict, settings: RunSettings,
             cancel: Callable[[], bool]) -> tuple[dict, list[dict]]:
    """One method on one pair: the results row and the per-label rows."""
    base = {"suite": suite.name, "pair": pair.id, "method": method}
    folder = run_dir(settings.output_dir, suite.name, pair.id, method)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    job = {"method": method, "fixed": str(pair.fixed), "moving": str(pair.moving), "preset": pair.preset,
           "device": settings.device, "threads": settings.threads, "seed": settings.seed,
           "weights": settings.weights, "output_dir": str(folder)}
    missing = _unavailable(method, pair.preset, settings)
    record = {"status": "unavailable", "error": missing} if missing else _run_worker(job, folder, settings, cancel)
    row = {**base, "threads": settings.threads,
           **{k: record.get(k) for k in ("status", "error", "time_s", "cpu_s", "peak_rss_mb", "peak_gpu_mb", "device")},
           "dice_before": before.get("dice_mean"), "hd95_before_mm": before.get("hd95_mm"),
           "tre_before_mm": before.get("tre_mm"), "field_error_before_mm": before.get("field_error_mm")}
    label_rows: list[dict] = []
    field_file = folder / "displacement.nii.gz"
    if record.get("status") == "ok":
        try:
            values, per_label = score(pair, sitk.ReadImage(str(field_file), sitk.sitkVectorFloat64))
            row.update(values)
            label_rows = [{**base, **entry} for entry in per_label]
        except Exception as error:  # scoring failures are reported like peer failures
            row.update(status="failed", error=f"scoring: {type(error).__name__}: {error}")
    if field_file.exists() and index > 0 and not settings.keep_fields:
        field_file.unlink()
    return row, label_rows


def run_suites(suites: list[Suite], settings: RunSettings, progress: bool = True,
               cancel: Callable[[], bool] | None = None,
               on_row: Callable[[list[dict], list[dict]], None] | None = None) -> tuple[list[dict], list[dict]]:
    """Run every method on every pair; return (rows, per-label rows), one row per (pair, method) plus "none".

    Pairs are taken round-robin over the suites (first pair of each suite, then the
    second, ...), so that an interrupted run still covers every suite. The "none" rows
    score the identity (before registration) and take no time. ``cancel()`` is polled
    while a worker runs; when it turns true the worker is killed and
    :class:`SHMoAReg.errors.RegistrationCancelled` is raised. ``on_row(rows, label_rows)``
    is called after every run (the CLI keeps results.csv up to date with it).
    """
    from tqdm import tqdm

    cancel = cancel or (lambda: False)
    longest = max((len(suite.pairs) for suite in suites), default=0)
    order = [(suite, index, suite.pairs[index]) for index in range(longest) for suite in suites
             if index < len(suite.pairs)]
    rows: list[dict] = []
    label_rows: list[dict] = []
    bar = tqdm(total=len(order) * len(settings.methods), disable=not progress, unit="run", dynamic_ncols=True)
    try:
        for suite, index, pair in order:
            before, before_labels = score(pair, None)
            base = {"suite": suite.name, "pair": pair.id, "method": "none"}
            rows.append({**base, "status": "ok", "error": "", **before, "time_s": 0.0})
            label_rows += [{**base, **entry} for entry in before_labels]
            for method in settings.methods:
                bar.set_description(f"{suite.name}/{pair.id}/{method}")
                row, per_label = _run_one(suite, index, pair, method, before, settings, cancel)
                rows.append(row)
                label_rows += per_label
                if on_row is not None:
                    on_row(rows, label_rows)
                bar.update()
    finally:
        bar.close()
    return rows, label_rows
