"""Warping and displacement-field utilities (PyTorch's ``grid_sample``; what MONAI's ``Warp`` and ``DVF2DDF`` compute).

All displacements here are ``(B, 3, D, H, W)`` tensors in voxels of the tensor's
own grid, channel ``c`` along tensor spatial axis ``c`` (see :mod:`SHMoAReg.conventions`).
``warp(image, u)(p) = image(p + u(p))`` - the moving image pulled back onto the fixed grid.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["warp_image", "warp_labels", "compose_displacements", "integrate_velocity", "resize_displacement",
           "DEFAULT_INTEGRATION_STEPS"]



@functools.lru_cache(maxsize=1)
def _identity(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity sampling grid of ``grid_sample`` (``align_corners=True``: -1 and 1 are the first and last voxel
    centres) for one spatial shape, ``(1, D, H, W, 3)`` with x (W) first, and the factors that turn voxel
    displacements along (D, H, W) into that grid's units, reversed to (x, y, z). Kept for the last shape asked
    for: instance optimisation asks for the same one at every iteration."""
    axes = [torch.arange(n, device=device, dtype=dtype) * (2.0 / max(n - 1, 1)) - 1.0 for n in shape]
    identity = torch.stack(torch.meshgrid(*axes, indexing="ij")[::-1], dim=-1)[None]
    scale = torch.tensor([2.0 / max(n - 1, 1) for n in reversed(shape)], device=device, dtype=dtype)
    return identity, scale


def _pull(image: torch.Tensor, displacement: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
    """``image(p + u(p))`` for ``image (B, C, D, H, W)`` and ``u (B, 3, D, H, W)`` voxels (channel c along axis c):
    MONAI's ``Warp`` (tested equal), without its per-call grid construction and coordinate copies, which
    took as long as the sampling itself."""
    if displacement.shape[1] != 3 or displacement.shape[2:] != image.shape[2:] or displacement.shape[0] != image.shape[0]:
        raise ValueError(f"displacement must be {(image.shape[0], 3, *image.shape[2:])}, got {tuple(displacement.shape)}")
    identity, scale = _identity(tuple(image.shape[2:]), displacement.device, displacement.dtype)
    grid = identity + displacement.flip(1).movedim(1, -1) * scale
    return F.grid_sample(image, grid, mode=mode, padding_mode=padding, align_corners=True)


def warp_image(image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Trilinear pull-back of ``image (B, C, D, H, W)`` by ``displacement (B, 3, D, H, W)`` voxels (border values
    outside)."""
    return _pull(image, displacement, "bilinear", "border")


def warp_labels(one_hot: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Warp one-hot or probability label maps (linear, so the result stays differentiable)."""
    return _pull(one_hot, displacement, "bilinear", "border")


def compose_displacements(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """The pull-back ``x -> x + then(x) -> (x + then(x)) + first(x + then(x))`` as one displacement
    ``then + first o (id + then)``: warping by the result equals warping by ``first``, then by ``then``.
    first, then: ``(B, 3, D, H, W)`` voxels."""
    return then + warp_image(first, then)


DEFAULT_INTEGRATION_STEPS = 7
"""Scaling-and-squaring steps of every velocity integration (instance optimisation, network, inverse)."""


def integrate_velocity(velocity: torch.Tensor, steps: int = DEFAULT_INTEGRATION_STEPS) -> torch.Tensor:
    """Scaling and squaring of a stationary velocity ``(B, 3, D, H, W)`` into a diffeomorphic displacement:
    ``u = v / 2^steps``, then ``steps`` times ``u <- u + u o (id + u)`` (MONAI's ``DVF2DDF``, tested equal)."""
    displacement = velocity / 2.0**steps
    for _ in range(steps):
        displacement = compose_displacements(displacement, displacement)
    return displacement


def resize_displacement(displacement: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Resample a voxel displacement to another grid covering the same extent, rescaling its units.

    Uses cell-centred (``align_corners=False``) trilinear interpolation, for which a
    factor-2 resize maps voxel centres exactly; each channel is multiplied by its
    axis's size ratio so the displacement stays in voxels of the new grid.
    """
    size = tuple(int(s) for s in size)
    old = displacement.shape[2:]
    resized = F.interpolate(displacement, size=size, mode="trilinear", align_corners=False)
    scale = torch.tensor([n / o for n, o in zip(size, old)], dtype=displacement.dtype, device=displacement.device)
    return resized * scale.view(1, 3, 1, 1, 1)
