"""The training loop: losses, per-epoch validation, best checkpoint, resume, DDP (no image files are read).

Loss per pair (weights in :class:`TrainConfig`)::

    w_sim * similarity(fixed, moving o u) + w_smooth * smoothness(u) + w_dice * (1 - Dice(fixed labels,
    moving labels o u)) + w_known * end-point error (known or teacher displacement) + w_folding * mean relu(0.1 - det J)
    + w_balance * MoA balance + w_gate_balance * SHMoE gate balance + w_z * router z-loss

``u`` is the network's displacement in voxels (fixed->moving pull-back; see
:mod:`SHMoAReg.conventions`). One epoch is ``steps_per_epoch`` optimiser steps over
a :class:`PairDataset` sharded by ``DistributedSampler``; every sample is
synthesised from ``(seed, epoch, draw)`` (``draw``: its place in the epoch, so a
pair that comes round again in one epoch is a new sample), so an interrupted run resumes exactly
where its last checkpoint (``last.pt``, written atomically every
``checkpoint_every`` steps, at each epoch end and on cancel) left it.
Validation (rank 0, :mod:`.scores`): Dice, SDlogJ and folding on a fixed set of
held-out pairs; the best Dice is exported as ``best.pt`` in the shipped-weights format.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from ..errors import RegistrationCancelled
from ..labels import one_hot
from ..optimise.losses import multiscale_dice_loss, similarity_features, similarity_loss, smoothness_loss
from ..optimise.regularisers import folding_loss
from ..network import NetworkConfig, SHMoARegNet
from ..optimise.warp import warp_image
from .checkpoint import load_state, plot_curve, save_state, write_metrics
from .cascade import cascade_output, is_cascade_step
from .run import load_average
from .scores import validate
from .synthesis import SynthesisConfig, TensorData, make_pair

__all__ = ["TrainConfig", "PairDataset", "train", "validate"]


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 1
    learning_rate: float = 5e-4
    lr_schedule: str = "constant"  # or "cosine": from learning_rate down to 1 % of it over the planned steps
    similarity: str = "lncc"
    smoothness: str = "diffusion"
    w_similarity: float = 1.0
    w_smoothness: float = 0.5
    w_dice: float = 1.0
    w_known: float = 1.0  # mean end-point error (voxels) on pairs whose displacement is known
    w_folding: float = 0.0  # optimise.regularisers.folding_loss: pulls only where det J < 0.1
    dice_sigmas: tuple = (0.0,)  # label Dice on the labels blurred by these sigmas (voxels), averaged
    w_balance: float = 0.01
    w_gate_balance: float = 0.01  # keeps the SHMoE gates from collapsing onto one kernel size
    w_z: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 25
    amp: bool = False
    time_limit_min: float | None = None  # stop cleanly (validate, export) after this much training time
    workers: int = 0  # background processes that synthesise the pairs (0: in the training process)
    init_weights: str | None = None  # start a new run from these weights (a shipped name or a file) instead of at random
    cascade_share: float = 0.0  # share of the steps that train the second pass (training/cascade.py)
    validation_passes: int = 1  # > 1: also report the validation Dice of the network applied up to this many times
    network: dict = field(default_factory=dict)  # NetworkConfig overrides

    def to_dict(self) -> dict:
        return asdict(self)


class PairDataset(Dataset):
    """Item ``(i, draw)`` of epoch ``e``: a synthetic pair of the subjects ``pairs[i]`` drawn from
    ``(seed, e, draw, i)`` (see :func:`.synthesis.make_pair`); a plain ``i`` is ``(i, draw=i)``. An epoch longer
    than the list of pairs visits each pair several times, each time with its own draw: seeding by ``i`` alone made
    those visits identical copies (an epoch of 1,000 samples over 48 teacher pairs held 48 distinct ones).

    The (fixed, moving) training indices: ``pairs`` when given, else the dataset's ``registration_train``
    list when its ``"pairs"`` mode says so, else every ordered pair of distinct labelled subjects. Image-only
    subjects add ``(i, i)`` items, as many as make ``synthesis.image_only_share`` of the list (in turn over them).
    """

    def __init__(self, data: TensorData, synthesis: SynthesisConfig, seed: int,
                 pairs: list[tuple[int, int]] | None = None,
                 teachers: dict[tuple[int, int], torch.Tensor] | None = None) -> None:
        n = data.labelled
        self.data, self.synthesis, self.seed, self.epoch, self.teachers = data, synthesis, seed, 0, teachers
        if pairs is None and teachers:
            pairs = sorted(teachers)  # the inter-subject pairs whose answer the teacher gives
        if pairs is None and data.meta.get("pairs") == "registration_train":
            pairs = [tuple(pair) for pair in data.meta["registration_train"]]
        self.pairs = pairs or [(a, b) for a in range(n) for b in range(n) if a != b] or [(0, 0)]
        image_only = list(range(n, len(data)))
        if image_only and synthesis.image_only_share > 0:
            share = min(synthesis.image_only_share, 0.95)
            count = max(1, round(share / (1 - share) * len(self.pairs)))
            self.pairs = self.pairs + [(image_only[k % len(image_only)],) * 2 for k in range(count)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor]:
        index, draw = item if isinstance(item, tuple) else (item, item)
        seed = np.random.SeedSequence([self.seed, self.epoch, draw, index]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(seed))
        fixed, moving = self.pairs[index]
        if torch.rand((), generator=generator).item() < self.synthesis.intra_subject:
            moving = fixed
        return make_pair(self.data, fixed, moving, self.synthesis, generator, teachers=self.teachers)


def _known_epe(u: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean end-point error (voxels) against the known displacement inside each pair's ``known_mask``, over the
    pairs that have one (else 0)."""
    if "known" not in batch:
        return u.new_zeros(())
    known, mask = batch["known"].float(), batch["known_mask"]
    error = ((u - batch["displacement"]).pow(2).sum(dim=1) + 1e-6).sqrt()
    epe = (error * mask).sum(dim=(1, 2, 3)) / mask.sum(dim=(1, 2, 3)).clamp_min(1.0)
    return (known * epe).sum() / known.sum().clamp_min(1.0)


def losses(output, batch: dict, config: TrainConfig, num_labels: int) -> dict[str, torch.Tensor]:
    u = output.displacement.float()
    warped = warp_image(batch["moving"], u)
    terms = {"similarity": similarity_loss(similarity_features(batch["fixed"], config.similarity),
                                           similarity_features(warped, config.similarity), config.similarity),
             "smoothness": smoothness_loss(u, config.smoothness),
             "dice_loss": multiscale_dice_loss(one_hot(batch["fixed_labels"], num_labels),
                                               one_hot(batch["moving_labels"], num_labels), u, tuple(config.dice_sigmas)),
             "known_epe": _known_epe(u, batch),
             "folding": folding_loss(u) if config.w_folding else u.new_zeros(()),
             "balance": output.balance_loss.float(), "gate_balance": output.gate_balance_loss.float(),
             "z": output.z_loss.float()}
    terms["loss"] = (config.w_similarity * terms["similarity"] + config.w_smoothness * terms["smoothness"]
                     + config.w_dice * terms["dice_loss"] + config.w_known * terms["known_epe"]
                     + config.w_folding * terms["folding"] + config.w_balance * terms["balance"]
                     + config.w_gate_balance * terms["gate_balance"] + config.w_z * terms["z"])
    return terms


def learning_rate(config: TrainConfig, step: int, total_steps: int, seconds: float = 0.0) -> float:
    """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``, ``seconds`` into the training.

    The cosine schedule follows whichever budget runs out first: the steps, or ``config.time_limit_min`` (so a run
    stopped by its time limit has decayed its rate, whatever its step time)."""
    if config.lr_schedule == "constant" or total_steps <= 1:
        return config.learning_rate
    progress = step / (total_steps - 1)
    if config.time_limit_min:
        progress = max(progress, seconds / (60 * config.time_limit_min))
    progress = min(progress, 1.0)
    return float(config.learning_rate * (0.01 + 0.99 * 0.5 * (1 + np.cos(np.pi * progress))))


def _stack(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def _batch(dataset: PairDataset, items: list, device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in _stack([dataset[item] for item in items]).items()}


def _epoch_batches(dataset: PairDataset, order: list[tuple[int, int]], batch_size: int, workers: int,
                   device: torch.device):
    """The batches of ``order`` (dataset items ``(index, draw)``, ``batch_size`` per batch) on ``device``: made here
    when ``workers`` is 0, else by that many DataLoader processes ahead of the training step (the same samples: each
    is seeded by its epoch, draw and index)."""
    if workers <= 0:
        for start in range(0, len(order), batch_size):
            yield _batch(dataset, order[start:start + batch_size], device)
        return
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, sampler=order, num_workers=workers, collate_fn=_stack,
                        pin_memory=device.type == "cuda", prefetch_factor=4)
    for batch in loader:
        yield {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def hardware() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


@dataclass
class _Trainer:
    """What one run optimises: the model (``net`` is the same model wrapped for DDP when there are several
    processes), Adam, the AMP gradient scaler and dtype on ``device``, and ``state``, the counters kept in
    ``last.pt``: ``step``, ``epoch``, ``step_in_epoch``, ``history`` (metrics rows), ``best`` (validation Dice),
    ``train_seconds`` and ``sums`` (loss terms summed over the epoch so far)."""

    model: SHMoARegNet
    net: torch.nn.Module
    optimiser: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype
    device: torch.device
    state: dict

    def save(self, path: Path) -> None:
        """Write the resumable training state (model, optimiser, counters) atomically."""
        save_state({"model": self.model.state_dict(), "optimiser": self.optimiser.state_dict(), "state": self.state},
                   path)


def _start(config: TrainConfig, device: torch.device, world: int, resume_from: Path | None, log) -> _Trainer:
    """A new model (initialised from ``config.seed``) with Adam and zeroed counters, or the state saved in
    ``resume_from`` when that file exists."""
    torch.manual_seed(config.seed)
    model = SHMoARegNet(NetworkConfig(**config.network)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "history": [], "best": -1.0, "train_seconds": 0.0, "sums": {}}
    if resume_from is not None and resume_from.is_file():
        saved = load_state(resume_from)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        state = saved["state"]
        log(f"resuming from {resume_from}: epoch {state['epoch']}, step {state['step']}")
    elif config.init_weights:
        from ..weights import load_weights

        start, info = load_weights(config.init_weights)
        theirs, ours = start.config.to_dict(), model.config.to_dict()
        differ = [f"{key} {theirs[key]} instead of {ours[key]}" for key in ours if theirs.get(key) != ours[key]]
        if differ:
            from ..errors import InputError

            raise InputError(f"--init-weights {config.init_weights}: their network is not the one this run trains "
                             f"({'; '.join(differ)})")
        model.load_state_dict(start.state_dict())
        log(f"starting from the weights {info.path} (sha256 {info.sha256[:12]})")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    scaler = torch.amp.GradScaler(enabled=config.amp and device.type == "cuda")
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return _Trainer(model, net, optimiser, scaler, amp_dtype, device, state)


def _run_info(preset: str, config: TrainConfig, synthesis: SynthesisConfig, model: SHMoARegNet, world: int,
              metadata: dict | None) -> dict:
    """What ``run.json`` and ``best.pt`` record about the run: settings, hardware, load at the start, ``metadata``."""
    return {"preset": preset, "train": config.to_dict(), "synthesis": synthesis.to_dict(),
            "network": model.config.to_dict(), "world_size": world, "hardware": hardware(),
            "load_avg_at_start": load_average(),
            "command_line": [Path(sys.argv[0]).name, *sys.argv[1:]], **(metadata or {})}


def _progress_bar(total_steps: int, done: int):
    """A tqdm bar of the optimiser steps on stderr (refreshed every second on a terminal, else every 30 s), or None
    without tqdm."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total_steps, initial=done, desc="train", file=sys.stderr,
                mininterval=1.0 if sys.stderr.isatty() else 30.0)


def _optimise(trainer: _Trainer, batch: dict[str, torch.Tensor], lr: float, config: TrainConfig,
              num_labels: int) -> dict[str, float]:
    """One optimiser step on ``batch`` at learning rate ``lr`` (a cascade step when :func:`.cascade.is_cascade_step`
    says so); returns the loss terms of :func:`losses` as floats."""
    for group in trainer.optimiser.param_groups:
        group["lr"] = lr
    with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=config.amp):
        if is_cascade_step(trainer.state["step"], config.cascade_share):
            output = cascade_output(trainer.net, batch["fixed"], batch["moving"])
        else:
            output = trainer.net(batch["fixed"], batch["moving"])
    terms = losses(output, batch, config, num_labels)
    trainer.optimiser.zero_grad(set_to_none=True)
    trainer.scaler.scale(terms["loss"]).backward()
    trainer.scaler.step(trainer.optimiser)
    trainer.scaler.update()
    # one device -> host copy for all terms (each float() on a CUDA tensor is a synchronisation)
    return dict(zip(terms, torch.stack([value.detach().float() for value in terms.values()]).tolist()))


def _count_step(state: dict, values: dict[str, float], progress) -> None:
    """Add one step's loss terms to the epoch's sums and advance the step counters and the progress bar."""
    for key, value in values.items():
        state["sums"][key] = state["sums"].get(key, 0.0) + value
    state["step"] += 1
    state["step_in_epoch"] += 1
    if progress is not None:
        # refresh=False: the bar redraws at its own interval (30 s in a log file), not at every step
        progress.set_postfix(loss=f"{values['loss']:.3f}", dice=f"{1 - values['dice_loss']:.3f}", refresh=False)
        progress.update(1)


def _train_epoch(trainer: _Trainer, dataset: PairDataset, sampler: DistributedSampler, config: TrainConfig,
                 total_steps: int, num_labels: int, progress, cancel: Callable[[], bool],
                 checkpoint: Callable[[], None], last: Path) -> bool:
    """The remaining steps of epoch ``state["epoch"]``; their time is added to ``state["train_seconds"]``.

    Checkpoints every ``config.checkpoint_every`` steps except after the epoch's last step (that one is checkpointed
    after validation). On ``cancel()`` it checkpoints and raises :class:`RegistrationCancelled`. Returns True when
    ``config.time_limit_min`` ran out, which ends the epoch early.
    """
    state = trainer.state
    dataset.epoch = state["epoch"]
    sampler.set_epoch(state["epoch"])
    indices = list(sampler)
    first = state["step_in_epoch"] * config.batch_size
    # the k-th sample of this process in the epoch: a pair from the sampler's shuffled shard and a draw number
    # unique across processes
    order = [(indices[k % len(indices)], k * sampler.num_replicas + sampler.rank)
             for k in range(first, config.steps_per_epoch * config.batch_size)]
    batches = _epoch_batches(dataset, order, config.batch_size, config.workers, trainer.device)
    started = time.perf_counter()
    out_of_time = False
    while state["step_in_epoch"] < config.steps_per_epoch:
        lr = learning_rate(config, state["step"], total_steps, state["train_seconds"] + time.perf_counter() - started)
        batch = next(batches)
        _count_step(state, _optimise(trainer, batch, lr, config, num_labels), progress)
        if cancel():
            state["train_seconds"] += time.perf_counter() - started
            checkpoint()
            raise RegistrationCancelled(f"training interrupted at step {state['step']}; the checkpoint {last} "
                                        f"was saved: continue with --resume")
        if config.time_limit_min and state["train_seconds"] + time.perf_counter() - started > 60 * config.time_limit_min:
            out_of_time = True
            break
        if state["step"] % config.checkpoint_every == 0 and state["step_in_epoch"] < config.steps_per_epoch:
            elapsed = time.perf_counter() - started
            state["train_seconds"] += elapsed
            started += elapsed
            checkpoint()
    state["train_seconds"] += time.perf_counter() - started
    return out_of_time


def _close_epoch(state: dict, config: TrainConfig, total_steps: int, seconds_before: float) -> dict:
    """The training columns of the epoch's metrics row (``seconds_before``: ``train_seconds`` when the epoch's
    steps began); moves the counters on to the next epoch."""
    steps, load = max(state["step_in_epoch"], 1), load_average()
    row = {"epoch": state["epoch"] + 1, "step": state["step"], "train_seconds": round(state["train_seconds"], 1),
           "seconds_per_step": round((state["train_seconds"] - seconds_before) / steps, 3),
           "load_avg_1min": None if load is None else round(load[0], 2),
           "lr": learning_rate(config, state["step"] - 1, total_steps, state["train_seconds"])}
    row.update({f"train_{k}" if k != "loss" else "train_loss": v / steps for k, v in state["sums"].items()})
    state["epoch"] += 1
    state["step_in_epoch"], state["sums"] = 0, {}
    return row


def _validate_and_export(trainer: _Trainer, validation: dict, num_labels: int, row: dict, run_dir: Path, preset: str,
                         run_info: dict, log, config: TrainConfig) -> None:
    """Rank 0 after an epoch: validate, add the validation columns to ``row`` and the row to the history, export
    ``best.pt`` when the one-pass validation Dice improved (``config.validation_passes > 1`` adds the Dice of that
    many passes as a column only: on 5 Dec it ranked checkpoints unlike whole images through ``register``), rewrite ``metrics.csv`` and the learning curve, log one line."""
    from ..weights import save_weights

    state = trainer.state
    metrics = validate(trainer.model, validation, num_labels, trainer.device, config.validation_passes, config.similarity)
    row.update({k: v for k, v in metrics.items() if k != "val_dice_per_pair"})
    state["history"].append(row)
    if metrics["val_dice"] > state["best"]:
        state["best"] = metrics["val_dice"]
        info = {**run_info, "step": state["step"], "epoch": state["epoch"], "train_seconds": state["train_seconds"],
                "validation": metrics}
        save_weights(trainer.model, run_dir / "best.pt", preset, info, half=False)
    write_metrics(state["history"], run_dir / "metrics.csv")
    plot_curve(state["history"], run_dir / "learning_curve.png", f"{preset or 'run'}: {run_dir.name}")
    log(f"epoch {row['epoch']}: step {row['step']}, loss {row['train_loss']:.4f}, val Dice "
        f"{metrics['val_dice']:.3f} (before {metrics['val_dice_before']:.3f})"
        + (f", {config.validation_passes} passes {metrics['val_dice_passes']:.3f}" if "val_dice_passes" in metrics else "")
        + f", SDlogJ {metrics['val_sdlogj']:.3f}")


def train(data: TensorData, validation: dict, run_dir: str | os.PathLike, config: TrainConfig,
          synthesis: SynthesisConfig, device: torch.device, resume: bool = False, preset: str = "",
          metadata: dict | None = None, cancel: Callable[[], bool] | None = None, log=print,
          teachers: dict[tuple[int, int], torch.Tensor] | None = None) -> dict:
    """Train (or resume) into ``run_dir``; returns the best validation metrics. See the module docstring.
    ``teachers``: answers of inter-subject pairs (:mod:`.teacher`); then those pairs are the inter-subject ones."""
    rank, world = _distributed()
    run_dir = Path(run_dir)
    last = run_dir / "last.pt"
    cancel = cancel or (lambda: False)
    trainer = _start(config, device, world, last if resume else None, log)
    state = trainer.state
    dataset = PairDataset(data, synthesis, config.seed, teachers=teachers)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
    total_steps = config.epochs * config.steps_per_epoch
    run_info = _run_info(preset, config, synthesis, trainer.model, world, metadata)

    def checkpoint() -> None:
        if rank == 0:
            trainer.save(last)

    progress = _progress_bar(total_steps, state["step"]) if rank == 0 else None
    out_of_time = False
    while state["epoch"] < config.epochs and not out_of_time:
        seconds_before = state["train_seconds"]
        out_of_time = _train_epoch(trainer, dataset, sampler, config, total_steps, data.num_labels, progress, cancel,
                                   checkpoint, last)
        row = _close_epoch(state, config, total_steps, seconds_before)
        if rank == 0:
            _validate_and_export(trainer, validation, data.num_labels, row, run_dir, preset, run_info, log, config)
        checkpoint()
        if world > 1:
            dist.barrier()
    if progress is not None:
        progress.close()
    if rank == 0:
        (run_dir / "run.json").write_text(json.dumps({**run_info, "history": state["history"]}, indent=1))
    return {"best_val_dice": state["best"], "steps": state["step"], "train_seconds": state["train_seconds"],
            "history": state["history"]}
