"""Checks before a run: do the volumes overlap, is there a GPU and enough memory on it.

Nothing here imports torch: the GPU is queried with ``nvidia-smi`` (a missing tool
means "no CUDA GPU"), so the checks run in Slicer before the dependencies exist.
The memory figure is a conservative estimate from the working-grid size; the
engine reports the real peak in ``report.json``.
"""
from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import slicer

from .conversion import ijk_to_world_matrix
from .options import PRESET_SPACING_MM, Device, RegistrationOptions

__all__ = ["Finding", "GpuInfo", "query_gpu", "overlap_fraction", "estimate_memory_mb", "preflight"]

BYTES_PER_WORKING_VOXEL = 600 + 1400
"""Peak bytes per working-grid voxel (instance optimisation + network), as ``SHMoAReg/memory.py`` measures."""
BYTES_PER_FIXED_VOXEL = 64
"""Bytes per fixed-image voxel for the full-resolution outputs (``SHMoAReg/memory.py``)."""
MINIMUM_OVERLAP = 0.5
"""Below this fraction of the smaller volume inside the other, affine pre-alignment is suggested."""


@dataclass(frozen=True)
class Finding:
    """One preflight result: ``level`` is "warning" (the run may fail or be poor) or "info"."""

    level: str
    message: str
    suggestion: dict | None = None  # option changes that avoid the problem, e.g. {"device": "cpu"}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    total_mb: float
    free_mb: float


def query_gpu(timeout_s: float = 5.0) -> GpuInfo | None:
    """The first CUDA GPU as reported by ``nvidia-smi``, or None if there is none."""
    tool = shutil.which("nvidia-smi")
    if tool is None:
        return None
    try:
        completed = subprocess.run(
            [tool, "--query-gpu=name,memory.total,memory.free", "--format=csv,noheader,nounits"],
            capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout_s, check=True,
        )
        name, total, free = [part.strip() for part in completed.stdout.strip().splitlines()[0].split(",")]
        return GpuInfo(name, float(total), float(free))
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _world_bounds(node: slicer.vtkMRMLVolumeNode) -> tuple[np.ndarray, np.ndarray]:
    matrix = ijk_to_world_matrix(node)
    size = np.array(node.GetImageData().GetDimensions(), dtype=float) - 1
    corners = np.array([[*corner, 1.0] for corner in itertools.product(*[(-0.5, s + 0.5) for s in size])])
    world = (matrix @ corners.T).T[:, :3]
    return world.min(axis=0), world.max(axis=0)


def overlap_fraction(fixed: slicer.vtkMRMLVolumeNode, moving: slicer.vtkMRMLVolumeNode) -> float:
    """Volume of the intersection of the two world bounding boxes over the smaller box (0..1)."""
    (low_f, high_f), (low_m, high_m) = _world_bounds(fixed), _world_bounds(moving)
    intersection = np.prod(np.clip(np.minimum(high_f, high_m) - np.maximum(low_f, low_m), 0, None))
    smaller = min(np.prod(high_f - low_f), np.prod(high_m - low_m))
    return float(intersection / smaller) if smaller > 0 else 0.0


def working_spacing_mm(fixed: slicer.vtkMRMLVolumeNode, options: RegistrationOptions) -> float:
    """The engine's working-grid spacing: the chosen (or preset) one, never finer than the fixed image."""
    spacing = options.spacing_mm or PRESET_SPACING_MM.get(options.preset, 2.0)
    return max(spacing, min(fixed.GetSpacing()))


def estimate_memory_mb(fixed: slicer.vtkMRMLVolumeNode, options: RegistrationOptions) -> float:
    """Peak memory of a run on the fixed volume's field of view (the engine's own per-voxel figures)."""
    dimensions = np.array(fixed.GetImageData().GetDimensions())
    extent_mm = dimensions * np.array(fixed.GetSpacing())
    working = float(np.prod(np.maximum(np.ceil(extent_mm / working_spacing_mm(fixed, options)), 1)))
    return (working * BYTES_PER_WORKING_VOXEL + float(np.prod(dimensions)) * BYTES_PER_FIXED_VOXEL) / 2**20


def preflight(
    fixed: slicer.vtkMRMLVolumeNode,
    moving: slicer.vtkMRMLVolumeNode,
    options: RegistrationOptions,
    gpu: GpuInfo | None | bool = True,
) -> list[Finding]:
    """Problems worth telling the user before starting (the run is not started).

    Args:
        gpu: a :class:`GpuInfo`, None for "no GPU", or True to query ``nvidia-smi``.
    """
    findings: list[Finding] = []
    overlap = overlap_fraction(fixed, moving)
    if overlap < MINIMUM_OVERLAP and not options.affine:
        findings.append(Finding(
            "warning",
            f"The volumes overlap by only {overlap:.0%} of the smaller one; turn on affine pre-alignment.",
            {"affine": True},
        ))
    device = Device(options.device)
    if device is Device.CPU:
        return findings
    info = query_gpu() if gpu is True else gpu
    if info is None:
        if device is Device.CUDA:
            findings.append(Finding("warning", "No CUDA GPU was found; run on the CPU instead.", {"device": "cpu"}))
        else:
            findings.append(Finding("info", "No CUDA GPU was found; the registration runs on the CPU (slower)."))
        return findings
    needed = estimate_memory_mb(fixed, options)
    if needed > info.free_mb:
        spacing = working_spacing_mm(fixed, options)
        coarser = float(np.ceil(spacing * (needed / (0.8 * info.free_mb)) ** (1 / 3) * 2) / 2)
        findings.append(Finding(
            "warning",
            f"The run needs about {needed:.0f} MB of GPU memory but {info.name} has {info.free_mb:.0f} MB free; "
            f"use a coarser working grid ({coarser:g} mm) or the CPU.",
            {"spacing_mm": coarser},
        ))
    return findings
