"""Training the network for the passes it makes at inference (:mod:`SHMoAReg.network.recursive`).

At inference the network is applied up to three times, each pass to the moving image warped by the field so far.
A network trained for one pass only ever saw unregistered pairs; its second pass sees a pair that is already
roughly aligned, a distribution it was never trained on. A cascade step trains that second pass:

    u_1 = net(fixed, moving)                     (no gradient: the network as it is now)
    r   = net(fixed, moving o (id + u_1))        (trained)
    u   = r + u_1 o (id + r)                     (the composed pull-back, the same as at inference)

and the usual losses (similarity, smoothness, label Dice, teacher fields) are computed on ``u``. Without gradient
through the first pass the step costs one extra forward pass, not a second backward (Zhao et al., ICCV 2019, train
the whole cascade end to end at twice the cost). A share of the steps (``cascade_share``) is trained this way and the
others as before, so the first pass keeps what it learned.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn as nn

from ..network.shmoareg_net import NetworkOutput
from ..optimise.warp import compose_displacements, warp_image

__all__ = ["cascade_output", "is_cascade_step"]


def is_cascade_step(step: int, share: float) -> bool:
    """Whether optimiser step ``step`` (0-based) is a cascade step: ``share`` of the steps, spread evenly
    (share 0.5: every second step; 0: none; 1: all)."""
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"cascade share must be in [0, 1], got {share}")
    return int((step + 1) * share) > int(step * share)


def cascade_output(net: nn.Module, fixed: torch.Tensor, moving: torch.Tensor) -> NetworkOutput:
    """The second pass's output with the composed displacement (see the module docstring); the routing and gate
    statistics (balance losses) are the second pass's. A diffeomorphic network (velocity output) makes one pass.

    fixed, moving: ``(B, 1, D, H, W)``; returns displacement ``(B, 3, D, H, W)`` voxels, fixed -> moving pull-back.
    """
    with torch.no_grad():
        first = net(fixed, moving)
    if first.velocity is not None:
        return net(fixed, moving)
    u1 = first.displacement.float().detach()
    second = net(fixed, warp_image(moving, u1))
    return dataclasses.replace(second, displacement=compose_displacements(u1, second.displacement.float()))
