"""Validation scores on the training grid: Dice, SDlogJ and folding (:func:`SHMoAReg.evaluate.metrics.jacobian_scores`).

The training grid is isotropic and its displacements are in voxels, so the Jacobian
determinant is taken with the voxel as unit length (it has no unit, so the values are
those of the grid in mm). Used by the per-epoch validation (:func:`validate`) and by
the ablation (:mod:`.ablation`).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from ..labels import one_hot
from ..evaluate.metrics import dice_per_label, jacobian_scores
from ..network import SHMoARegNet
from ..network.recursive import recursive_prediction
from ..optimise.warp import warp_labels

__all__ = ["mean_dice", "validate"]


def mean_dice(fixed: np.ndarray, warped: np.ndarray, num_labels: int) -> float:
    """Mean Dice over the labels 1..``num_labels`` present in ``fixed`` (label maps ``(D, H, W)``).

    A label missing from ``warped`` counts 0, so losing an organ never raises the score (unlike
    :func:`SHMoAReg.evaluate.metrics.dice_per_label`'s default of labels present in both). NaN when ``fixed`` is empty.
    """
    present = [int(label) for label in np.unique(fixed) if 1 <= label <= num_labels]
    scores = dice_per_label(fixed, warped, labels=present).values()
    # rounded to float32 as the training loop's earlier torch Dice was, so that a run resumed across this
    # change compares its new validation Dice with the stored best exactly as before
    return float(np.mean([float(np.float32(score)) for score in scores]))


def _warped_dice(pairs: dict, i: int, u: torch.Tensor, num_labels: int) -> float:
    """Mean Dice of validation pair ``i`` after warping its moving labels by ``u (1, 3, D, H, W)``."""
    moving_oh = one_hot(pairs["moving_labels"][i : i + 1].long().to(u.device), num_labels)
    warped = warp_labels(moving_oh, u).argmax(dim=1)[0].cpu().numpy()
    return mean_dice(pairs["fixed_labels"][i].long().numpy(), warped, num_labels)


@torch.no_grad()
def validate(model: SHMoARegNet, pairs: dict, num_labels: int, device: torch.device, passes: int = 1,
             similarity: str = "lncc") -> dict:
    """Mean and sd over pairs of the mean Dice over labels, before and after; SDlogJ; folding; seconds per pair.

    With ``passes > 1`` also ``val_dice_passes``: the Dice of the network applied up to ``passes`` times as
    ``register`` applies it (:func:`SHMoAReg.network.recursive.recursive_prediction`, ``similarity`` deciding which
    passes are kept); the other scores stay those of one pass.

    ``pairs``: ``fixed``, ``moving`` ``(N, 1, D, H, W)``, ``fixed_labels``, ``moving_labels`` ``(N, D, H, W)``, on the
    CPU (as :func:`.synthesis.validation_pairs` makes them).
    """
    model.eval()
    dice, before, sdlogjs, foldings, seconds, recursive = [], [], [], [], [], []
    for i in range(len(pairs["fixed"])):
        fixed, moving = pairs["fixed"][i : i + 1].float().to(device), pairs["moving"][i : i + 1].float().to(device)
        start = time.perf_counter()
        u = model(fixed, moving).displacement.float()
        seconds.append(time.perf_counter() - start)
        dice.append(_warped_dice(pairs, i, u, num_labels))
        fixed_labels = pairs["fixed_labels"][i].long().numpy()
        if passes > 1:
            composed = recursive_prediction(model, fixed, moving, passes, similarity).output.displacement.float()
            recursive.append(_warped_dice(pairs, i, composed, num_labels))
        before.append(mean_dice(fixed_labels, pairs["moving_labels"][i].long().numpy(), num_labels))
        spread, folding = jacobian_scores(u[0].cpu().numpy())
        sdlogjs.append(spread)
        foldings.append(folding)
    model.train()
    scores = {"val_dice": float(np.mean(dice)), "val_dice_sd": float(np.std(dice)), "val_dice_before": float(np.mean(before)),
              "val_sdlogj": float(np.mean(sdlogjs)), "val_folding": float(np.mean(foldings)),
              "val_seconds_per_pair": float(np.mean(seconds)), "val_dice_per_pair": dice}
    if recursive:
        scores["val_dice_passes"] = float(np.mean(recursive))
    return scores
