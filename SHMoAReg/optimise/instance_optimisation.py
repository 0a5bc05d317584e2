"""Instance optimisation: fit a displacement to one image pair with Adam.

The displacement is represented on a control grid ``control_factor`` times
coarser than the grid it is evaluated on, smoothed by two 3x3x3 box filters and
resized (trilinear) to the evaluation grid - the ConvexAdam recipe, which keeps
the field smooth and the optimisation fast. It runs coarse to fine: for each
``scale`` in ``scales`` the images (or their MIND descriptors) are
average-pooled by ``scale`` and the field is optimised there, then carried to the
next scale. Most iterations go to the coarser scales, where they are cheap (``iteration_share``), but the
finest gets at least ``min(finest_iterations, iterations * finest_share_cap)`` (a quarter; all of them
after a network). A scale other than the finest ends early
when its loss has improved by less than ``plateau`` (a fraction of the loss) over the last
``plateau_window`` iterations. Adam's step follows a cosine decay over each scale, and the loss is
multiplied by the number of control points so that Adam's ``eps`` (1e-3) ignores
numerically-zero gradients instead of turning them into full steps (which made
identical images drift by a fraction of a voxel). Loss = similarity + ``smoothness_weight`` * diffusion (in voxels of
the evaluation grid) + ``label_weight`` * soft Dice when labels are given.
It starts from zero (no weights needed) or from a network's prediction.

Exclusion masks (a lesion, an ablation zone, metal) remove voxels from the
similarity term: a voxel is left out when the fixed mask, or the moving mask pulled
back by the current field, lies within the similarity's footprint
(:data:`SHMoAReg.optimise.losses.SIMILARITY_FOOTPRINT`; LNCC's local statistics skip excluded
voxels, MIND needs the mask dilated by 3 voxels) of it, at every scale. The image
content under a mask then has no influence on the result, and there the field
receives no similarity gradient: it follows the regulariser (diffusion term and the
smooth control-grid parametrisation) only.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import RegistrationCancelled
from .losses import (SIMILARITY_FOOTPRINT, Similarity, exclusion_weight, lncc_fixed_windows, similarity_features,
                     similarity_loss, smoothness_loss, soft_dice_loss)
from .adam import Adam
from .warp import integrate_velocity, resize_displacement, warp_image

__all__ = ["InstanceOptimisationConfig", "optimise_displacement", "optimise_field", "scale_iterations"]

ProgressCallback = Callable[[float, str], None]


@dataclass
class InstanceOptimisationConfig:
    iterations: int = 100
    learning_rate: float = 0.5
    similarity: Similarity = Similarity.MIND
    smoothness_weight: float = 2.0
    label_weight: float = 0.0
    scales: tuple[int, ...] = (2, 1)
    # most iterations where they are cheap: on a whole abdomen (4 mm grid) 150 + 15 iterations at 8 / 4 mm gave the
    # Dice of 112 + 38 within 0.006 at half the time; the finest scale is 8x the voxels of the one before
    iteration_share: tuple[float, ...] = (0.9, 0.1)
    # ... but small images need their finest scale: 6 iterations there instead of 15 doubled the field error of a
    # 36x32x28 MR/CT phantom (2.9 vs 1.8 mm)
    finest_iterations: int = 15
    # ... capped at this share of the iterations (a short run from zero needs its coarse scales). 1.0 after a
    # network: its field already holds the coarse alignment, and the fine iterations carry the accuracy (7 Dec: 10
    # coarse + 15 fine after the network matched or beat instance optimisation alone on all five suites, where 30 +
    # 10 stayed 0.006 Dice and 0.11 mm below it on the real CT; docs/training.md)
    finest_share_cap: float = 0.25
    control_factor: int = 2
    adam_eps: float = 1e-3
    diffeomorphic: bool = False
    # end a scale when its loss improved by less than this fraction over plateau_window iterations: on a whole
    # abdomen the 8 mm scale stopped after 75 of 150 iterations with the same Dice (0.689, 0.559 on two pairs)
    plateau: float = 1e-3
    plateau_window: int = 10


def _plateaued(losses: Sequence[float], config: InstanceOptimisationConfig) -> bool:
    """Has the mean loss of the last ``plateau_window`` iterations improved on the mean of the window before by less
    than ``config.plateau`` of its size? Means of windows, not single values: Adam at its full step makes the
    loss jump up and down over the first iterations."""
    window = config.plateau_window
    if config.plateau <= 0 or len(losses) < 2 * window:
        return False
    before = sum(losses[-2 * window:-window]) / window
    last = sum(losses[-window:]) / window
    return before - last < config.plateau * abs(before)


def _cosine(step: int, count: int) -> float:
    """The step-size factor at ``step`` of ``count``: cosine decay from 1 to 0.05 (Adam at a fixed rate jitters
    around the optimum by about one step)."""
    return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / max(count, 1)))


def _pool(x: torch.Tensor, scale: int) -> torch.Tensor:
    return x if scale == 1 else F.avg_pool3d(x, scale, stride=scale, ceil_mode=True)


def _smooth(field: torch.Tensor) -> torch.Tensor:
    for _ in range(2):
        field = F.avg_pool3d(field, 3, stride=1, padding=1, count_include_pad=False)
    return field


def _to_displacement(control: torch.Tensor, size: Sequence[int], diffeomorphic: bool) -> torch.Tensor:
    field = resize_displacement(_smooth(control), size)
    return integrate_velocity(field) if diffeomorphic else field


def _excluded_at_scale(mask: torch.Tensor | None, scale: int, radius: int, stencil: int = 0) -> torch.Tensor | None:
    """1 where a mask voxel lies within ``radius`` (full-resolution voxels), max-pooled to ``scale``,
    then dilated by ``stencil`` voxels of that scale."""
    if mask is None:
        return None
    dilated = 1.0 - exclusion_weight(mask, radius)
    pooled = dilated if scale == 1 else F.max_pool3d(dilated, scale, stride=scale, ceil_mode=True)
    return 1.0 - exclusion_weight(pooled, stencil)


def _similarity_weight(fixed_excluded: torch.Tensor | None, moving_excluded: torch.Tensor,
                       displacement: torch.Tensor) -> torch.Tensor:
    """Weight 0 where the fixed mask or the pulled-back moving mask excludes a voxel (no gradient). Only the
    moving mask moves with the field; without one the weight is fixed and computed once per scale."""
    with torch.no_grad():
        excluded = fixed_excluded
        if excluded is None:
            excluded = displacement.new_zeros((1, 1, *displacement.shape[2:]))
        # > 0: excluded as soon as an excluded moving voxel is in the interpolation stencil
        pulled = (warp_image(moving_excluded, displacement) > 0).to(excluded.dtype)
        return exclusion_weight(torch.maximum(excluded, pulled), 0)


def optimise_displacement(fixed: torch.Tensor, moving: torch.Tensor, config: InstanceOptimisationConfig,
                          initial: torch.Tensor | None = None, fixed_labels: torch.Tensor | None = None,
                          moving_labels: torch.Tensor | None = None, progress: ProgressCallback | None = None,
                          cancelled: Callable[[], bool] | None = None, fixed_mask: torch.Tensor | None = None,
                          moving_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Return a ``(1, 3, D, H, W)`` voxel displacement such that ``warp(moving, u) ~ fixed``.

    Arguments as :func:`optimise_field`; a diffeomorphic run returns the integrated field.
    """
    field = optimise_field(fixed, moving, config, initial, fixed_labels, moving_labels, progress, cancelled,
                           fixed_mask, moving_mask)
    with torch.no_grad():
        return integrate_velocity(field) if config.diffeomorphic else field


def optimise_field(fixed: torch.Tensor, moving: torch.Tensor, config: InstanceOptimisationConfig,
                   initial: torch.Tensor | None = None, fixed_labels: torch.Tensor | None = None,
                   moving_labels: torch.Tensor | None = None, progress: ProgressCallback | None = None,
                   cancelled: Callable[[], bool] | None = None, fixed_mask: torch.Tensor | None = None,
                   moving_mask: torch.Tensor | None = None, levels: list | None = None) -> torch.Tensor:
    """Return the optimised ``(1, 3, D, H, W)`` voxel field: the displacement, or the *velocity* if diffeomorphic.

    fixed, moving: ``(1, 1, D, H, W)`` normalised images on one grid.
    initial: optional starting displacement (voxels, same grid); a *velocity* if diffeomorphic.
    fixed_labels, moving_labels: optional one-hot ``(1, L, D, H, W)`` used when label_weight > 0.
    fixed_mask, moving_mask: optional ``(1, 1, D, H, W)`` exclusion masks on the same grid (> 0 =
    excluded from the similarity); the moving mask lies where the moving image does (before warping).
    levels: if given, one ``{"scale", "grid", "iterations", "planned", "final_loss"}`` per scale is appended.
    """
    size = fixed.shape[2:]
    for name, mask in (("fixed_mask", fixed_mask), ("moving_mask", moving_mask)):
        if mask is not None and tuple(mask.shape) != (1, 1, *size):
            raise ValueError(f"{name} must have shape {(1, 1, *size)}, got {tuple(mask.shape)}")
    radius = SIMILARITY_FOOTPRINT[Similarity(config.similarity)]
    fixed_features = similarity_features(fixed, config.similarity)
    moving_features = similarity_features(moving, config.similarity)
    field = initial if initial is not None else fixed.new_zeros((1, 3, *size))
    counts = scale_iterations(config)
    total = sum(counts)
    done = 0
    for number, (scale, count) in enumerate(zip(config.scales, counts)):
        finest = number == len(config.scales) - 1
        if count == 0:
            continue
        fixed_s, moving_s = _pool(fixed_features, scale), _pool(moving_features, scale)
        grid = fixed_s.shape[2:]
        control_size = [max(2, -(-s // config.control_factor)) for s in grid]
        control = resize_displacement(field.detach(), control_size).requires_grad_(True)
        fixed_excluded = _excluded_at_scale(fixed_mask, scale, radius)
        # +1 voxel: trilinear sampling (and its gradient) reads the whole 2x2x2 cell around a sample point
        moving_excluded = _excluded_at_scale(moving_mask, scale, radius, stencil=1)
        fixed_weight = exclusion_weight(fixed_excluded, 0) if fixed_excluded is not None else None
        # the fixed image's LNCC windows do not change during the scale: computed once (masks weigh every window)
        unmasked_lncc = Similarity(config.similarity) is Similarity.LNCC and fixed_mask is None and moving_mask is None
        windows = lncc_fixed_windows(fixed_s) if unmasked_lncc else None
        labels = None
        if config.label_weight > 0 and fixed_labels is not None and moving_labels is not None:
            labels = (_pool(fixed_labels, scale), _pool(moving_labels, scale))
        optimiser = Adam(control, eps=config.adam_eps)
        rate = config.learning_rate / config.control_factor
        loss_scale = control[0, 0].numel()  # per-control-point gradients of O(1), so that adam_eps has a fixed meaning
        losses: list[float] = []
        for _ in range(count):
            if cancelled is not None and cancelled():
                raise RegistrationCancelled("instance optimisation cancelled")
            optimiser.zero_grad()
            displacement = _to_displacement(control, grid, config.diffeomorphic)
            weight = (fixed_weight if moving_excluded is None
                      else _similarity_weight(fixed_excluded, moving_excluded, displacement))
            loss = similarity_loss(fixed_s, warp_image(moving_s, displacement), config.similarity, weight, windows)
            loss = loss + config.smoothness_weight * smoothness_loss(displacement)
            if labels is not None:
                loss = loss + config.label_weight * soft_dice_loss(labels[0], warp_image(labels[1], displacement))
            (loss * loss_scale).backward()
            optimiser.step(rate * _cosine(len(losses), count))
            done += 1
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(done / max(total, 1), f"scale 1/{scale}, iteration {done}/{total}, loss {losses[-1]:.4f}")
            if not finest and _plateaued(losses, config):
                done += count - len(losses)
                break
        if levels is not None:
            levels.append({"scale": scale, "grid": list(grid), "iterations": len(losses), "planned": count,
                           "final_loss": round(losses[-1], 6) if losses else None})
        with torch.no_grad():
            field = resize_displacement(_smooth(control), size)
    return field.detach()


def scale_iterations(config: InstanceOptimisationConfig) -> list[int]:
    """The iterations planned for each of ``config.scales``, coarsest first: ``iteration_share`` of
    ``config.iterations``, the finest getting at least ``min(finest_iterations, iterations * finest_share_cap)``."""
    total = max(config.iterations, 0)
    return _split(total, config.iteration_share, len(config.scales),
                  min(config.finest_iterations, int(total * config.finest_share_cap)))


def _split(total: int, shares: Sequence[float], parts: int, finest: int = 0) -> list[int]:
    """``total`` iterations over ``parts`` scales in proportion to ``shares``, the last (finest) getting at least
    ``finest``, taken from the coarsest scales first."""
    shares = list(shares)[:parts] + [0.0] * max(0, parts - len(shares))
    weight = sum(shares) or 1.0
    counts = [int(round(total * s / weight)) for s in shares]
    counts[-1] += total - sum(counts)
    for index in range(parts - 1):
        moved = min(counts[index], max(0, finest - counts[-1]))
        counts[index] -= moved
        counts[-1] += moved
    return counts
