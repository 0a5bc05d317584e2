"""Weights against instance optimisation, side by side, through the real ``shmoareg register`` command.

    python -m SHMoAReg.training.compare --suite abdomen-heldout --weights abdomen-ct -o OUT
    python -m SHMoAReg.training.compare --pairs PAIRS.json --weights RUN/best.pt -o OUT --only alone default

Registers every pair of a benchmark pairs file (or of a built-in benchmark suite, generated into
``OUT/pairs``; see ``docs/benchmark.md``) at its native size with every configuration in
:data:`CONFIGS` (``{weights}`` is substituted; the pair's preset and the default affine stage are
used), one ``shmoareg register`` process at a time, and tabulates the mean Dice over the labels (then
mean +- sd over pairs), SDlogJ, folding, the wall time the report gives (``timings_s.total``: the
registration) and the whole command's (starting Python, imports and writing the outputs included), each
with its ratio to today's default (instance optimisation alone). Writes ``OUT/compare.json`` and
``OUT/compare.md``; prints the table.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .run import load_average

__all__ = ["CONFIGS", "REFERENCE", "SHORT_NAMES", "select_configs", "compare", "table"]

REFERENCE = "instance optimisation alone (--weights none)"
CONFIGS = {  # name -> extra register arguments ({weights} is substituted)
    "affine only (--weights none --iterations 0)": ["--weights", "none", "--iterations", "0"],
    "weights alone, one pass (--iterations 0 --network-passes 1)": ["--weights", "{weights}", "--iterations", "0",
                                                                    "--network-passes", "1"],
    "weights alone (--iterations 0)": ["--weights", "{weights}", "--iterations", "0"],
    "weights + 20 iterations": ["--weights", "{weights}", "--iterations", "20"],
    "weights, one pass, + the preset's short instance optimisation (--network-passes 1)": [
        "--weights", "{weights}", "--network-passes", "1"],
    "weights + the preset's short instance optimisation (default)": ["--weights", "{weights}"],
    REFERENCE: ["--weights", "none"],
}
SHORT_NAMES = dict(zip(("affine", "alone1", "alone", "20", "default1", "default", "io"), CONFIGS,
                       strict=True))  # --only's choices


def select_configs(only: list[str] | None) -> dict[str, list[str]]:
    """The configurations that ``--only`` names (:data:`SHORT_NAMES`), in :data:`CONFIGS`' order; all without it."""
    chosen = {SHORT_NAMES[key] for key in only} if only else set(CONFIGS)
    return {name: extra for name, extra in CONFIGS.items() if name in chosen}


def _register(pair, config: list[str], out: Path, weights: str) -> tuple[dict, float]:
    """The report of one ``shmoareg register`` process, and that process's wall time (s)."""
    command = [sys.executable, "-m", "SHMoAReg", "register", "--fixed", str(pair.fixed), "--moving", str(pair.moving),
               "-o", str(out), "--overwrite", "--preset", pair.preset, "--device", "cpu",
               *[a.format(weights=weights) for a in config]]
    for role in ("fixed_labels", "moving_labels"):
        if getattr(pair, role):
            command += [f"--{role.replace('_', '-')}", str(getattr(pair, role))]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace")
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
    return json.loads((out / "report.json").read_text()), wall


def _field_error(pair, out: Path) -> float | None:
    """Mean |u - u_true| (mm) over the fixed label map's voxels (all voxels without one), when the pair has a
    known field (``true_displacement``, LPS mm on the fixed grid, as the benchmark scores it)."""
    if not getattr(pair, "true_displacement", None):
        return None
    import SimpleITK as sitk

    found = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "displacement.nii.gz")))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(pair.true_displacement)))
    error = np.linalg.norm(found - truth, axis=-1)
    inside = sitk.GetArrayFromImage(sitk.ReadImage(str(pair.fixed_labels))) > 0 if pair.fixed_labels else error == error
    return float(error[inside].mean())


def _mean_dice(report: dict, key: str, labels: list[int] | None) -> float:
    scores = report["metrics"].get(key.replace("_mean", ""), {})
    if labels and isinstance(scores, dict):
        values = [v for k, v in scores.items() if int(k) in labels and np.isfinite(v)]
        return float(np.mean(values)) if values else float("nan")
    return float(report["metrics"][key])


def table(results: dict) -> str:
    """The Markdown table of :func:`compare`'s results."""
    def seconds(r: dict, key: str) -> tuple[str, str]:  # mean per pair, ratio to the reference's
        if not r.get(key):
            return "", ""
        reference = results.get(REFERENCE, {}).get(key)
        return f"{np.mean(r[key]):.1f}", f"{np.sum(r[key]) / np.sum(reference):.2f}" if reference else ""

    first = next(iter(results.values()))
    lines = ["| configuration | Dice (mean ± sd over pairs) | field error mm | SDlogJ | folding % | seconds per pair | "
             "time / instance optimisation alone | whole command, s per pair | whole command / instance optimisation "
             "alone's |", "|---|---|---|---|---|---|---|---|---|",
             f"| no registration | {np.mean(first['dice_before']):.3f} ± {np.std(first['dice_before']):.3f} "
             f"| | | | | | | |"]
    for name, r in results.items():
        errors = [e for e in r.get("field_error_mm", []) if e is not None]
        error = f"{np.mean(errors):.2f}" if errors else ""
        lines.append(f"| {name} | {np.mean(r['dice']):.3f} ± {np.std(r['dice']):.3f} | {error} | "
                     f"{np.mean(r['sdlogj']):.3f} | {100 * np.mean(r['folding']):.3f} | "
                     f"{' | '.join(seconds(r, 'seconds'))} | {' | '.join(seconds(r, 'command_seconds'))} |")
    return "\n".join(lines) + "\n"


def compare(pairs_file: Path, weights: str, output: Path, configs: dict[str, list[str]] | None = None) -> dict:
    """Run every configuration on every pair of ``pairs_file``; see the module docstring."""
    from ..benchmark.pairs import load_pairs

    suite = load_pairs(pairs_file)
    configs = configs or CONFIGS
    results = {name: {"dice": [], "dice_before": [], "sdlogj": [], "folding": [], "seconds": [], "command_seconds": [],
                      "start": [], "deformable_kept": [], "field_error_mm": []} for name in configs}
    for pair in suite.pairs:
        for n, (name, extra) in enumerate(configs.items()):
            report, wall = _register(pair, extra, output / "runs" / pair.id / f"config{n}", weights)
            r = results[name]
            r["dice"].append(_mean_dice(report, "dice_mean", pair.labels))
            r["dice_before"].append(_mean_dice(report, "dice_mean_before", pair.labels))
            r["sdlogj"].append(report["metrics"]["sdlogj"])
            r["folding"].append(report["metrics"]["folding_fraction"])
            r["seconds"].append(report["timings_s"]["total"])
            r["command_seconds"].append(round(wall, 2))
            r["field_error_mm"].append(_field_error(pair, output / "runs" / pair.id / f"config{n}"))
            r["start"].append((report.get("start") or {}).get("kept"))
            r["deformable_kept"].append((report.get("deformable_check") or {}).get("kept"))
            print(f"{pair.id} | {name}: Dice {r['dice_before'][-1]:.3f} -> {r['dice'][-1]:.3f}, "
                  f"{r['seconds'][-1]:.1f} s (the command {wall:.1f} s)", flush=True)
    text = table(results)
    load = load_average()
    (output / "compare.json").write_text(json.dumps({"weights": weights, "pairs": str(pairs_file), "results": results,
                                                     "load_average_after": load}, indent=1))
    (output / "compare.md").write_text(text, encoding="utf-8")
    print(text)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SHMoAReg.training.compare", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--pairs", type=Path, help="a benchmark pairs JSON file")
    source.add_argument("--suite", help="a built-in benchmark suite, generated into OUT/pairs")
    parser.add_argument("--data-dir", help="the shared data folder (for --suite)")
    parser.add_argument("--weights", required=True, help="shipped weights name or .pt file")
    parser.add_argument("--output-dir", "-o", type=Path, required=True)
    parser.add_argument("--only", nargs="+", choices=list(SHORT_NAMES), metavar="CONFIG",
                        help=f"run only these configurations ({', '.join(SHORT_NAMES)}); all by default")
    args = parser.parse_args(argv)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    pairs_file = args.pairs
    if args.suite:
        from ..benchmark.suites import build_suites

        pairs_file = build_suites(args.suite, args.output_dir, args.data_dir)[0].source
    compare(Path(pairs_file), args.weights, args.output_dir, select_configs(args.only))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
