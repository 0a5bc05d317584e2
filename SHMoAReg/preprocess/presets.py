"""Presets: the defaults that suit one kind of image (documented in the README).

``spacing`` is the working-grid spacing in mm; the grid is never made finer than
the fixed image's finest spacing (``working spacing = max(preset, min(fixed spacing))``),
because that would only add cost.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError
from .grid_rules import MAX_WORKING_VOXELS
from ..optimise.loss_names import Similarity

__all__ = ["Preset", "PRESETS", "get_preset"]


@dataclass(frozen=True)
class Preset:
    name: str
    modality: str  # "ct" (HU window) or "mr" (percentiles)
    spacing: float
    window: tuple[float, float] | None
    similarity: Similarity
    iterations: int
    learning_rate: float
    smoothness_weight: float
    weights: str | None  # shipped weights used with --weights auto (the default) when they exist
    description: str
    # instance-optimisation iterations after the network: 10 on the coarse scale (the network did that work) and
    # the 15 on the finest that instance optimisation alone runs there (they carry the accuracy; docs/training.md)
    network_iterations: int = 25
    # the network applied up to this many times, each pass on the moving image warped so far and kept only when it
    # improves the similarity (SHMoAReg.network.recursive): weights alone on the held-out abdomen 0.372 -> 0.410
    network_passes: int = 3
    # the network's prediction averaged over this many mirrored copies of the pair (SHMoAReg.network.flip_ensemble),
    # where instance optimisation follows: off, it did not help there (held-out abdomen 0.610 -> 0.606 with 4, slower)
    network_flips: int = 1
    # ... and where the network's field is the result (--iterations 0): 4, which on the held-out abdomen took the
    # weights alone from 0.440 to 0.476 and their folding from 0.153 % to 0 on the hardest pair (6 Dec, docs/training.md);
    # the weights trained since with a folding penalty no longer fold without it, and gain 0.444 -> 0.475 from it
    network_flips_alone: int = 4
    max_working_voxels: int = MAX_WORKING_VOXELS  # a larger image gets a coarser working grid (grid_rules)


PRESETS = {
    p.name: p for p in [
        Preset("abdomen-ct", "ct", 2.0, (-300.0, 500.0), Similarity.LNCC, 80, 0.5, 2.0, "abdomen-ct",
               "abdominal CT, 2 mm grid, soft-tissue window [-300, 500] HU, LNCC"),
        # brain structures are small: a whole 1 mm T1 stays on the 1.5 mm grid (2^21 voxels); at 1.9 mm (2^20)
        # Dice on the two brain-native pairs fell by 0.009
        Preset("brain-mri", "mr", 1.5, None, Similarity.LNCC, 80, 0.5, 2.0, "brain-mri",
               "brain T1 MRI, 1.5 mm grid, 0.5-99.5 percentile scaling, LNCC", max_working_voxels=2**21),
        Preset("mr-ct", "mr", 2.0, None, Similarity.MIND, 150, 1.0, 1.0, None,
               "multi-modal MR<->CT, 2 mm grid, percentile scaling, MIND-SSC"),
        Preset("generic", "mr", 2.0, None, Similarity.MIND, 150, 1.0, 1.0, None,
               "any modality, 2 mm grid, percentile scaling, MIND-SSC"),
        Preset("same-modality", "mr", 2.0, None, Similarity.LNCC, 150, 1.0, 1.0, None,
               "two images of one modality and contrast (not CT in HU), 2 mm grid, percentile scaling, LNCC"),
    ]
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
