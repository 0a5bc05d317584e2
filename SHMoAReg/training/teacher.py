"""Teacher fields: the answer of every inter-subject training pair, from its label maps.

A network trained with label Dice alone gets a gradient only where warped and fixed
organs already touch; on inter-subject abdomens, which overlap at Dice ~0.2 after a
translation, that signal is weak (see docs/training.md). The label maps of the
training subjects, however, determine each pair's correspondence almost exactly, so
we compute it once, by optimisation, and let the network regress it (a teacher, as
in knowledge distillation).

For training subjects A (fixed) and B (moving), both on the training grid of
``data.npz`` (voxel coordinates (z, y, x) of their own cropped grids), the teacher is
the map ``phi(y) = R (y - c_A) + c_B + t + d(y)`` from A's voxels to B's: ``c`` the
centres of the labels (the translation the synthesis pre-aligns with), ``R, t`` an
affine and ``d`` a smooth field (optimised on a grid of half resolution, upsampled
trilinearly). It minimises ``1 - soft Dice(A's labels, B's labels read at phi)`` with
both blurred by a shrinking sigma (coarse to fine, for capture range; the blurred stages
on every second voxel of A) plus
``smoothness`` x the diffusion energy of ``d``. Stored as the displacement
``phi(y) - y`` ``(3, D_A, H_A, W_A)`` (float16) per ordered pair in ``teacher.npz``, with
the Dice before and after and the share of folded voxels.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..labels import one_hot
from ..optimise.losses import gaussian_blur, smoothness_loss, soft_dice_loss
from ..evaluate.metrics import jacobian_scores
from .synthesis import TensorData, _centre, _sample, voxel_mesh

__all__ = ["TeacherConfig", "teacher_displacement", "compute_teachers", "load_teachers"]


@dataclass
class TeacherConfig:
    """Coarse-to-fine schedule: ``iterations[i]`` Adam steps with labels blurred by ``sigmas[i]`` voxels."""

    sigmas: tuple[float, ...] = (2.0, 1.0, 0.0)
    iterations: tuple[int, ...] = (60, 40, 20)
    strides: tuple[int, ...] = (2, 2, 1)  # the Dice of stage i is taken on every strides[i]-th voxel of A
    learning_rate: float = 0.2  # voxels per step for the field, scaled down for the affine
    smoothness: float = 1.0  # weight of the diffusion energy of d (voxel units)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def teacher_displacement(fixed_labels: torch.Tensor, moving_labels: torch.Tensor, num_labels: int,
                         config: TeacherConfig | None = None) -> tuple[torch.Tensor, dict]:
    """The teacher for one pair: ``fixed_labels (D, H, W)``, ``moving_labels (D', H', W')`` long in 0..L ->
    displacement ``phi(y) - y`` ``(3, D, H, W)`` in voxels (channel = axis z, y, x; moving voxels minus fixed voxels)
    and ``{"dice_before", "dice", "folding"}`` (Dice without blur; before = the centre alignment alone)."""
    config = config or TeacherConfig()
    fixed = one_hot(fixed_labels[None], num_labels)
    moving = one_hot(moving_labels[None], num_labels)
    shape = tuple(fixed_labels.shape)
    mesh = voxel_mesh(shape)
    centred = mesh - _centre(fixed_labels)
    target = _centre(moving_labels)
    linear = torch.zeros(3, 4, requires_grad=True)
    coarse = torch.zeros(1, 3, *[(n + 1) // 2 for n in shape], requires_grad=True)
    optimiser = torch.optim.Adam([{"params": [coarse], "lr": config.learning_rate},
                                  {"params": [linear], "lr": config.learning_rate * 0.05}])

    def field() -> torch.Tensor:
        return F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)

    def coordinates(d: torch.Tensor) -> torch.Tensor:
        return centred @ (torch.eye(3) + linear[:, :3]).T + linear[:, 3] + target + d[0].permute(1, 2, 3, 0)

    def dice(fixed_blurred, moving_blurred, points: torch.Tensor, stride: int = 1) -> torch.Tensor:
        every = (slice(None, None, stride),) * 3
        warped = _sample(moving_blurred[0], points[every], "bilinear")[None]
        return soft_dice_loss(fixed_blurred[(..., *every)], warped)

    with torch.no_grad():
        before = 1 - float(dice(fixed, moving, coordinates(field())))
    for sigma, iterations, stride in zip(config.sigmas, config.iterations, config.strides):
        fixed_blurred, moving_blurred = gaussian_blur(fixed, sigma), gaussian_blur(moving, sigma)
        for _ in range(iterations):
            d = field()
            loss = dice(fixed_blurred, moving_blurred, coordinates(d), stride) + \
                config.smoothness * smoothness_loss(d, "diffusion")
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        points = coordinates(field())
        after = 1 - float(dice(fixed, moving, points))
        displacement = (points - mesh).permute(3, 0, 1, 2).contiguous()
    return displacement, {"dice_before": before, "dice": after, "folding": jacobian_scores(displacement.numpy())[1]}


def compute_teachers(data: TensorData, path, partners: int | None = None, config: TeacherConfig | None = None,
                     log=print) -> dict:
    """Teachers into ``path`` (``.npz``) for the pairs (a, a + k mod n), k = 1..``partners`` (default: all n - 1,
    every ordered pair of distinct subjects) of ``data``'s n labelled subjects; returns the summary stored with them."""
    config = config or TeacherConfig()
    arrays, pairs = {}, []
    started = time.perf_counter()
    n = data.labelled
    partners = min(partners or n - 1, n - 1)
    for a in range(n):
        for b in [(a + k) % n for k in range(1, partners + 1)]:
            displacement, scores = teacher_displacement(data.labels[a], data.labels[b], data.num_labels, config)
            arrays[f"{a}_{b}"] = displacement.numpy().astype(np.float16)
            pairs.append({"fixed": a, "moving": b, **{k: round(v, 4) for k, v in scores.items()}})
        done = [p for p in pairs if p["fixed"] == a]
        log(f"teacher: fixed subject {a + 1}/{n}: Dice {np.mean([p['dice_before'] for p in done]):.3f} -> "
            f"{np.mean([p['dice'] for p in done]):.3f} ({time.perf_counter() - started:.0f} s)")
    summary = {"config": config.to_dict(), "pairs": pairs, "seconds": round(time.perf_counter() - started, 1),
               "dice_before": float(np.mean([p["dice_before"] for p in pairs])),
               "dice": float(np.mean([p["dice"] for p in pairs])),
               "max_folding": float(max(p["folding"] for p in pairs))}
    np.savez_compressed(path, meta=np.frombuffer(json.dumps(summary).encode(), dtype=np.uint8), **arrays)
    return summary


def load_teachers(path) -> tuple[dict[tuple[int, int], torch.Tensor], dict]:
    """``{(fixed, moving): displacement (3, D, H, W) float32}`` and the summary written by :func:`compute_teachers`."""
    with np.load(path) as stored:
        summary = json.loads(bytes(stored["meta"]).decode())
        fields = {tuple(int(i) for i in key.split("_")): torch.from_numpy(stored[key].astype(np.float32))
                  for key in stored.files if key != "meta"}
    return fields, summary
