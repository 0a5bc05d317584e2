"""``shmoareg train`` and ``shmoareg experts`` (CLI plugin), also ``python -m SHMoAReg.train`` for torchrun.

    shmoareg train --dataset DATASET.json --output-dir RUN [--preset abdomen-ct] [--spacing 4] \
        [--epochs 10 --steps-per-epoch 50 | --steps 500] [--resume] [--device cpu|cuda] [--amp]
    torchrun --nproc_per_node 2 -m SHMoAReg.train train --dataset ... --output-dir RUN
    shmoareg train --ablation --dataset ... --output-dir RUN --steps 150     # the four variants
    shmoareg experts RUN_OR_WEIGHTS --pairs RUN/val_pairs.pt --output-dir OUT

Rank 0 preprocesses the dataset once into ``RUN/data.npz`` (SimpleITK) and draws the
validation pairs into ``RUN/val_pairs.pt``; the training itself then needs only
torch, numpy and the network. See docs/training.md. This module is the command line
only; the run itself is :mod:`SHMoAReg.training.run`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .training.run import VARIANTS, prepare, preset_and_spacing, train_one  # standard library only at import time

__all__ = ["add_parser", "main", "VARIANTS"]


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
    p.add_argument("--val-patch", type=int, nargs=3, metavar=("D", "H", "W"),
                   help="validation patch in voxels (default: --patch); make it cover the labelled region")
    p.add_argument("--epochs", type=int, default=10, help="0 = only preprocess (data.npz, val_pairs.pt) and exit")
    p.add_argument("--steps-per-epoch", type=int, default=50)
    p.add_argument("--steps", type=int, help="total steps (sets --epochs = ceil(steps / steps-per-epoch))")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr-schedule", choices=["constant", "cosine"], default="constant",
                   help="cosine: decay from --lr to 1%% of it over the planned steps")
    p.add_argument("--intra-subject", type=float, default=0.5,
                   help="share of pairs made from one subject under two random transforms (default 0.5)")
    p.add_argument("--image-only-share", type=float, default=0.0, metavar="SHARE",
                   help="share of the samples drawn from the dataset's image-only subjects (its \"images\" list: real "
                        "images without labels, trained as pairs of one image under two transforms with a known "
                        "displacement; needs --known-displacement); default 0")
    p.add_argument("--plain-background", type=float, default=0.0,
                   help="share of samples whose unlabelled background is left untextured (default 0)")
    p.add_argument("--misalignment", type=float, default=1.0,
                   help="scale of the random affine and deformation each image of a pair gets (default 1: up to "
                        "10 deg, 10 %% scale, 4 voxels shift, 4 voxels smooth displacement); smaller suits pairs "
                        "that register's affine stage has pre-aligned")
    p.add_argument("--contrast-prior", choices=["t1-brain"],
                   help="render a share of the samples with this modality's tissue contrast (labels of one tissue "
                        "share an intensity, tissues in their usual order, background 0) instead of random "
                        "intensities; t1-brain: skull-stripped T1, FreeSurfer label ids")
    p.add_argument("--contrast-prior-prob", type=float, default=0.5,
                   help="share of samples rendered with --contrast-prior (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", choices=list(VARIANTS), default="full", help="network variant (ablation switches)")
    p.add_argument("--similarity", choices=["lncc", "mind"], default="lncc")
    p.add_argument("--smoothness", choices=["diffusion", "bending"], default="diffusion")
    for name, default in (("similarity", 1.0), ("smoothness", 0.5), ("dice", 1.0), ("balance", 0.01),
                          ("gate-balance", 0.01), ("z", 1e-3), ("known", 1.0), ("folding", 0.0)):
        p.add_argument(f"--w-{name}", type=float, default=default, help=f"weight of the {name} loss (default {default})"
                       + ("; penalises det J < 0.1, i.e. only where the field (nearly) folds" if name == "folding" else ""))
    p.add_argument("--known-displacement", type=float, default=0.0, metavar="VOXELS",
                   help="make intra-subject pairs with an exactly known displacement up to this many voxels and "
                        "add its end-point error to the loss (weight --w-known); 0 = off (default)")
    p.add_argument("--dice-sigmas", type=float, nargs="+", default=[0.0], metavar="SIGMA",
                   help="label Dice averaged over the labels blurred by these sigmas in voxels (default 0: sharp); "
                        "e.g. 0 2 4 lets organs that do not overlap yet pull towards each other")
    p.add_argument("--teacher", type=int, default=0, metavar="PARTNERS",
                   help="supervise inter-subject pairs by teacher fields that a label-driven registration computes "
                        "once (RUN/teacher.npz) for each subject and its next PARTNERS subjects (0 = off)")
    p.add_argument("--init-weights", metavar="WEIGHTS",
                   help="start from these weights (a shipped name or a .pt file) instead of a random network")
    p.add_argument("--cascade-share", type=float, default=0.0, metavar="SHARE",
                   help="share of the steps that train the network's second pass on the moving image warped by its "
                        "first (as `register` applies it, --network-passes); 0 = off (default)")
    p.add_argument("--validation-passes", type=int, default=1, metavar="N",
                   help="also report the validation Dice of the network applied up to N times (as `register "
                        "--network-passes N` does); best.pt is still chosen by one pass (default 1: off)")
    p.add_argument("--val-pairs", type=int, default=6, help="number of held-out validation pairs")
    p.add_argument("--time-limit-min", type=float, help="stop after this much training time (validates and exports)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pt")
    p.add_argument("--ablation", action="store_true", help="train the four variants (plain/moa/shmoe/full) into "
                                                          "OUTPUT_DIR/VARIANT with the same data, budget and seed")
    p.add_argument("--workers", type=int, default=0,
                   help="background processes that synthesise the training pairs (default 0: in the training process; "
                        "worth it when the network's step is fast, e.g. on a GPU)")
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


def run_train(args, cancel) -> int:
    from .errors import InputError

    preset, spacing = preset_and_spacing(args)
    run_dir = Path(args.output_dir)
    if (run_dir / "last.pt").is_file() and not args.resume:
        raise InputError(f"{run_dir} already holds a training run (last.pt); add --resume to continue it or choose "
                         f"another --output-dir")
    if args.image_only_share and not args.known_displacement:
        raise InputError("--image-only-share: image-only subjects train only as pairs with a known displacement; "
                         "give --known-displacement too")
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
    from .pipeline.progress import CancelFlag

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
