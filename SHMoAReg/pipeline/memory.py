"""Refuse runs that would not fit in memory, before they start, with advice.

The estimate is per working-grid voxel, measured on CPU with torch 2.13 (peak RSS
of instance optimisation with MIND features and Adam state, and of a network
forward pass), plus the fixed-grid outputs (displacement as float64 while
converting, warped image, Jacobian). The figures and the estimate live in the
torch-free :mod:`SHMoAReg.preprocess.grid_rules`, which the Slicer module's pre-flight check
imports too, so both say the same. The memory available is the host's
``MemAvailable`` (capped by a cgroup limit) or the GPU's free memory; the
environment variable ``SHMOAREG_MEMORY_LIMIT_MB`` overrides it (tests, shared machines).
A run that still runs out of memory (``torch.OutOfMemoryError``, ``MemoryError``)
is turned into :class:`~SHMoAReg.errors.OutOfMemory` with the same advice by
:func:`out_of_memory_as_error`.
"""
from __future__ import annotations

import functools
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from ..errors import InputError, OutOfMemory
from ..preprocess.grid_rules import (  # noqa: F401  (BYTES_PER_*: the engine's figures, kept importable from here)
    BYTES_PER_FIXED_VOXEL,
    BYTES_PER_WORKING_VOXEL,
    BYTES_PER_WORKING_VOXEL_NETWORK,
    bytes_per_working_voxel,
    coarser_spacing as _coarser_spacing,
    estimate_bytes,
)

__all__ = ["peak_host_rss_mb", "estimate_bytes", "available_bytes", "check_memory", "format_bytes",
           "out_of_memory_as_error",
           "MEMORY_LIMIT_ENV"]

MEMORY_LIMIT_ENV = "SHMOAREG_MEMORY_LIMIT_MB"

F = TypeVar("F", bound=Callable)


def peak_host_rss_mb() -> float | None:
    """This process's peak resident memory in MiB; None where the OS does not say (``resource`` is POSIX-only,
    so on Windows, where Slicer also runs, the report simply leaves it out)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024.0  # bytes on macOS, KiB on Linux


def format_bytes(count: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count / 2**20:.2f} MiB"


def _host_available() -> int:
    have = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                have = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if have is None:
        try:
            have = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return 1 << 62
    try:  # a container's cgroup (v2) limit
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            used = int(Path("/sys/fs/cgroup/memory.current").read_text())
            have = min(have, int(limit) - used)
    except (OSError, ValueError):
        pass
    return max(have, 0)


def available_bytes(device: torch.device | None = None) -> int:
    """Free memory on ``device`` (None: the host), or ``$SHMOAREG_MEMORY_LIMIT_MB`` when set."""
    limit = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    if limit:
        try:
            value = float(limit)
        except ValueError:
            value = -1.0
        if not value > 0 or not math.isfinite(value):
            raise InputError(f"{MEMORY_LIMIT_ENV} must be a positive number of MB, got {limit!r}")
        return int(value * 2**20)
    if device is not None and device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return _host_available()


def _advice(device_type: str, spacing: float | None, factor: float | None, suggested: float | None = None) -> str:
    parts = []
    if suggested is not None:
        parts.append(f"use a coarser working grid (--spacing {suggested:g} instead of {spacing:g})")
    elif factor is not None:
        parts.append(f"use a coarser working grid (--spacing about {factor:.1f}x the current one)")
    parts.append("crop the images")
    parts.append("use --device cpu" if device_type == "cuda" else
                 "use --device cuda if a GPU with more memory is available")
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def check_memory(working_size: Sequence[int], fixed_size: Sequence[int], device: torch.device, network: bool,
                 limit: int | None = None, spacing: float | None = None,
                 grid_size: Callable[[float], Sequence[int]] | None = None) -> int:
    """Return the estimate in bytes, or raise :class:`OutOfMemory` naming a coarser spacing that would fit.

    ``spacing`` is the working-grid spacing in mm and ``grid_size(spacing)`` the working-grid size
    at another spacing; with both the advice names a spacing that passes this check.
    """
    need = estimate_bytes(working_size, fixed_size, network)
    have = available_bytes(device) if limit is None else limit
    if need <= have:
        return need
    per_voxel = bytes_per_working_voxel(network)
    budget = have - int(np.prod(fixed_size, dtype=np.float64)) * BYTES_PER_FIXED_VOXEL
    working = float(np.prod(working_size, dtype=np.float64))
    factor, suggested = None, None
    if budget > 8 * per_voxel:  # the coarsest working grid is 2 x 2 x 2
        factor = max((working * per_voxel / budget) ** (1 / 3), 1.05)
        if spacing and grid_size is not None:
            suggested = _coarser_spacing(spacing, factor, lambda s: estimate_bytes(grid_size(s), fixed_size,
                                                                                   network) <= have)
            factor = None  # no usable spacing fits: only cropping or another device helps
    grid = f"working grid {tuple(working_size)}" + (f" at {spacing:g} mm" if spacing else "")
    raise OutOfMemory(f"this run needs about {format_bytes(need)} of {device.type} memory but only "
                      f"{format_bytes(have)} is available ({grid}); "
                      f"{_advice(device.type, spacing, factor, suggested)}")


def out_of_memory_as_error(function: F) -> F:
    """Turn ``torch.OutOfMemoryError`` (CUDA) and ``MemoryError`` raised by ``function`` into :class:`OutOfMemory`."""

    @functools.wraps(function)
    def guarded(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (torch.OutOfMemoryError, MemoryError) as error:
            on_gpu = isinstance(error, torch.OutOfMemoryError)
            if on_gpu and torch.cuda.is_available():
                torch.cuda.empty_cache()
            device = "cuda" if on_gpu else "cpu"
            raise OutOfMemory(f"the run ran out of {device} memory; {_advice(device, None, 1.5)}") from None

    return guarded  # type: ignore[return-value]
