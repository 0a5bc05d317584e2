"""The working grid of a run and the memory it needs: rules shared by the engine and the Slicer module.

Standard library only (no torch, numpy or SimpleITK), so the Slicer module's pre-flight check
(``SHMoARegistrationLib/preflight.py``) imports these very objects in Slicer's own process and says
what the engine's memory guard (:mod:`SHMoAReg.pipeline.memory`, :func:`SHMoAReg.io.validation.check_run`) will say.

Grids and units: the *working grid* is the isotropic grid of instance optimisation, in mm, with the
fixed image's origin and direction; sizes are voxel counts in SimpleITK / VTK index order (i, j, k).
The network may run on a grid of its own (the spacing its weights were trained at); the estimate
counts the network's figure per *working*-grid voxel too, which is conservative when that grid is
coarser, as it is for the shipped weights.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

__all__ = ["BYTES_PER_WORKING_VOXEL", "BYTES_PER_WORKING_VOXEL_NETWORK", "BYTES_PER_FIXED_VOXEL",
           "MIN_WORKING_VOXELS", "MAX_WORKING_VOXELS", "working_spacing", "working_grid_size", "bytes_per_working_voxel",
           "estimate_bytes", "coarser_spacing"]

BYTES_PER_WORKING_VOXEL = 600
"""Peak bytes per working-grid voxel of instance optimisation (MIND features and Adam state), measured as
peak RSS on CPU with torch 2.13."""
BYTES_PER_WORKING_VOXEL_NETWORK = 1400
"""Bytes per working-grid voxel added when a network runs (its forward pass), measured as above."""
BYTES_PER_FIXED_VOXEL = 64
"""Bytes per fixed-image voxel for the full-resolution outputs (displacement as float64 while converting,
warped image, Jacobian)."""
# Instance optimisation works at half resolution on a control grid of half that again, which must keep
# >= 3 points per axis (instance_optimisation._smooth pools with a 3-voxel kernel).
MIN_WORKING_VOXELS = 9
"""Fewest working-grid voxels along any axis that a run accepts (:func:`SHMoAReg.io.validation.check_grid`)."""
MAX_WORKING_VOXELS = 2**20
"""Most voxels a working grid gets unless a spacing is asked for: on a whole abdomen (192x160x256 at 2 mm) a
4 mm grid (97x81x129) gave higher Dice than the 2 mm one (0.694 vs 0.664) at a twelfth of the time and a
third of the memory; beyond about a million voxels the cost grows with the grid and the accuracy does not."""


def working_spacing(requested: float | None, preset_spacing: float, finest_fixed_spacing: float,
                    fixed_size: Sequence[int] | None = None, fixed_spacing: Sequence[float] | None = None,
                    max_voxels: int = MAX_WORKING_VOXELS) -> float:
    """The working-grid spacing in mm: ``requested`` (``--spacing``) when given, else the preset's, never finer
    than the fixed image's finest spacing (a finer grid would only add cost), and, given the fixed image's
    size and spacing, coarsened (0.1 mm steps) until the grid has at most ``max_voxels`` voxels (the preset's;
    :data:`MAX_WORKING_VOXELS` unless it says otherwise).

    Raises:
        ValueError: a spacing that is not a positive number of mm.
    """
    for value, what in ((requested, "requested"), (preset_spacing, "preset"), (finest_fixed_spacing, "fixed image")):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise ValueError(f"the {what} spacing must be a positive number of mm, got {value!r}")
    if requested is not None:
        return float(requested)
    spacing = float(max(preset_spacing, finest_fixed_spacing))
    if fixed_size is None or fixed_spacing is None:
        return spacing
    def voxels(candidate: float) -> int:
        return math.prod(working_grid_size(fixed_size, fixed_spacing, candidate))
    if voxels(spacing) <= max_voxels:
        return spacing
    candidate = math.ceil(spacing * (voxels(spacing) / max_voxels) ** (1 / 3) * 10) / 10
    while voxels(candidate) > max_voxels:
        candidate = round(candidate + 0.1, 1)
    return candidate


def working_grid_size(fixed_size: Sequence[int], fixed_spacing: Sequence[float], spacing: float) -> tuple[int, ...]:
    """Voxels per axis of the working grid at ``spacing`` mm over the fixed image (``fixed_size`` voxels of
    ``fixed_spacing`` mm, index order i, j, k): it spans the fixed image's voxel centres, at least 2 per axis."""
    if not spacing > 0:
        raise ValueError(f"working spacing must be positive, got {spacing}")
    return tuple(max(2, math.ceil((n - 1) * s / spacing - 1e-6) + 1) for n, s in zip(fixed_size, fixed_spacing))


def bytes_per_working_voxel(network: bool) -> int:
    """Peak bytes per working-grid voxel: instance optimisation, plus the network's forward pass when one runs."""
    return BYTES_PER_WORKING_VOXEL + (BYTES_PER_WORKING_VOXEL_NETWORK if network else 0)


def estimate_bytes(working_size: Sequence[int], fixed_size: Sequence[int], network: bool) -> int:
    """Peak memory in bytes of a run with a working grid of ``working_size`` voxels on a fixed image of
    ``fixed_size`` voxels (the figure :func:`SHMoAReg.pipeline.memory.check_memory` compares with what is free)."""
    working = math.prod(int(n) for n in working_size)
    return working * bytes_per_working_voxel(network) + math.prod(int(n) for n in fixed_size) * BYTES_PER_FIXED_VOXEL


def coarser_spacing(spacing: float, factor: float, fits: Callable[[float], bool]) -> float | None:
    """The finest spacing (in 0.1 mm steps, from ``spacing * factor`` up) at which ``fits`` holds, or None."""
    candidate = max(math.ceil(spacing * factor * 10) / 10, round(spacing + 0.1, 1))
    for _ in range(200):
        if fits(candidate):
            return candidate
        candidate = math.ceil(candidate * 1.02 * 10 + 1) / 10
    return None
