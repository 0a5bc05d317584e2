"""The names of the similarity and smoothness terms a run can choose (torch-free, so presets and the
Slicer module can use them without importing torch; the terms themselves are in :mod:`SHMoAReg.optimise.losses`)."""
from __future__ import annotations

from enum import Enum

__all__ = ["Similarity", "Smoothness"]


class Similarity(str, Enum):
    LNCC = "lncc"  # local normalised cross-correlation: same modality
    MIND = "mind"  # MIND-SSC descriptors compared with SSD: works across modalities


class Smoothness(str, Enum):
    DIFFUSION = "diffusion"  # mean squared first derivatives
    BENDING = "bending"  # mean squared second derivatives
