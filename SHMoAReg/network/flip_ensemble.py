"""Test-time mirroring: a network's displacement averaged over mirrored copies of the pair.

For a mirroring ``M`` of the tensor axes in ``axes``, the network registers ``(M fixed, M moving)``; its displacement
``u'`` is mapped back by mirroring the field and negating its components along ``axes``:
``u(x) = S u'(M x)`` with ``S = diag(-1 along axes, 1 elsewhere)``. A perfect network gives the same field for every
mirroring; a real one errs differently on each, and the average is closer to the truth (the mirroring ensemble of
segmentation networks, e.g. nnU-Net's). Gates and routing are those of the unmirrored prediction.

Measured on the 4 held-out abdominal pairs (docs/training.md), the abdomen network shipped early on 6 Dec alone, up to
3 passes: Dice 0.440 unmirrored, 0.476 with 4 mirrorings (and no folding on any pair), 0.483 with 8; the one trained
since with a folding penalty 0.444 unmirrored (no folding either way) and 0.475 with 4; the brain network
alone gains 0.002 on the two T1 pairs; with instance optimisation after the network they do not help. ``register``
uses 4 where the network's field is the result (``Preset.network_flips_alone``), else 1 (``Preset.network_flips``).
"""
from __future__ import annotations

import dataclasses
import itertools

import torch
import torch.nn as nn

from ..optimise.warp import DEFAULT_INTEGRATION_STEPS, integrate_velocity
from .shmoareg_net import NetworkOutput

__all__ = ["FLIP_COUNTS", "flip_sets", "FlipEnsemble"]

FLIP_COUNTS = (1, 2, 4, 8)


def flip_sets(count: int) -> list[tuple[int, ...]]:
    """The mirrorings (tensor spatial axes 0, 1, 2 = D, H, W) of an ensemble of ``count``: 1 the identity; 2 adds
    the last axis (left-right in an axial volume); 4 each axis alone; 8 every combination."""
    if count not in FLIP_COUNTS:
        raise ValueError(f"the number of mirrorings must be one of {', '.join(map(str, FLIP_COUNTS))}, got {count}")
    if count == 1:
        return [()]
    if count == 2:
        return [(), (2,)]
    if count == 4:
        return [(), (0,), (1,), (2,)]
    return [axes for size in range(4) for axes in itertools.combinations(range(3), size)]


class FlipEnsemble(nn.Module):
    """``model``'s prediction averaged over the mirrorings of :func:`flip_sets` (``count``)."""

    def __init__(self, model: nn.Module, count: int) -> None:
        super().__init__()
        self.model, self.flips = model, flip_sets(count)

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> NetworkOutput:
        """fixed, moving: ``(B, 1, D, H, W)``; returns the unmirrored output with the averaged ``(B, 3, D, H, W)``
        displacement (and velocity, for a diffeomorphic network: a mirrored velocity field maps back the same way)."""
        first = self.model(fixed, moving)
        if len(self.flips) == 1:
            return first
        displacement, velocity = first.displacement.clone(), None if first.velocity is None else first.velocity.clone()
        for axes in self.flips[1:]:
            dims = [2 + a for a in axes]
            output = self.model(fixed.flip(dims), moving.flip(dims))
            sign = torch.ones((1, 3, 1, 1, 1), dtype=displacement.dtype, device=displacement.device)
            sign[0, list(axes)] = -1.0
            displacement += output.displacement.flip(dims) * sign
            if velocity is not None:
                velocity += output.velocity.flip(dims) * sign
        count = float(len(self.flips))
        if velocity is None:
            return dataclasses.replace(first, displacement=displacement / count)
        velocity = velocity / count  # the displacement of a diffeomorphic network is exp(velocity), not an average
        steps = getattr(getattr(self.model, "config", None), "integration_steps", DEFAULT_INTEGRATION_STEPS)
        return dataclasses.replace(first, displacement=integrate_velocity(velocity, steps), velocity=velocity)
