"""The paper's ablation on our data: plain / +MoA / +SHMoE / full, same data, budget and seed.

``shmoareg train --ablation --dataset D.json --output-dir RUN --steps N`` preprocesses once
(``RUN/data.npz``, ``RUN/val_pairs.pt``), trains each variant into ``RUN/VARIANT`` with
identical arguments, then scores every variant's best checkpoint on the same held-out
pairs: Dice (mean +- sd over pairs), HD95 (mm), SDlogJ, folding, parameters and
seconds per pair, written to ``RUN/ablation.json`` and ``RUN/ablation.md``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["run_ablation", "score_variant", "table"]

LABELS = {"plain": "plain encoder-decoder", "moa": "+MoA", "shmoe": "+SHMoE", "full": "full SHMoAReg"}


def score_variant(weights: Path, pairs: dict, num_labels: int, spacing: float) -> dict:
    """Metrics of one weights file on the validation pairs (CPU, one thread count as configured)."""
    from ..labels import one_hot
    from ..metrics import hd95_per_label
    from ..warp import warp_labels
    from ..weights import load_weights
    from .scores import jacobian_scores, mean_dice

    model, info = load_weights(weights)
    dice, hd95, sdlogj, folding, seconds = [], [], [], [], []
    with torch.no_grad():
        for i in range(len(pairs["fixed"])):
            fixed, moving = pairs["fixed"][i : i + 1].float(), pairs["moving"][i : i + 1].float()
            start = time.perf_counter()
            u = model(fixed, moving).displacement
            seconds.append(time.perf_counter() - start)
            warped = warp_labels(one_hot(pairs["moving_labels"][i : i + 1].long(), num_labels), u).argmax(1)[0].numpy()
            fixed_labels = pairs["fixed_labels"][i].long().numpy()
            dice.append(mean_dice(fixed_labels, warped, num_labels))
            distances = hd95_per_label(fixed_labels, warped)
            hd95.append(spacing * float(np.nanmean([v for v in distances.values() if np.isfinite(v)])))
            spread, folded = jacobian_scores(u[0].numpy())
            sdlogj.append(spread)
            folding.append(folded)
    return {"dice_mean": float(np.mean(dice)), "dice_sd": float(np.std(dice)), "hd95_mm": float(np.mean(hd95)),
            "sdlogj": float(np.mean(sdlogj)), "folding_percent": 100 * float(np.mean(folding)),
            "parameters": sum(p.numel() for p in model.parameters()), "cpu_seconds_per_pair": float(np.median(seconds)),
            "train_seconds": info.metadata.get("train_seconds"), "best_step": info.metadata.get("step"),
            "sha256": info.sha256, "dice_per_pair": dice}


def table(results: dict, before: float) -> str:
    lines = ["| variant | Dice (mean ± sd over pairs) | HD95 mm | SDlogJ | folding % | parameters | CPU s / pair | "
             "training min | best at step |", "|---|---|---|---|---|---|---|---|---|",
             f"| no registration (identity) | {before:.3f} | | 0 | 0 | | | | |"]
    for name, r in results.items():
        lines.append(f"| {LABELS[name]} | {r['dice_mean']:.3f} ± {r['dice_sd']:.3f} | {r['hd95_mm']:.1f} | "
                     f"{r['sdlogj']:.3f} | {r['folding_percent']:.3f} | {r['parameters']:,} | "
                     f"{r['cpu_seconds_per_pair']:.2f} | {r['train_seconds'] / 60:.1f} | {r['best_step']} |")
    return "\n".join(lines) + "\n"


def run_ablation(args, run_dir: Path, preset: str, spacing: float, cancel) -> dict:
    from .run import VARIANTS, prepare, train_one
    from .scores import mean_dice

    run_dir.mkdir(parents=True, exist_ok=True)
    prepare(args, run_dir, preset, spacing)
    results = {}
    for variant in VARIANTS:
        folder = run_dir / variant
        if not (folder / "run.json").is_file():  # finished variants are kept, so the ablation itself resumes
            args.resume = (folder / "last.pt").is_file()
            train_one(args, folder, variant, preset, spacing, cancel, data_dir=run_dir)
    pairs = torch.load(run_dir / "val_pairs.pt", weights_only=True)
    num_labels = len(json.loads((run_dir / "full" / "run.json").read_text())["label_values"])
    before = float(np.mean([mean_dice(pairs["fixed_labels"][i].long().numpy(), pairs["moving_labels"][i].long().numpy(),
                                      num_labels) for i in range(len(pairs["fixed"]))]))
    for variant in VARIANTS:
        results[variant] = score_variant(run_dir / variant / "best.pt", pairs, num_labels, spacing)
    (run_dir / "ablation.json").write_text(json.dumps({"dice_before": before, "results": results}, indent=1))
    (run_dir / "ablation.md").write_text(table(results, before))
    print(table(results, before))
    return results
