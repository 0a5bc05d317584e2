"""``shmoareg batch``: register a cohort of pairs on Dask, on this machine or on a running cluster.

    shmoareg batch --pairs cohort.csv -o OUT [register options] [--workers N | --scheduler tcp://host:8786]

Every ``register`` option applies to every pair; a pair's own keys (JSON) or cells (CSV) replace them
(:mod:`SHMoAReg.cohort.pairs`). Writes ``OUT/runs/<id>/`` per pair (what ``register`` writes, all at
once, plus ``qa.png``), ``OUT/results.csv`` (rewritten as each pair finishes) and ``OUT/report.html``.
A rerun skips the pairs whose folder holds a complete result (``--overwrite`` registers them again)
and registers the others, failed ones included. See docs/cohorts.md.

Exit codes: 0 every pair done or skipped; 3 (:data:`SHMoAReg.cli.EXIT_PAIRS_FAILED`) some pairs failed,
the others finished (the failed ones are listed at the end); 2 an unusable pairs file or option, or
Dask's ``distributed`` missing (nothing registered); 130 cancelled (Ctrl-C: the pairs finished so far
are kept, a rerun resumes).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from ..cli import EXIT_PAIRS_FAILED, add_common_options, add_register_options, register_kwargs
from ..errors import InputError
from .pairs import Cohort, CohortPair, load_cohort
from .results import complete_report, one_line, row_from_report, run_folder, write_results

__all__ = ["add_parser", "run_batch", "BATCH_CANCEL_GRACE_S"]

# Ctrl-C: seconds to cancel the pairs and close the Dask cluster before the process is ended.
BATCH_CANCEL_GRACE_S = 30.0
_INPUT_KEYS = ("fixed_labels", "moving_labels", "fixed_landmarks", "moving_landmarks")


def add_parser(subparsers) -> None:
    """Add the ``batch`` sub-command (the hook :mod:`SHMoAReg.cli` looks for in its plug-in modules)."""
    p = subparsers.add_parser(
        "batch", help="register a cohort of pairs on Dask (this machine or a cluster); resumable",
        description="Registers every pair of --pairs into OUTPUT_DIR/runs/<id>/ (as `register` does, plus qa.png) "
                    "and writes OUTPUT_DIR/results.csv and OUTPUT_DIR/report.html. The register options apply to "
                    "every pair; the pairs file may set them per pair. A rerun skips complete pairs. Exit code 3: "
                    "some pairs failed (listed at the end). See docs/cohorts.md.")
    p.add_argument("--pairs", required=True,
                   help="pairs file: JSON (the benchmark's format) or .csv with columns id,fixed,moving[,...]; "
                        "paths relative to the file")
    p.add_argument("--output-dir", "-o", required=True)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int,
                       help="worker processes of the local cluster (default: one per GPU, else "
                            "min(pairs, CPUs/4, memory/4 GiB))")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on the Dask cluster of this scheduler (e.g. tcp://host:8786) instead of this machine")
    p.add_argument("--threads", type=int, help="torch threads per pair (default: the worker's share of the CPUs)")
    p.add_argument("--retries", type=int, default=1,
                   help="times a pair that raised an unexpected error is tried again (default 1; input errors are "
                        "not retried; a pair whose worker died is rescheduled by Dask itself)")
    add_register_options(p)
    add_common_options(p)
    p.set_defaults(func=run_batch, cancel_grace_s=BATCH_CANCEL_GRACE_S)


def _say(args: argparse.Namespace, message: str, stage: str = "batch", **extra) -> None:
    """A line for the user: on stderr, or a JSON line on stdout with --json-progress."""
    if args.json_progress:
        print(json.dumps({"stage": stage, "progress": 1.0 if stage in ("done", "cancelled") else 0.0,
                          "message": message, **extra}), flush=True)
    else:
        print(message, file=sys.stderr, flush=True)


def _check_arguments(args: argparse.Namespace) -> None:
    if importlib.util.find_spec("distributed") is None:
        raise InputError('shmoareg batch needs Dask\'s "distributed" package: pip install "shmoareg[cohort]"')
    for name, least in (("workers", 1), ("threads", 1), ("retries", 0)):
        value = getattr(args, name)
        if value is not None and value < least:
            raise InputError(f"--{name} must be at least {least}, got {value}")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        raise InputError(f"output folder {args.output_dir} exists and is a file")


def _absolute(value: str | None, option: str) -> str | None:
    """A path given on the command line, made absolute (workers may run elsewhere); it must exist."""
    if value is None:
        return None
    path = Path(value).expanduser().resolve()
    if not path.exists():
        raise InputError(f"{option}: {path} does not exist")
    return str(path)


def _base_kwargs(args: argparse.Namespace, device: str) -> dict:
    """The ``register`` keyword arguments every pair starts from: ``shmoareg register``'s mapping of the
    options (:func:`SHMoAReg.cli.register_kwargs`), paths absolute, ``overwrite`` on (a pair reaches a
    worker only when its folder is not a complete result, or with --overwrite)."""
    kwargs = register_kwargs(args)
    kwargs["fixed_mask"] = _absolute(kwargs["fixed_mask"], "--fixed-mask")
    kwargs["moving_mask"] = _absolute(kwargs["moving_mask"], "--moving-mask")
    if kwargs["weights"] and Path(kwargs["weights"]).expanduser().is_file():
        kwargs["weights"] = str(Path(kwargs["weights"]).expanduser().resolve())
    return {**kwargs, "device": device, "overwrite": True}


def _pair_kwargs(base: dict, cohort_pair: CohortPair) -> dict:
    """``base`` with the pair's labels and landmarks and its own options."""
    pair = cohort_pair.pair
    inputs = {key: None if getattr(pair, key) is None else str(getattr(pair, key)) for key in _INPUT_KEYS}
    return {**base, **inputs, **cohort_pair.options}


def _split(cohort: Cohort, output_dir: Path, overwrite: bool) -> tuple[dict[str, dict], list[CohortPair]]:
    """(rows of the pairs whose folder holds a complete result, the pairs to register)."""
    skipped, todo = {}, []
    for cohort_pair in cohort.pairs:
        folder = run_folder(output_dir, cohort_pair.id)
        report = None if overwrite else complete_report(folder)
        if report is None:
            todo.append(cohort_pair)
        else:
            skipped[cohort_pair.id] = row_from_report(cohort_pair.id, "skipped", report, folder)
    return skipped, todo


def _ordered(cohort: Cohort, rows: dict[str, dict]) -> list[dict]:
    return [rows[p.id] for p in cohort.pairs if p.id in rows]


def _register(args: argparse.Namespace, cohort: Cohort, todo: list[CohortPair], output_dir: Path,
              rows: dict[str, dict], cancelled: Callable[[], bool]) -> bool:
    """Register ``todo`` on Dask, adding each pair's row to ``rows`` (and results.csv) as it finishes;
    False when cancelled."""
    from ..io.outputs import recover_leftovers
    from .cluster import connect, plan_local, worker_device
    from .progress import PairProgress
    from .schedule import Job, run_jobs

    plan = None if args.scheduler else plan_local(len(todo), args.device, args.workers, args.threads)
    base = _base_kwargs(args, worker_device(args.device, plan))
    jobs = [Job(p.id, str(p.pair.fixed), str(p.pair.moving), str(run_folder(output_dir, p.id)), _pair_kwargs(base, p))
            for p in todo]
    progress = PairProgress(len(jobs), json_lines=args.json_progress)

    def on_row(row: dict) -> None:
        rows[row["id"]] = row
        progress(row)
        write_results(_ordered(cohort, rows), output_dir / "results.csv")

    try:
        with connect(args.scheduler, plan, args.threads) as connection:
            dashboard = connection.dashboard or ("off (install bokeh for it)" if connection.local else "none reported")
            _say(args, f"{connection.description}; dashboard: {dashboard}", "cluster", dashboard=connection.dashboard)
            finished = run_jobs(connection, jobs, args.retries, on_row, cancelled)
    finally:
        progress.close()
    if plan is not None:  # the local worker processes have ended: remove what a killed one left
        for job in jobs:
            recover_leftovers(job.output_dir)
    return finished


def _add_missing_pictures(cohort: Cohort, rows: dict[str, dict], output_dir: Path) -> None:
    """qa.png for the skipped pairs whose folder lacks one (results of an older run)."""
    from ..io.image_io import read_image
    from ..evaluate.qa import QA_FILE, qa_picture_for_run

    for cohort_pair in cohort.pairs:
        row = rows.get(cohort_pair.id)
        folder = run_folder(output_dir, cohort_pair.id)
        if row is None or row["status"] != "skipped" or (folder / QA_FILE).exists():
            continue
        try:
            fixed = read_image(cohort_pair.pair.fixed, "fixed image", cohort_pair.options.get("fixed_series"))
            qa_picture_for_run(folder, fixed, title=cohort_pair.id)
        except Exception as error:  # noqa: BLE001 - the result itself is complete and kept
            row["error"] = f"no QA picture: {type(error).__name__}: {one_line(str(error))}"


def _command() -> str:
    return "shmoareg " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["batch"] else ""


def _finish(args: argparse.Namespace, cohort: Cohort, rows: list[dict], output_dir: Path) -> int:
    """Print the summary and the failed pairs; the exit code."""
    counts = {status: sum(1 for r in rows if r["status"] == status) for status in ("done", "skipped", "failed")}
    message = (f"{counts['done']} done, {counts['skipped']} skipped (already complete), {counts['failed']} failed "
               f"of {len(cohort.pairs)} pairs; results in {output_dir / 'results.csv'} and "
               f"{output_dir / 'report.html'}")
    failed = [r for r in rows if r["status"] == "failed"]
    if args.json_progress:
        print(json.dumps({"stage": "done", "progress": 1.0, "message": message, "output_dir": str(output_dir),
                          **counts, "failed_pairs": {r["id"]: r["error"] for r in failed}}), flush=True)
    else:
        print(message)
        if failed:
            print("failed pairs:\n" + "\n".join(f"  {r['id']}: {r['error']}" for r in failed))
    if failed:
        print(f"error: {len(failed)} of {len(cohort.pairs)} pairs failed: {', '.join(r['id'] for r in failed)}",
              file=sys.stderr, flush=True)
        return EXIT_PAIRS_FAILED
    return 0


def run_batch(args: argparse.Namespace, cancel: Callable[[], bool] | None = None) -> int:
    """Run ``shmoareg batch`` with parsed ``args``; returns the exit code (see the module docstring)."""
    from .report import write_report

    cancelled = cancel or (lambda: False)
    _check_arguments(args)
    cohort = load_cohort(args.pairs)
    output_dir = Path(args.output_dir).resolve()
    (output_dir / "runs").mkdir(parents=True, exist_ok=True)
    rows, todo = _split(cohort, output_dir, args.overwrite)
    _say(args, f"{len(cohort.pairs)} pairs in {cohort.source.name}: {len(rows)} skipped (complete results in "
               f"{output_dir / 'runs'}), {len(todo)} to register", skipped=len(rows), to_register=len(todo))
    write_results(_ordered(cohort, rows), output_dir / "results.csv")
    if todo and not _register(args, cohort, todo, output_dir, rows, cancelled):
        registered = sum(1 for r in rows.values() if r["status"] != "skipped")
        _say(args, f"cancelled: the {registered} pair(s) finished before the stop are kept in {output_dir / 'runs'}; "
                   f"run the same command again to resume", "cancelled")
        return 130
    _add_missing_pictures(cohort, rows, output_dir)
    ordered = _ordered(cohort, rows)
    write_results(ordered, output_dir / "results.csv")
    write_report(ordered, output_dir, f"SHMoAReg cohort {cohort.name}", _command())
    return _finish(args, cohort, ordered, output_dir)
