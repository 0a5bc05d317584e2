"""Checks before a run: do the volumes overlap, is there a GPU and enough memory on it.

Nothing here imports torch: the GPU is queried with ``nvidia-smi`` (a missing tool
means "no CUDA GPU"), so the checks run in Slicer before the dependencies exist.
The working-grid rule, the per-voxel memory figures and the estimate are the engine's
own (``SHMoAReg/preprocess/grid_rules.py``, standard library only), so the figure here is the one
the engine's memory guard computes before it starts; the engine reports the real peak
in ``report.json``.
"""
from __future__ import annotations

import itertools
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np
import slicer

from .conversion import ijk_to_world_matrix
from .engine import import_engine_module
from .options import PRESET_SPACING_MM, Device, RegistrationOptions

__all__ = ["Finding", "GpuInfo", "query_gpu", "overlap_fraction", "preset_spacing_mm", "working_spacing_mm",
           "uses_network", "estimate_memory_mb", "suggest_spacing_mm", "preflight"]

_rules = import_engine_module("SHMoAReg.preprocess.grid_rules")
_presets = import_engine_module("SHMoAReg.preprocess.presets")

BYTES_PER_WORKING_VOXEL: int = _rules.BYTES_PER_WORKING_VOXEL
"""Peak bytes per working-grid voxel of instance optimisation (the engine's object, ``SHMoAReg/preprocess/grid_rules.py``)."""
BYTES_PER_WORKING_VOXEL_NETWORK: int = _rules.BYTES_PER_WORKING_VOXEL_NETWORK
"""Added per working-grid voxel when a network runs (the engine's object)."""
BYTES_PER_FIXED_VOXEL: int = _rules.BYTES_PER_FIXED_VOXEL
"""Bytes per fixed-image voxel for the full-resolution outputs (the engine's object)."""
MINIMUM_OVERLAP = 0.5
"""Below this fraction of the smaller volume inside the other, affine pre-alignment is suggested."""
GPU_MEMORY_MARGIN = 0.8
"""Share of the GPU's free memory a suggested spacing may plan for (other programs, CUDA's own context)."""
MAX_SUGGESTED_SPACING_MM = 10.0
"""Coarsest working grid worth suggesting (also the GUI's maximum); beyond it the CPU is suggested instead."""


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


def _world_spacing(node: slicer.vtkMRMLVolumeNode) -> tuple[float, float, float]:
    """Voxel spacing in mm along i, j, k in world coordinates (a linear parent transform included), as the
    engine receives the volume."""
    columns = ijk_to_world_matrix(node)[:3, :3]
    return tuple(float(v) for v in np.linalg.norm(columns, axis=0))


def preset_spacing_mm(preset: str) -> float:
    """The working-grid spacing (mm) a preset asks for; for ``auto`` the finest of any preset.

    ``auto`` is resolved by the engine from the voxel values (``SHMoAReg/preprocess/preset_choice.py``); doing that here
    would copy both volumes out of the scene before every click on Register. The finest spacing any preset
    has (today ``brain-mri``'s 1.5 mm, against 2 mm for ``abdomen-ct``) is the most memory-hungry choice
    ``auto`` can make, so the estimate is never lower than the engine's: a needless warning costs one click,
    a missed one a run that stops on the engine's own memory check.
    """
    if preset == "auto":
        return min(PRESET_SPACING_MM.values())
    try:
        return PRESET_SPACING_MM[preset]
    except KeyError:
        raise ValueError(f"preset must be one of {('auto', *PRESET_SPACING_MM)}, got {preset!r}") from None


def working_spacing_mm(fixed: slicer.vtkMRMLVolumeNode, options: RegistrationOptions) -> float:
    """The engine's working-grid spacing (``SHMoAReg.preprocess.grid_rules.working_spacing``): the chosen one, else the
    preset's never finer than the fixed volume's finest spacing, coarsened to the engine's voxel budget."""
    size, spacing = _sizes(fixed)
    return _rules.working_spacing(options.spacing_mm, preset_spacing_mm(options.preset), min(spacing), size, spacing,
                                  _max_working_voxels(options.preset))


def _max_working_voxels(preset: str) -> int:
    """The preset's voxel budget of the working grid; for ``auto`` the largest of any preset (the finest grid it
    can get, so the memory estimate is never lower than the engine's)."""
    if preset == "auto":
        return max(p.max_working_voxels for p in _presets.PRESETS.values())
    return _presets.PRESETS[preset].max_working_voxels


def uses_network(options: RegistrationOptions) -> bool:
    """Whether the engine may load network weights (it then adds the network's per-voxel figure).

    No ``weights`` means the preset's shipped weights (``--weights auto``); counted whenever the preset names
    some, and always for ``auto`` (as conservative as :func:`preset_spacing_mm`).
    """
    if options.weights is not None:
        return str(options.weights).strip().lower() != "none"
    if options.preset == "auto":
        return True
    return _presets.PRESETS[options.preset].weights is not None


def _sizes(fixed: slicer.vtkMRMLVolumeNode) -> tuple[tuple[int, ...], tuple[float, float, float]]:
    return tuple(int(n) for n in fixed.GetImageData().GetDimensions()), _world_spacing(fixed)


def estimate_memory_mb(fixed: slicer.vtkMRMLVolumeNode, options: RegistrationOptions) -> float:
    """Peak memory (MiB) of a run on the fixed volume, as the engine estimates it (``SHMoAReg.preprocess.grid_rules``).

    Counted on the working grid, the one instance optimisation uses, as the engine does. The network's own
    grid (the spacing its weights were trained at, which only torch can read from the ``.pt``) is assumed no
    finer, as for weights trained at their preset's spacing; a run with ``iterations=0`` is checked by the
    engine on that grid instead, which this estimate then overstates when it is coarser.
    """
    size, spacing = _sizes(fixed)
    working = _rules.working_grid_size(size, spacing, working_spacing_mm(fixed, options))
    return _rules.estimate_bytes(working, size, uses_network(options)) / 2**20


def suggest_spacing_mm(fixed: slicer.vtkMRMLVolumeNode, options: RegistrationOptions, free_mb: float) -> float | None:
    """The finest working spacing (0.1 mm steps, as the engine's memory advice) whose estimate fits in
    :data:`GPU_MEMORY_MARGIN` of ``free_mb`` and whose grid the engine accepts; None when none up to
    :data:`MAX_SUGGESTED_SPACING_MM` does."""
    size, spacing = _sizes(fixed)
    network = uses_network(options)
    budget = GPU_MEMORY_MARGIN * free_mb * 2**20

    def fits(candidate: float) -> bool:
        working = _rules.working_grid_size(size, spacing, candidate)
        return min(working) >= _rules.MIN_WORKING_VOXELS and _rules.estimate_bytes(working, size, network) <= budget

    current = working_spacing_mm(fixed, options)
    outputs = float(np.prod(size, dtype=np.float64)) * BYTES_PER_FIXED_VOXEL
    per_voxel = _rules.bytes_per_working_voxel(network)
    if budget - outputs <= 8 * per_voxel:  # not even a 2 x 2 x 2 working grid fits beside the outputs
        return None
    working = float(np.prod(_rules.working_grid_size(size, spacing, current), dtype=np.float64))
    factor = max((working * per_voxel / (budget - outputs)) ** (1 / 3), 1.05)
    suggested = _rules.coarser_spacing(current, factor, fits)
    return suggested if suggested is not None and suggested <= MAX_SUGGESTED_SPACING_MM else None


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
        coarser = suggest_spacing_mm(fixed, options, info.free_mb)
        lead = (f"The run needs about {needed:.0f} MB of GPU memory at a {spacing:g} mm working grid but {info.name} "
                f"has {info.free_mb:.0f} MB free; ")
        if coarser is None:
            findings.append(Finding("warning", lead + "no usable working grid fits: run on the CPU or crop the "
                                    "volumes.", {"device": "cpu"}))
        else:
            findings.append(Finding("warning", lead + f"use a coarser working grid ({coarser:g} mm) or the CPU.",
                                    {"spacing_mm": coarser}))
    return findings
