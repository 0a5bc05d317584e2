"""The paper's ablation on our data: plain / +MoA / +SHMoE / full, same data, budget and seed.

``shmoareg train --ablation --dataset D.json --output-dir RUN --steps N`` preprocesses once
(``RUN/data.npz``, ``RUN/val_pairs.pt``), trains each variant into ``RUN/VARIANT`` with
identical arguments, then scores every variant's best checkpoint on the same held-out
pairs: Dice (mean +- sd over pairs), HD95 (mm), SDlogJ, folding, parameters and
seconds per pair, and - when the run trains with ``--known-displacement`` - the end-point
error on intra-subject pairs of the held-out subjects with an exactly known displacement
(an answer free of label noise), written to ``RUN/ablation.json`` and ``RUN/ablation.md``.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["run_ablation", "score_variant", "table"]

LABELS = {"plain": "plain encoder-decoder", "moa": "+MoA", "shmoe": "+SHMoE", "full": "full SHMoAReg"}


def known_field_error(model, known: dict, spacing: float) -> float:
    """Mean end-point error (mm) of ``model`` on :func:`.synthesis.known_pairs` (the answer is ``displacement``)."""
    errors = []
    with torch.no_grad():
        for i in range(len(known["fixed"])):
            u = model(known["fixed"][i : i + 1].float(), known["moving"][i : i + 1].float()).displacement
            errors.append(float((u[0] - known["displacement"][i]).pow(2).sum(0).sqrt().mean()) * spacing)
    return float(np.mean(errors))


def score_variant(weights: Path, pairs: dict, num_labels: int, spacing: float, known: dict | None = None) -> dict:
    """Metrics of one weights file on the validation pairs (CPU, one thread count as configured), plus the
    known-displacement error on ``known`` pairs when given."""
    from ..labels import one_hot
    from ..evaluate.metrics import hd95_per_label, jacobian_scores
    from ..optimise.warp import warp_labels
    from ..weights import load_weights
    from .scores import mean_dice

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
            "sha256": info.sha256, "dice_per_pair": dice,
            "known_epe_mm": None if known is None else known_field_error(model, known, spacing)}


def table(results: dict, before: float, known_before: float | None = None) -> str:
    lines = ["| variant | Dice (mean ± sd over pairs) | known-field error mm | HD95 mm | SDlogJ | folding % | parameters | "
             "CPU s / pair | training min | best at step |", "|---|---|---|---|---|---|---|---|---|---|",
             f"| no registration (identity) | {before:.3f} | {_mm(known_before)} | | 0 | 0 | | | | |"]
    for name, r in results.items():
        lines.append(f"| {LABELS[name]} | {r['dice_mean']:.3f} ± {r['dice_sd']:.3f} | {_mm(r.get('known_epe_mm'))} | "
                     f"{r['hd95_mm']:.1f} | "
                     f"{r['sdlogj']:.3f} | {r['folding_percent']:.3f} | {r['parameters']:,} | "
                     f"{r['cpu_seconds_per_pair']:.2f} | {r['train_seconds'] / 60:.1f} | {r['best_step']} |")
    return "\n".join(lines) + "\n"


def _mm(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


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
    known, known_before = None, None
    if getattr(args, "known_displacement", 0.0) > 0:
        from .run import synthesis_config
        from .synthesis import known_pairs, load_tensors

        config = synthesis_config(args)
        config.shape = tuple(getattr(args, "val_patch", None) or args.patch)
        held_out = load_tensors(run_dir / "data.npz", "validation")
        known = known_pairs(held_out if len(held_out) else load_tensors(run_dir / "data.npz", "training"), config,
                            2 * args.val_pairs, args.seed + 2)
        known_before = float(known["displacement"].pow(2).sum(1).sqrt().mean()) * spacing
    for variant in VARIANTS:
        results[variant] = score_variant(run_dir / variant / "best.pt", pairs, num_labels, spacing, known)
    (run_dir / "ablation.json").write_text(json.dumps({"dice_before": before, "known_epe_before_mm": known_before,
                                                       "results": results}, indent=1))
    (run_dir / "ablation.md").write_text(table(results, before, known_before), encoding="utf-8")
    print(table(results, before, known_before))
    return results
