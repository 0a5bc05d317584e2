"""The training run behind ``shmoareg train``: settings from the command line, preprocessing, one variant's training.

The command line itself (arguments, ``run_train``) is the plugin :mod:`SHMoAReg.train`; this module
imports only the standard library at import time, so building the ``shmoareg`` parser stays cheap.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = ["load_average", "VARIANTS", "DROP_LABELS_FROM", "preset_and_spacing", "synthesis_config",
           "draw_validation_pairs", "prepare", "train_one"]

VARIANTS = {  # the ablation: attention type x displacement head
    "plain": {"use_moa": False, "use_shmoe": False},
    "moa": {"use_moa": True, "use_shmoe": False},
    "shmoe": {"use_moa": False, "use_shmoe": True},
    "full": {"use_moa": True, "use_shmoe": True},
}
DROP_LABELS_FROM = {"brain-mri": 500}  # SynthSeg's non-brain classes: our brain T1s are skull-stripped


def load_average() -> list[float] | None:
    """The 1-, 5- and 15-minute load averages (whether the machine was idle), or None where the system has none."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


def preset_and_spacing(args) -> tuple[str, float]:
    """The preset (``--preset``, else the dataset's, else abdomen-ct) and the grid spacing in mm (``--spacing``, else
    the preset's)."""
    from ..preprocess.presets import get_preset
    from .dataset import read_dataset

    dataset = read_dataset(args.dataset)
    preset = args.preset or dataset.preset or "abdomen-ct"
    spacing = args.spacing or get_preset(preset).spacing
    return preset, spacing


def synthesis_config(args):
    """The synthesis settings the command line asks for."""
    from .synthesis import SynthesisConfig

    factor = getattr(args, "misalignment", 1.0)
    base = SynthesisConfig()
    return SynthesisConfig(shape=tuple(args.patch), intra_subject=getattr(args, "intra_subject", 0.5),
                           plain_background=getattr(args, "plain_background", 0.0),
                           known_displacement_vox=getattr(args, "known_displacement", 0.0),
                           image_only_share=getattr(args, "image_only_share", 0.0) or 0.0,
                           contrast_prior=getattr(args, "contrast_prior", None) or "",
                           contrast_prior_prob=getattr(args, "contrast_prior_prob", 0.0),
                           rotation_deg=base.rotation_deg * factor, scale=base.scale * factor,
                           translation_vox=base.translation_vox * factor,
                           displacement_vox=base.displacement_vox * factor)


def draw_validation_pairs(args, data_file: Path, registration_val: list | None = None) -> dict:
    """A run's fixed validation pairs (``val_pairs.pt``): of the held-out subjects of ``data_file`` (of the training
    ones when it has none), ``--val-pairs`` of them on ``--val-patch`` (default ``--patch``), seed ``--seed`` + 1;
    ``registration_val``: the dataset's listed (fixed, moving) pairs, if any. ``split`` records which subjects."""
    import torch

    from .synthesis import load_tensors, validation_pairs

    split = "validation"
    data = load_tensors(data_file, split)
    if not len(data):
        split, data = "training", load_tensors(data_file, "training")
    config = synthesis_config(args)
    config.shape = tuple(getattr(args, "val_patch", None) or args.patch)
    pairs = validation_pairs(data, config, args.val_pairs, args.seed + 1, registration_val or None)
    pairs["split"] = torch.tensor(0 if split == "validation" else 1)
    return pairs


def prepare(args, run_dir: Path, preset: str, spacing: float, log=print) -> None:
    """Rank 0: preprocess the dataset to ``data.npz`` and draw ``val_pairs.pt`` (kept when resuming).

    The dataset's files are read only for what is missing: a run folder that already holds ``data.npz``,
    ``val_pairs.pt`` (and ``teacher.npz`` where asked for) trains without them, e.g. on a machine they were not
    copied to."""
    import numpy as np
    import torch

    from ..preprocess.presets import get_preset
    from .dataset import preprocess, read_dataset
    from .synthesis import load_tensors

    data_file = run_dir / "data.npz"
    dataset = None
    if data_file.is_file():
        from ..errors import InputError

        with np.load(data_file) as stored:
            made_at = json.loads(bytes(stored["meta"]).decode())["spacing_mm"]
        if abs(made_at - spacing) > 1e-6:
            raise InputError(f"{data_file} was preprocessed at {made_at:g} mm, not {spacing:g} mm; use a new "
                             f"--output-dir or delete it")
    else:
        dataset, settings = read_dataset(args.dataset), get_preset(preset)
        log(f"preprocessing {len(dataset.training)} training + {len(dataset.validation)} validation subjects at {spacing:g} mm")
        preprocess(dataset, data_file, spacing, settings.modality, settings.window, DROP_LABELS_FROM.get(preset))
    if not (run_dir / "val_pairs.pt").is_file():
        dataset = dataset or read_dataset(args.dataset)
        torch.save(draw_validation_pairs(args, data_file, dataset.registration_val), run_dir / "val_pairs.pt")
    partners = getattr(args, "teacher", 0) or 0
    if partners and not (run_dir / "teacher.npz").is_file():
        from .teacher import compute_teachers

        data = load_tensors(data_file, "training")
        log(f"teacher fields for {data.labelled} x {min(partners, data.labelled - 1)} inter-subject pairs (label-driven)")
        compute_teachers(data, run_dir / "teacher.npz", partners=partners, log=log)


def train_one(args, run_dir: Path, variant: str, preset: str, spacing: float, cancel, data_dir: Path | None = None) -> dict:
    """Train network ``variant`` into ``run_dir`` as the command line asks (rank 0 first prepares ``data_dir``, default
    ``run_dir``); returns :func:`.loop.train`'s result."""
    import torch
    import torch.distributed as dist

    from ..pipeline.devices import resolve_device
    from .loop import TrainConfig, _distributed, train
    from .synthesis import load_tensors

    rank, _ = _distributed()
    # before preprocessing and teacher fields, which load the machine themselves: was it idle when the command began?
    command_load = load_average()
    command_load = None if command_load is None else [round(v, 2) for v in command_load]
    data_dir = data_dir or run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        prepare(args, data_dir, preset, spacing)
    if dist.is_initialized():
        dist.barrier()
    epochs = math.ceil(args.steps / args.steps_per_epoch) if args.steps else args.epochs
    config = TrainConfig(epochs=epochs, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
                         learning_rate=args.lr, lr_schedule=args.lr_schedule, similarity=args.similarity, smoothness=args.smoothness,
                         w_similarity=args.w_similarity, w_smoothness=args.w_smoothness, w_dice=args.w_dice,
                         w_balance=args.w_balance, w_known=args.w_known, w_folding=args.w_folding, dice_sigmas=tuple(args.dice_sigmas), w_gate_balance=args.w_gate_balance, w_z=args.w_z,
                         seed=args.seed, amp=args.amp,
                         time_limit_min=args.time_limit_min, workers=getattr(args, "workers", 0) or 0, network=dict(VARIANTS[variant]),
                         init_weights=getattr(args, "init_weights", None),
                         cascade_share=getattr(args, "cascade_share", 0.0) or 0.0,
                         validation_passes=getattr(args, "validation_passes", 1) or 1)
    data = load_tensors(data_dir / "data.npz", "training")
    listed = len(data) - data.labelled
    image_only = listed if getattr(args, "image_only_share", 0) else 0  # the ones this run trains on
    if listed and not image_only and rank == 0:
        print(f"the dataset's {listed} image-only subject(s) are not used (--image-only-share 0)", flush=True)
    validation = torch.load(data_dir / "val_pairs.pt", weights_only=True)
    device = resolve_device(args.device)
    if rank == 0:
        print(f"[{variant}] {data.labelled} training subjects"
              + (f" + {image_only} image-only" if image_only else "") + f", {data.num_labels} labels, {spacing:g} mm, patch "
              f"{tuple(args.patch)}, {epochs} x {args.steps_per_epoch} steps on {device}", flush=True)
    metadata = {"variant": variant, "spacing_mm": spacing, "patch": list(args.patch), "dataset": str(Path(args.dataset).resolve()),
                "label_values": data.meta["label_values"], "label_names": data.meta["label_names"],
                "normalisation": {"modality": data.meta["modality"], "window": data.meta["window"]},
                "n_training_subjects": data.labelled, "n_image_only_subjects": image_only,
                "image_only_sources": [v for k, v in data.meta.get("sources", {}).items()
                                       if k.startswith("images_")] if image_only else [],
                "validation_pairs": validation["pairs"].tolist(),
                "drop_labels_from": data.meta["drop_labels_from"], "load_avg_at_command_start": command_load}
    teachers = None
    if getattr(args, "teacher", 0):
        from .teacher import load_teachers

        teachers, summary = load_teachers(data_dir / "teacher.npz")
        metadata["teacher"] = {k: summary[k] for k in ("config", "seconds", "dice_before", "dice", "max_folding")}
        metadata["teacher"]["pairs"] = len(teachers)
    return train(data, validation, run_dir, config, synthesis_config(args), device, args.resume,
                 preset, metadata, cancel, log=lambda m: print(m, flush=True) if rank == 0 else None, teachers=teachers)
