"""Training-state checkpoints: atomic writes, safe loading (``weights_only=True``), metrics CSV and curve."""
from __future__ import annotations

import csv
import os
import tempfile
from pathlib import Path

import torch

__all__ = ["save_state", "load_state", "write_metrics", "plot_curve"]


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    from ..io.image_io import with_default_permissions

    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(handle)
    with_default_permissions(name)
    try:
        write(name)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


def save_state(state: dict, path: str | os.PathLike) -> None:
    """Write a training state (model, optimiser, counters, history) so that a crash never leaves half a file."""
    _atomic(Path(path), lambda name: torch.save(state, name))


def load_state(path: str | os.PathLike) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def write_metrics(rows: list[dict], path: str | os.PathLike) -> None:
    """The per-epoch history as CSV (rewritten whole, atomically, so it always matches the checkpoint)."""
    if not rows:
        return
    fields = list(rows[0])

    def write(name: str) -> None:
        with open(name, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    _atomic(Path(path), write)


def plot_curve(rows: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """Training loss and validation Dice against optimiser steps (PNG); skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    steps = [r["step"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4))
    left.plot(steps, [r["train_loss"] for r in rows], label="total")
    for key in ("train_similarity", "train_dice_loss"):
        left.plot(steps, [r[key] for r in rows], label=key.removeprefix("train_"), alpha=0.7)
    left.set_xlabel("step")
    left.set_ylabel("training loss")
    left.legend(fontsize=7)
    right.plot(steps, [r["val_dice"] for r in rows], "o-", label="network")
    if rows and "val_dice_passes" in rows[-1]:  # --validation-passes > 1
        right.plot(steps, [r.get("val_dice_passes") for r in rows], "s-", label="network, recursive passes")
    if rows and "val_dice_before" in rows[0]:
        right.plot(steps, [r["val_dice_before"] for r in rows], "--", color="grey", label="no registration")
    right.set_xlabel("step")
    right.set_ylabel("validation Dice")
    right.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    _atomic(Path(path), lambda name: figure.savefig(name, dpi=100, format="png"))
    plt.close(figure)
