"""Refuse runs that would not fit in memory, before they start, with advice.

The estimate is per working-grid voxel, measured on CPU with torch 2.13 (peak RSS
of instance optimisation with MIND features and Adam state, and of a network
forward pass), plus the fixed-grid outputs (displacement as float64 while
converting, warped image, Jacobian).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from .errors import InputError

__all__ = ["estimate_bytes", "available_bytes", "check_memory"]

BYTES_PER_WORKING_VOXEL = 600
BYTES_PER_WORKING_VOXEL_NETWORK = 1400
BYTES_PER_FIXED_VOXEL = 64


def estimate_bytes(working_size: Sequence[int], fixed_size: Sequence[int], network: bool) -> int:
    working = int(np.prod(working_size))
    per_voxel = BYTES_PER_WORKING_VOXEL + (BYTES_PER_WORKING_VOXEL_NETWORK if network else 0)
    return working * per_voxel + int(np.prod(fixed_size)) * BYTES_PER_FIXED_VOXEL


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 62


def check_memory(working_size: Sequence[int], fixed_size: Sequence[int], device: torch.device, network: bool,
                 limit: int | None = None) -> int:
    """Return the estimate in bytes, or raise :class:`InputError` naming a coarser spacing that would fit."""
    need = estimate_bytes(working_size, fixed_size, network)
    have = available_bytes(device) if limit is None else limit
    if need > have:
        ratio = (need / max(have, 1)) ** (1 / 3)
        raise InputError(
            f"this run needs about {need / 2**30:.1f} GiB on {device.type} but only {have / 2**30:.1f} GiB is free "
            f"(working grid {tuple(working_size)}); use a coarser working grid (--spacing, e.g. {ratio * 1.1:.1f}x the "
            f"current spacing), crop the images, or use --device {'cpu' if device.type == 'cuda' else 'cuda'}")
    return need
