"""Typed registration options and their translation to the engine's command line."""
from __future__ import annotations

import enum
from dataclasses import dataclass, fields
from pathlib import Path

from .engine import import_engine_module

__all__ = ["Device", "PRESETS", "PRESET_SPACING_MM", "RegistrationOptions"]

PRESET_SPACING_MM: dict[str, float] = {
    name: preset.spacing for name, preset in import_engine_module("SHMoAReg.preprocess.presets").PRESETS.items()}
"""The engine's presets (``SHMoAReg/preprocess/presets.py``, which does not import torch) and their working-grid
spacing in mm."""
PRESETS: tuple[str, ...] = ("auto",) + tuple(PRESET_SPACING_MM)
"""``auto`` (the default) lets the engine choose from the images (``SHMoAReg/preprocess/preset_choice.py``) and report it."""


class Device(str, enum.Enum):
    """Where the engine runs the network (``--device``)."""

    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


@dataclass
class RegistrationOptions:
    """Everything that changes how a registration runs, with the engine's defaults.

    Attributes:
        preset: one of :data:`PRESETS` (``auto``: chosen by the engine from the images).
        weights: shipped weights name or path to a checkpoint (None: the preset's weights).
        device: :class:`Device` or its value.
        iterations: instance-optimisation iterations (None: the preset's number; 0 disables it).
        affine: affine pre-alignment before the deformable stage.
        diffeomorphic: integrate a stationary velocity field (invertible, no folding).
        spacing_mm: working-grid spacing in mm (None: the preset's); coarser saves memory.
        seed: random seed for reproducible runs.
        expert_maps: load the SHMoE expert-utilisation maps as volumes.
        jacobian: load the Jacobian-determinant map as a volume.
        keep_temp: keep the temporary folder (inputs, engine outputs) after the run.
        apply_transform_to_moving: put the moving volume under the output transform.
        timeout_s: give up (and stop the engine) after this many seconds (None: never).
    """

    preset: str = "auto"
    weights: str | None = None
    device: Device | str = Device.AUTO
    iterations: int | None = None
    affine: bool = True
    diffeomorphic: bool = False
    spacing_mm: float | None = None
    seed: int = 0
    expert_maps: bool = True
    jacobian: bool = True
    keep_temp: bool = False
    apply_transform_to_moving: bool = False
    timeout_s: float | None = None

    @classmethod
    def from_keywords(cls, **keywords) -> RegistrationOptions:
        """Build options from keyword arguments, naming any unknown keyword in a ValueError."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(keywords) - known)
        if unknown:
            raise ValueError(f"unknown registration option(s) {unknown}; expected some of {sorted(known)}")
        options = cls(**keywords)
        options.validate()
        return options

    def validate(self) -> None:
        """Raise ValueError naming the first option that is out of range."""
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {self.preset!r}")
        try:
            self.device = Device(self.device)
        except ValueError:
            raise ValueError(f"device must be one of {[d.value for d in Device]}, got {self.device!r}") from None
        if self.iterations is not None and (int(self.iterations) != self.iterations or self.iterations < 0):
            raise ValueError(f"iterations must be a non-negative integer or None, got {self.iterations!r}")
        if self.spacing_mm is not None and not self.spacing_mm > 0:
            raise ValueError(f"spacing_mm must be positive or None, got {self.spacing_mm!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive or None, got {self.timeout_s!r}")
        if self.weights is not None and not str(self.weights).strip():
            raise ValueError("weights must be a name, a path or None, got an empty string")

    def engine_arguments(self) -> list[str]:
        """The option part of ``SHMoAReg register`` (inputs and output folder excluded)."""
        self.validate()
        arguments = ["--preset", self.preset, "--device", Device(self.device).value, "--seed", str(int(self.seed))]
        arguments.append("--affine" if self.affine else "--no-affine")
        if self.diffeomorphic:
            arguments.append("--diffeomorphic")
        if self.weights is not None:
            weights = str(self.weights)
            arguments += ["--weights", str(Path(weights).resolve()) if Path(weights).exists() else weights]
        if self.iterations is not None:
            arguments += ["--iterations", str(int(self.iterations))]
        if self.spacing_mm is not None:
            arguments += ["--spacing", f"{float(self.spacing_mm):g}"]
        return arguments
