"""The training loop: losses, per-epoch validation, best checkpoint, resume, DDP (torch + numpy + network only).

Loss per pair (weights in :class:`TrainConfig`)::

    w_sim * similarity(fixed, moving o u) + w_smooth * smoothness(u) + w_dice * (1 - Dice(fixed labels,
    moving labels o u)) + w_balance * MoA balance + w_gate_balance * SHMoE gate balance + w_z * router z-loss

``u`` is the network's displacement in voxels (fixed->moving pull-back; see
:mod:`SHMoAReg.conventions`). One epoch is ``steps_per_epoch`` optimiser steps over
a :class:`PairDataset` sharded by ``DistributedSampler``; every sample is
synthesised from ``(seed, epoch, index)`` so an interrupted run resumes exactly
where its last checkpoint (``last.pt``, written atomically every
``checkpoint_every`` steps, at each epoch end and on cancel) left it.
Validation (rank 0): Dice, SDlogJ and folding on a fixed set of held-out pairs;
the best Dice is exported as ``best.pt`` in the shipped-weights format.
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
import torch.nn.functional as F
from torch.utils.data import Dataset, DistributedSampler

from ..errors import RegistrationCancelled
from ..losses import similarity_features, similarity_loss, smoothness_loss, soft_dice_loss
from ..network import NetworkConfig, SHMoARegNet
from ..warp import warp_image, warp_labels
from .checkpoint import load_state, plot_curve, save_state, write_metrics
from .synthesis import SynthesisConfig, TensorData, make_pair

__all__ = ["TrainConfig", "PairDataset", "train", "validate", "jacobian_determinant_voxels"]


@dataclass
class TrainConfig:
    epochs: int = 10
    steps_per_epoch: int = 50
    batch_size: int = 1
    learning_rate: float = 5e-4
    similarity: str = "lncc"
    smoothness: str = "diffusion"
    w_similarity: float = 1.0
    w_smoothness: float = 0.5
    w_dice: float = 1.0
    w_balance: float = 0.01
    w_gate_balance: float = 0.01  # keeps the SHMoE gates from collapsing onto one kernel size
    w_z: float = 1e-3
    seed: int = 0
    checkpoint_every: int = 25
    amp: bool = False
    time_limit_min: float | None = None  # stop cleanly (validate, export) after this much training time
    network: dict = field(default_factory=dict)  # NetworkConfig overrides

    def to_dict(self) -> dict:
        return asdict(self)


class PairDataset(Dataset):
    """Item ``i`` of epoch ``e``: a synthetic pair drawn from ``(seed, e, i)`` (see :func:`.synthesis.make_pair`).

    The (fixed, moving) training indices: ``pairs`` when given, else the dataset's ``registration_train``
    list when its ``"pairs"`` mode says so, else every ordered pair of distinct subjects.
    """

    def __init__(self, data: TensorData, synthesis: SynthesisConfig, seed: int,
                 pairs: list[tuple[int, int]] | None = None) -> None:
        n = len(data)
        self.data, self.synthesis, self.seed, self.epoch = data, synthesis, seed, 0
        if pairs is None and data.meta.get("pairs") == "registration_train":
            pairs = [tuple(pair) for pair in data.meta["registration_train"]]
        self.pairs = pairs or [(a, b) for a in range(n) for b in range(n) if a != b] or [(0, 0)]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 100_003 + index)
        fixed, moving = self.pairs[index]
        if torch.rand((), generator=generator).item() < self.synthesis.intra_subject:
            moving = fixed
        return make_pair(self.data, fixed, moving, self.synthesis, generator)


def one_hot(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """``(B, D, H, W)`` long -> ``(B, L+1, D, H, W)`` float."""
    return F.one_hot(labels, num_labels + 1).permute(0, 4, 1, 2, 3).float()


def jacobian_determinant_voxels(displacement: torch.Tensor) -> torch.Tensor:
    """``det(I + grad u)`` of a voxel displacement ``(3, D, H, W)`` (central differences; isotropic grid)."""
    rows = [torch.stack(torch.gradient(displacement[c], dim=(0, 1, 2)), dim=-1) for c in range(3)]
    jacobian = torch.stack(rows, dim=-2) + torch.eye(3)
    return torch.linalg.det(jacobian.double()).float()


def losses(output, batch: dict, config: TrainConfig, num_labels: int) -> dict[str, torch.Tensor]:
    u = output.displacement.float()
    warped = warp_image(batch["moving"], u)
    terms = {"similarity": similarity_loss(similarity_features(batch["fixed"], config.similarity),
                                           similarity_features(warped, config.similarity), config.similarity),
             "smoothness": smoothness_loss(u, config.smoothness),
             "dice_loss": soft_dice_loss(one_hot(batch["fixed_labels"], num_labels),
                                         warp_labels(one_hot(batch["moving_labels"], num_labels), u)),
             "balance": output.balance_loss.float(), "gate_balance": output.gate_balance_loss.float(),
             "z": output.z_loss.float()}
    terms["loss"] = (config.w_similarity * terms["similarity"] + config.w_smoothness * terms["smoothness"]
                     + config.w_dice * terms["dice_loss"] + config.w_balance * terms["balance"]
                     + config.w_gate_balance * terms["gate_balance"] + config.w_z * terms["z"])
    return terms


def dice_scores(fixed: torch.Tensor, warped: torch.Tensor, num_labels: int) -> list[float]:
    """Dice per label present in ``fixed`` (hard label maps ``(D, H, W)``)."""
    scores = []
    for label in range(1, num_labels + 1):
        a, b = fixed == label, warped == label
        if a.any():
            scores.append(float(2 * (a & b).sum() / (a.sum() + b.sum())))
    return scores


@torch.no_grad()
def validate(model: SHMoARegNet, pairs: dict, num_labels: int, device: torch.device) -> dict:
    """Mean and sd over pairs of the mean Dice over labels, before and after; SDlogJ; folding; seconds per pair."""
    model.eval()
    dice, before, sdlogj, folding, seconds = [], [], [], [], []
    for i in range(len(pairs["fixed"])):
        fixed, moving = pairs["fixed"][i : i + 1].float().to(device), pairs["moving"][i : i + 1].float().to(device)
        start = time.perf_counter()
        u = model(fixed, moving).displacement.float()
        seconds.append(time.perf_counter() - start)
        moving_oh = one_hot(pairs["moving_labels"][i : i + 1].long().to(device), num_labels)
        warped = warp_labels(moving_oh, u).argmax(dim=1)[0].cpu()
        fixed_labels = pairs["fixed_labels"][i].long()
        dice.append(float(np.mean(dice_scores(fixed_labels, warped, num_labels))))
        before.append(float(np.mean(dice_scores(fixed_labels, pairs["moving_labels"][i].long(), num_labels))))
        det = jacobian_determinant_voxels(u[0].cpu())
        sdlogj.append(float(det.clamp(1e-9, 1e9).log().std()))
        folding.append(float((det <= 0).float().mean()))
    model.train()
    return {"val_dice": float(np.mean(dice)), "val_dice_sd": float(np.std(dice)), "val_dice_before": float(np.mean(before)),
            "val_sdlogj": float(np.mean(sdlogj)), "val_folding": float(np.mean(folding)),
            "val_seconds_per_pair": float(np.mean(seconds)), "val_dice_per_pair": dice}


def _batch(dataset: PairDataset, indices: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    samples = [dataset[i] for i in indices]
    return {k: torch.stack([s[k] for s in samples]).to(device) for k in samples[0]}


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


def train(data: TensorData, validation: dict, run_dir: str | os.PathLike, config: TrainConfig,
          synthesis: SynthesisConfig, device: torch.device, resume: bool = False, preset: str = "",
          metadata: dict | None = None, cancel: Callable[[], bool] | None = None, log=print) -> dict:
    """Train (or resume) into ``run_dir``; returns the best validation metrics. See the module docstring."""
    from ..weights import save_weights

    rank, world = _distributed()
    run_dir = Path(run_dir)
    cancel = cancel or (lambda: False)
    torch.manual_seed(config.seed)
    model = SHMoARegNet(NetworkConfig(**config.network)).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    state = {"step": 0, "epoch": 0, "step_in_epoch": 0, "history": [], "best": -1.0, "train_seconds": 0.0, "sums": {}}
    last = run_dir / "last.pt"
    if resume and last.is_file():
        saved = load_state(last)
        model.load_state_dict(saved["model"])
        optimiser.load_state_dict(saved["optimiser"])
        state = saved["state"]
        log(f"resuming from {last}: epoch {state['epoch']}, step {state['step']}")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    dataset = PairDataset(data, synthesis, config.seed)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
    use_scaler = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler(enabled=use_scaler)
    amp_dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    total_steps = config.epochs * config.steps_per_epoch
    run_info = {"preset": preset, "train": config.to_dict(), "synthesis": synthesis.to_dict(),
                "network": model.config.to_dict(), "world_size": world, "hardware": hardware(),
                **(metadata or {})}

    def checkpoint() -> None:
        if rank == 0:
            save_state({"model": model.state_dict(), "optimiser": optimiser.state_dict(), "state": state}, last)

    progress = None
    if rank == 0:
        try:
            from tqdm import tqdm

            progress = tqdm(total=total_steps, initial=state["step"], desc="train", file=sys.stderr,
                            mininterval=1.0 if sys.stderr.isatty() else 30.0)
        except ImportError:
            pass
    stop = False
    while state["epoch"] < config.epochs and not stop:
        dataset.epoch = state["epoch"]
        sampler.set_epoch(state["epoch"])
        indices = list(sampler)
        started = time.perf_counter()
        while state["step_in_epoch"] < config.steps_per_epoch:
            k = state["step_in_epoch"] * config.batch_size
            batch = _batch(dataset, [indices[(k + j) % len(indices)] for j in range(config.batch_size)], device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=config.amp):
                output = net(batch["fixed"], batch["moving"])
            terms = losses(output, batch, config, data.num_labels)
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(terms["loss"]).backward()
            scaler.step(optimiser)
            scaler.update()
            # one device -> host copy for all terms (each float() on a CUDA tensor is a synchronisation)
            values = dict(zip(terms, torch.stack([value.detach().float() for value in terms.values()]).tolist()))
            for key, value in values.items():
                state["sums"][key] = state["sums"].get(key, 0.0) + value
            state["step"] += 1
            state["step_in_epoch"] += 1
            if progress is not None:
                progress.update(1)
                progress.set_postfix(loss=f"{values['loss']:.3f}", dice=f"{1 - values['dice_loss']:.3f}")
            if cancel():
                state["train_seconds"] += time.perf_counter() - started
                checkpoint()
                raise RegistrationCancelled(f"training interrupted at step {state['step']}; the checkpoint {last} "
                                            f"was saved: continue with --resume")
            if config.time_limit_min and state["train_seconds"] + time.perf_counter() - started > 60 * config.time_limit_min:
                stop = True
                break
            # the last step of an epoch is checkpointed after validation, below
            if state["step"] % config.checkpoint_every == 0 and state["step_in_epoch"] < config.steps_per_epoch:
                elapsed = time.perf_counter() - started
                state["train_seconds"] += elapsed
                started += elapsed
                checkpoint()
        state["train_seconds"] += time.perf_counter() - started
        steps = max(state["step_in_epoch"], 1)
        row = {"epoch": state["epoch"] + 1, "step": state["step"], "train_seconds": round(state["train_seconds"], 1)}
        row.update({f"train_{k}" if k != "loss" else "train_loss": v / steps for k, v in state["sums"].items()})
        state["epoch"] += 1
        state["step_in_epoch"], state["sums"] = 0, {}
        if rank == 0:
            metrics = validate(model, validation, data.num_labels, device)
            row.update({k: v for k, v in metrics.items() if k != "val_dice_per_pair"})
            state["history"].append(row)
            if metrics["val_dice"] > state["best"]:
                state["best"] = metrics["val_dice"]
                info = {**run_info, "step": state["step"], "epoch": state["epoch"], "train_seconds": state["train_seconds"],
                        "validation": metrics}
                save_weights(model, run_dir / "best.pt", preset, info, half=False)
            write_metrics(state["history"], run_dir / "metrics.csv")
            plot_curve(state["history"], run_dir / "learning_curve.png", f"{preset or 'run'}: {run_dir.name}")
            log(f"epoch {row['epoch']}: step {row['step']}, loss {row['train_loss']:.4f}, val Dice "
                f"{metrics['val_dice']:.3f} (before {metrics['val_dice_before']:.3f}), SDlogJ {metrics['val_sdlogj']:.3f}")
        checkpoint()
        if world > 1:
            dist.barrier()
    if progress is not None:
        progress.close()
    if rank == 0:
        (run_dir / "run.json").write_text(json.dumps({**run_info, "history": state["history"]}, indent=1))
    return {"best_val_dice": state["best"], "steps": state["step"], "train_seconds": state["train_seconds"],
            "history": state["history"]}
