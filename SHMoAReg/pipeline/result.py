"""What ``register`` returns (and :class:`SHMoAReg.io.outputs.OutputFolder` writes)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

__all__ = ["RegistrationResult"]


@dataclass
class RegistrationResult:
    """transform maps fixed-space points to moving-space points (LPS mm); see :mod:`SHMoAReg.conventions`."""

    transform: sitk.Transform
    warped: sitk.Image
    displacement: sitk.Image
    jacobian: sitk.Image
    report: dict
    warped_labels: sitk.Image | None = None
    expert_maps: dict[str, sitk.Image] = field(default_factory=dict)
    utilisation: dict | None = None
    output_dir: Path | None = None
    velocity: sitk.Image | None = None  # diffeomorphic runs: stationary velocity, LPS mm on the working grid
    inverse_transform: sitk.Transform | None = None  # with inverse=True: maps moving-space points to fixed space
