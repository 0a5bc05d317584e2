"""Weights vs instance optimisation on a run's held-out validation pairs, side by side, through the real CLI.

    python -m SHMoAReg.training.compare RUN --weights RUN/best.pt --output-dir OUT [--pairs N]

Writes each validation pair of ``RUN/val_pairs.pt`` as NIfTI on the training grid
(``spacing_mm`` of the run; CT presets map [0, 1] back to HU through the preset
window so that ``register`` normalises them to exactly what the network saw), then
runs ``shmoareg register`` for every configuration in :data:`CONFIGS` (no affine:
the patches are already centred) and tabulates Dice (mean over labels, then mean
+- sd over pairs) and the wall time the report gives (``timings_s.total``).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

__all__ = ["CONFIGS", "compare"]

CONFIGS = {  # name -> extra register arguments ({weights} is substituted)
    "instance optimisation only (preset, 80 it)": [],
    "instance optimisation only (20 it)": ["--iterations", "20"],
    "weights only": ["--weights", "{weights}", "--iterations", "0"],
    "weights + 20 it instance optimisation": ["--weights", "{weights}", "--iterations", "20"],
}


def _write_pairs(run: Path, folder: Path, count: int) -> tuple[list[dict], dict]:
    import SimpleITK as sitk
    import torch

    from ..presets import get_preset

    info = json.loads((run / "run.json").read_text())
    pairs = torch.load(run / "val_pairs.pt", weights_only=True)
    window = get_preset(info["preset"]).window
    spacing = float(info["spacing_mm"])
    written = []
    for i in range(min(count, len(pairs["fixed"]))):
        files = {}
        for key in ("fixed", "moving", "fixed_labels", "moving_labels"):
            array = pairs[key][i].float().numpy()
            array = array[0] if array.ndim == 4 else array
            if key in ("fixed", "moving") and window is not None:
                array = window[0] + (window[1] - window[0]) * array
            image = sitk.GetImageFromArray(array.astype(np.float32 if key in ("fixed", "moving") else np.uint8))
            image.SetSpacing((spacing,) * 3)
            files[key] = folder / f"pair{i}_{key}.nii.gz"
            sitk.WriteImage(image, str(files[key]))
        written.append(files)
    return written, info


def compare(run: Path, weights: str, output: Path, count: int = 6) -> dict:
    output.mkdir(parents=True, exist_ok=True)
    (output / "pairs").mkdir(exist_ok=True)
    pairs, info = _write_pairs(run, output / "pairs", count)
    results = {name: {"dice": [], "seconds": [], "sdlogj": [], "dice_before": []} for name in CONFIGS}
    for i, files in enumerate(pairs):
        for n, (name, extra) in enumerate(CONFIGS.items()):
            out = output / f"pair{i}_config{n}"
            command = [sys.executable, "-m", "SHMoAReg", "register", "--fixed", str(files["fixed"]), "--moving",
                       str(files["moving"]), "--fixed-labels", str(files["fixed_labels"]), "--moving-labels",
                       str(files["moving_labels"]), "-o", str(out), "--overwrite", "--preset", info["preset"],
                       "--spacing", str(info["spacing_mm"]), "--no-affine", "--device", "cpu",
                       *[a.format(weights=weights) for a in extra]]
            done = subprocess.run(command, capture_output=True, text=True, encoding="utf-8", errors="replace")
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(command)} failed: {done.stderr[-2000:]}")
            report = json.loads((out / "report.json").read_text())
            results[name]["dice"].append(report["metrics"]["dice_mean"])
            results[name]["dice_before"].append(report["metrics"]["dice_mean_before"])
            results[name]["sdlogj"].append(report["metrics"]["sdlogj"])
            results[name]["seconds"].append(report["timings_s"]["total"])
    lines = ["| configuration | Dice (mean ± sd over pairs) | SDlogJ | seconds per pair (register total) |",
             "|---|---|---|---|",
             f"| no registration | {np.mean(results[next(iter(CONFIGS))]['dice_before']):.3f} | 0 | |"]
    for name, r in results.items():
        lines.append(f"| {name} | {np.mean(r['dice']):.3f} ± {np.std(r['dice']):.3f} | {np.mean(r['sdlogj']):.3f} | "
                     f"{np.mean(r['seconds']):.1f} |")
    table = "\n".join(lines) + "\n"
    (output / "compare.json").write_text(json.dumps({"weights": weights, "run": str(run), "results": results}, indent=1))
    (output / "compare.md").write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m SHMoAReg.training.compare")
    parser.add_argument("run")
    parser.add_argument("--weights", required=True)
    parser.add_argument("--output-dir", "-o", required=True)
    parser.add_argument("--pairs", type=int, default=6)
    args = parser.parse_args()
    compare(Path(args.run), args.weights, Path(args.output_dir), args.pairs)
