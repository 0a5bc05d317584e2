"""``shmoareg train`` and ``shmoareg experts`` (CLI plugin), also ``python -m SHMoAReg.train`` for torchrun.

    shmoareg train --dataset DATASET.json --output-dir RUN [--preset abdomen-ct] [--spacing 4] \
        [--epochs 10 --steps-per-epoch 50 | --steps 500] [--resume] [--device cpu|cuda] [--amp]
    torchrun --nproc_per_node 2 -m SHMoAReg.train train --dataset ... --output-dir RUN
    shmoareg train --ablation --dataset ... --output-dir RUN --steps 150     # the four variants
    shmoareg experts RUN_OR_WEIGHTS --pairs RUN/val_pairs.pt --output-dir OUT

Rank 0 preprocesses the dataset once into ``RUN/data.npz`` (SimpleITK) and draws the
validation pairs into ``RUN/val_pairs.pt``; the training itself then needs only
torch, numpy and the network. See docs/training.md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

__all__ = ["add_parser", "main", "VARIANTS"]

VARIANTS = {  # the ablation: attention type x displacement head
    "plain": {"use_moa": False, "use_shmoe": False},
    "moa": {"use_moa": True, "use_shmoe": False},
    "shmoe": {"use_moa": False, "use_shmoe": True},
    "full": {"use_moa": True, "use_shmoe": True},
}
DROP_LABELS_FROM = {"brain-mri": 500}  # SynthSeg's non-brain classes: our brain T1s are skull-stripped


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("train", help="train SHMoAReg weights from a Learn2Reg-style dataset JSON",
                              description="Writes into --output-dir: data.npz, val_pairs.pt, last.pt (resumable), best.pt "
                                          "(weights + .sha256), metrics.csv, learning_curve.png, run.json.")
    p.add_argument("--dataset", required=True, help="dataset JSON (schema in docs/training.md)")
    p.add_argument("--output-dir", "-o", required=True)
    p.add_argument("--preset", help="normalisation and default spacing (default: the dataset's, else abdomen-ct)")
    p.add_argument("--spacing", type=float, help="training grid spacing in mm (default: the preset's)")
    p.add_argument("--patch", type=int, nargs=3, default=(48, 48, 48), metavar=("D", "H", "W"),
                   help="training patch in voxels")
    p.add_argument("--epochs", type=int, default=10, help="0 = only preprocess (data.npz, val_pairs.pt) and exit")
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--steps", type=int, help="total steps (sets --epochs = ceil(steps / steps-per-epoch))")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=list(VARIANTS), default="full", help="network variant (ablation switches)")
    p.add_argument("--similarity", choices=["lncc", "mind"], default="lncc")
    p.add_argument("--smoothness", choices=["diffusion", "bending"], default="diffusion")
    for name, default in (("similarity", 1.0), ("smoothness", 0.5), ("dice", 1.0), ("balance", 0.01),
                          ("gate-balance", 0.01), ("z", 1e-3)):
        p.add_argument(f"--w-{name}", type=float, default=default, help=f"weight of the {name} loss (default {default})")
    p.add_argument("--val-pairs", type=int, default=6, help="number of held-out validation pairs")
    p.add_argument("--time-limit-min", type=float, help="stop after this much training time (validates and exports)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    p.add_argument("--ablation", action="store_true", help="train the four variants (plain/moa/shmoe/full) into "
                                                          "OUTPUT_DIR/VARIANT with the same data, budget and seed")
    p.add_argument("--device", default="auto")
    p.add_argument("--amp", action="store_true", help="mixed precision (fp16 on CUDA, bf16 on CPU)")
    p.set_defaults(func=run_train)

    e = subparsers.add_parser("experts", help="expert utilisation of trained weights on validation pairs",
                              description="Per SHMoE layer and direction: how often each expert wins and its mean weight, "
                                          "overall and per label; per MoA layer: head-selection frequencies.")
    e.add_argument("weights", help="a run folder (uses best.pt), a .pt weights file or a shipped weights name")
    e.add_argument("--pairs", help="val_pairs.pt from a training run (default: RUN/val_pairs.pt)")
    e.add_argument("--output-dir", "-o", required=True)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=run_experts)


def _settings(args) -> tuple[str, float]:
    from .presets import get_preset
    from .training.dataset import read_dataset

    dataset = read_dataset(args.dataset)
    preset = args.preset or dataset.preset or "abdomen-ct"
    spacing = args.spacing or get_preset(preset).spacing
    return preset, spacing


def prepare(args, run_dir: Path, preset: str, spacing: float, log=print) -> None:
    """Rank 0: preprocess the dataset to ``data.npz`` and draw ``val_pairs.pt`` (kept when resuming)."""
    import numpy as np
    import torch

    from .presets import get_preset
    from .training.dataset import preprocess, read_dataset
    from .training.synthesis import SynthesisConfig, load_tensors, validation_pairs

    dataset = read_dataset(args.dataset)
    settings = get_preset(preset)
    data_file = run_dir / "data.npz"
    if data_file.is_file():
        from .errors import InputError

        with np.load(data_file) as stored:
            made_at = json.loads(bytes(stored["meta"]).decode())["spacing_mm"]
        if abs(made_at - spacing) > 1e-6:
            raise InputError(f"{data_file} was preprocessed at {made_at:g} mm, not {spacing:g} mm; use a new "
                             f"--output-dir or delete it")
    else:
        log(f"preprocessing {len(dataset.training)} training + {len(dataset.validation)} validation subjects at {spacing:g} mm")
        preprocess(dataset, data_file, spacing, settings.modality, settings.window, DROP_LABELS_FROM.get(preset))
    if not (run_dir / "val_pairs.pt").is_file():
        split = "validation" if dataset.validation else "training"
        data = load_tensors(data_file, split)
        pairs = validation_pairs(data, SynthesisConfig(shape=tuple(args.patch)), args.val_pairs, args.seed + 1,
                                 dataset.registration_val or None)
        pairs["split"] = torch.tensor(0 if split == "validation" else 1)
        torch.save(pairs, run_dir / "val_pairs.pt")


def train_one(args, run_dir: Path, variant: str, preset: str, spacing: float, cancel, data_dir: Path | None = None) -> dict:
    import torch
    import torch.distributed as dist

    from .devices import resolve_device
    from .training.loop import TrainConfig, _distributed, train
    from .training.synthesis import SynthesisConfig, load_tensors

    rank, _ = _distributed()
    data_dir = data_dir or run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        prepare(args, data_dir, preset, spacing)
    if dist.is_initialized():
        dist.barrier()
    epochs = math.ceil(args.steps / args.steps_per_epoch) if args.steps else args.epochs
    config = TrainConfig(epochs=epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                         learning_rate=args.lr, similarity=args.similarity, smoothness=args.smoothness,
                         w_similarity=args.w_similarity, w_smoothness=args.w_smoothness, w_dice=args.w_dice,
                         w_balance=args.w_balance, w_gate_balance=args.w_gate_balance, w_z=args.w_z,
                         seed=args.seed, amp=args.amp,
                         time_limit_min=args.time_limit_min, network=dict(VARIANTS[variant]))
    data = load_tensors(data_dir / "data.npz", "training")
    validation = torch.load(data_dir / "val_pairs.pt", weights_only=True)
    device = resolve_device(args.device)
    if rank == 0:
        print(f"[{variant}] {len(data)} training subjects, {data.num_labels} labels, {spacing:g} mm, patch "
              f"{tuple(args.patch)}, {epochs} x {args.steps_per_epoch} steps on {device}", flush=True)
    metadata = {"variant": variant, "spacing_mm": spacing, "patch": list(args.patch), "dataset": str(Path(args.dataset).resolve()),
                "label_values": data.meta["label_values"], "label_names": data.meta["label_names"],
                "normalisation": {"modality": data.meta["modality"], "window": data.meta["window"]},
                "n_training_subjects": len(data), "validation_pairs": validation["pairs"].tolist(),
                "drop_labels_from": data.meta["drop_labels_from"]}
    return train(data, validation, run_dir, config, SynthesisConfig(shape=tuple(args.patch)), device, args.resume,
                 preset, metadata, cancel, log=lambda m: print(m, flush=True) if rank == 0 else None)


def run_train(args, cancel) -> int:
    from .errors import InputError

    preset, spacing = _settings(args)
    run_dir = Path(args.output_dir)
    if (run_dir / "last.pt").is_file() and not args.resume:
        raise InputError(f"{run_dir} already holds a training run (last.pt); add --resume to continue it or choose "
                         f"another --output-dir")
    if (args.steps if args.steps is not None else args.epochs) == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
        prepare(args, run_dir, preset, spacing)
        print(f"preprocessed only: {run_dir / 'data.npz'}, {run_dir / 'val_pairs.pt'}")
        return 0
    if args.ablation:
        from .training.ablation import run_ablation

        run_ablation(args, run_dir, preset, spacing, cancel)
        return 0
    result = train_one(args, run_dir, args.variant, preset, spacing, cancel)
    print(f"best validation Dice {result['best_val_dice']:.3f} after {result['steps']} steps "
          f"({result['train_seconds'] / 60:.1f} min); weights in {run_dir / 'best.pt'}")
    return 0


def run_experts(args, cancel) -> int:
    from .training.expert_analysis import run

    run(args.weights, args.pairs, Path(args.output_dir), args.device)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m SHMoAReg.train`` (e.g. under torchrun)."""
    from .errors import InputError
    from .progress import CancelFlag

    parser = argparse.ArgumentParser(prog="python -m SHMoAReg.train")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args, CancelFlag())
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
