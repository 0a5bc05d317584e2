"""Intensity normalisation to [0, 1] per modality."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["normalize_window", "normalize_percentiles", "normalize"]


def normalize_window(image: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """CT: clip to the window ``[low, high]`` (HU) and scale to [0, 1]."""
    if high <= low:
        raise ValueError(f"window must have high > low, got ({low}, {high})")
    return ((image.clamp(low, high) - low) / (high - low)).float()


def normalize_percentiles(image: torch.Tensor, low: float = 0.5, high: float = 99.5) -> torch.Tensor:
    """MR and anything without calibrated units: map the [low, high] percentiles to [0, 1] and clip."""
    values = image.detach().flatten().cpu().numpy()
    if values.size > 2_000_000:
        values = values[:: values.size // 2_000_000]
    lo, hi = np.percentile(values, [low, high])
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return torch.zeros_like(image, dtype=torch.float32)
    return ((image.clamp(float(lo), float(hi)) - lo) / (hi - lo)).float()


def normalize(image: torch.Tensor, modality: str, window: tuple[float, float] | None = None,
              percentiles: tuple[float, float] = (0.5, 99.5)) -> torch.Tensor:
    """Normalise by modality: ``"ct"`` uses ``window``, anything else ``percentiles``."""
    if modality == "ct":
        if window is None:
            raise ValueError("CT normalisation needs a window (low, high) in HU")
        return normalize_window(image, *window)
    return normalize_percentiles(image, *percentiles)
