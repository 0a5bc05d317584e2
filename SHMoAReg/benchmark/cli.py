"""``shmoareg benchmark``: run SHMoAReg and the peer methods on the same pairs, side by side.

    shmoareg benchmark --suite all --output-dir bench
    shmoareg benchmark --pairs my_pairs.json --methods shmoareg-io,ants-syn -o bench

The peers come from the ``bench`` extra (``pip install -e .[bench]``); a method
whose package is missing is reported as unavailable for each pair.
"""
from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

from ..errors import InputError, RegistrationCancelled
from .pairs import load_pairs
from .peers import METHODS
from .suites import SUITE_GROUPS, SUITES, build_suites

__all__ = ["add_benchmark_parser", "add_parser", "run_benchmark"]


def add_benchmark_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``benchmark`` sub-command to an ``argparse`` sub-parser collection."""
    p = subparsers.add_parser(
        "benchmark", help="compare SHMoAReg with elastix, ANTs, SimpleITK demons and ConvexAdam on the same pairs",
        description="Writes results.csv, results_labels.csv, summary.md (mean ± sd per method, time ratio vs "
                    "SHMoAReg), dice_boxplot.png, dice_vs_time.png and figures/ into --output-dir.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--pairs", help="a pairs JSON file (see docs/benchmark.md)")
    source.add_argument("--suite", default="all", choices=list(SUITES) + list(SUITE_GROUPS),
                        help="a built-in suite generated from the shared data (default: all = ct-deformed, "
                             "abdomen-synth, brain)")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--output-dir", "-o", required=True)
    p.add_argument("--data-dir", help="the shared data folder (default: $SHMOAREG_DATA or ../shared/data)")
    p.add_argument("--weights", help="SHMoAReg weights for the 'shmoareg' method (default: the preset's shipped ones)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="device of the torch methods (SHMoAReg, ConvexAdam); the others run on the CPU")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads per run (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated suites and of every method")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per run before it counts as failed")
    p.add_argument("--max-pairs", type=int, help="use at most this many pairs of each suite (a quick look)")
    p.add_argument("--keep-fields", action="store_true", help="keep every displacement field (default: first pair)")
    p.add_argument("--overwrite", action="store_true", help="replace an output folder that holds results")
    p.set_defaults(func=run_benchmark)
    return p


add_parser = add_benchmark_parser  # the hook SHMoAReg.cli looks for in its plug-in modules


def _command_line(args: argparse.Namespace) -> str:
    """The command as typed, or (when called from Python) an equivalent one rebuilt from ``args``."""
    if sys.argv[1:2] == ["benchmark"]:
        return "shmoareg " + shlex.join(sys.argv[1:])
    parts = ["shmoareg", "benchmark"]
    for key, value in sorted(vars(args).items()):
        if key in ("func", "command") or value is None or value is False:
            continue
        parts += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return shlex.join(parts)


def run_benchmark(args: argparse.Namespace, cancel: Callable[[], bool] | None = None) -> int:
    """Run the benchmark described by parsed ``args``; 0 when the report was written."""
    from .report import write_csv, write_report
    from .runner import RunSettings, run_suites

    output_dir = Path(args.output_dir)
    if (output_dir / "results.csv").exists() and not args.overwrite:
        raise InputError(f"{output_dir} already holds results.csv; use --overwrite or another --output-dir")
    if args.max_pairs is not None and args.max_pairs < 1:
        raise InputError(f"--max-pairs must be at least 1, got {args.max_pairs}")
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    try:
        settings = RunSettings(methods=methods, output_dir=output_dir, threads=args.threads, seed=args.seed,
                               device=args.device, weights=args.weights, timeout_s=args.timeout,
                               keep_fields=args.keep_fields)
        output_dir.mkdir(parents=True, exist_ok=True)
        suites = [load_pairs(args.pairs)] if args.pairs else build_suites(args.suite, output_dir, args.data_dir,
                                                                           args.seed)
    except (ValueError, FileNotFoundError) as error:
        raise InputError(str(error)) from None
    if args.max_pairs is not None:
        for suite in suites:
            suite.pairs = suite.pairs[:args.max_pairs]
    command = _command_line(args)
    done: dict[str, list[dict]] = {"rows": [], "labels": []}

    def save_progress(rows: list[dict], label_rows: list[dict]) -> None:
        done.update(rows=rows, labels=label_rows)
        write_csv(rows, output_dir / "results.csv")

    try:
        rows, label_rows = run_suites(suites, settings, progress=True, cancel=cancel, on_row=save_progress)
    except (RegistrationCancelled, KeyboardInterrupt):
        total = sum(len(s.pairs) for s in suites) * len(methods)
        finished = sum(1 for r in done["rows"] if r["method"] != "none")
        write_report(done["rows"], done["labels"], suites, output_dir,
                     f"{command}  (interrupted after {finished} of {total} runs)", list(methods))
        raise
    paths = write_report(rows, label_rows, suites, output_dir, command, list(methods))
    failed = sum(1 for r in rows if r["status"] != "ok")
    print(f"{len(rows) - failed}/{len(rows)} runs succeeded; summary in {paths['summary']}")
    return 0
