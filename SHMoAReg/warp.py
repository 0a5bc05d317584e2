"""Warping and displacement-field utilities (thin wrappers over MONAI).

All displacements here are ``(B, 3, D, H, W)`` tensors in voxels of the tensor's
own grid, channel ``c`` along tensor spatial axis ``c`` (see :mod:`SHMoAReg.conventions`).
``warp(image, u)(p) = image(p + u(p))`` - the moving image pulled back onto the fixed grid.
"""
from __future__ import annotations

from collections.abc import Sequence

import warnings

import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF, Warp

__all__ = ["warp_image", "warp_labels", "integrate_velocity", "resize_displacement", "DEFAULT_INTEGRATION_STEPS"]

_NATIVE_NOTICE = r"monai\.networks\.blocks\.Warp: Using PyTorch native grid_sample"  # MONAI's note, not ours


def _quietly(build, **kwargs):
    """Build a MONAI warping block without its UserWarning that it uses PyTorch's grid_sample (what we want):
    nothing but our own messages reaches a user's screen, from the CLI, the API, Slicer or a Dask worker."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_NATIVE_NOTICE)
        return build(**kwargs)


_LINEAR = _quietly(Warp, mode="bilinear", padding_mode="border")
_NEAREST = _quietly(Warp, mode="nearest", padding_mode="zeros")


def warp_image(image: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Trilinear pull-back of ``image (B, C, D, H, W)`` by ``displacement (B, 3, D, H, W)`` voxels."""
    return _LINEAR(image, displacement)


def warp_labels(one_hot: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """Warp one-hot or probability label maps (linear, so the result stays differentiable)."""
    return _LINEAR(one_hot, displacement)


DEFAULT_INTEGRATION_STEPS = 7
"""Scaling-and-squaring steps of every velocity integration (instance optimisation, network, inverse)."""


def integrate_velocity(velocity: torch.Tensor, steps: int = DEFAULT_INTEGRATION_STEPS) -> torch.Tensor:
    """Scaling and squaring of a stationary velocity field into a diffeomorphic displacement."""
    return _quietly(DVF2DDF, num_steps=steps, mode="bilinear", padding_mode="border")(velocity)


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
