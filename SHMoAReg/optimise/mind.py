"""MIND-SSC: modality-independent neighbourhood descriptors (Heinrich et al. 2012/2013).

For each voxel, the self-similarity context compares the image patches around
the 12 pairs of points of its 6-neighbourhood that lie sqrt(2) * ``dilation``
apart. The 12 patch distances are normalised by their local mean and mapped
through ``exp(-d / v)``, which makes them comparable across modalities.
Input ``(B, 1, D, H, W)``, output ``(B, 12, D, H, W)`` in [0, 1].
"""
from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

__all__ = ["mind_ssc"]

_SIX = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
_PAIRS = [(a, b) for a, b in itertools.combinations(_SIX, 2)
          if sum((x - y) ** 2 for x, y in zip(a, b)) == 2]  # the 12 pairs sqrt(2) apart


def _shift(image: torch.Tensor, offset: tuple[int, int, int]) -> torch.Tensor:
    """``out[p] = image[p + offset]`` with replicated borders."""
    pad = max(abs(o) for o in offset)
    padded = F.pad(image, (pad,) * 6, mode="replicate")
    d, h, w = image.shape[2:]
    z, y, x = (pad + o for o in offset)
    return padded[:, :, z:z + d, y:y + h, x:x + w]


def mind_ssc(image: torch.Tensor, radius: int = 1, dilation: int = 2) -> torch.Tensor:
    if image.ndim != 5 or image.shape[1] != 1:
        raise ValueError(f"expected a (B, 1, D, H, W) image, got {tuple(image.shape)}")
    kernel = 2 * radius + 1
    distances = []
    for a, b in _PAIRS:
        difference = _shift(image, tuple(dilation * v for v in a)) - _shift(image, tuple(dilation * v for v in b))
        distances.append(F.avg_pool3d(difference.square(), kernel, stride=1, padding=radius, count_include_pad=False))
    ssd = torch.cat(distances, dim=1)
    ssd = ssd - ssd.min(dim=1, keepdim=True).values
    variance = ssd.mean(dim=1, keepdim=True)
    mean_variance = variance.mean()
    variance = variance.clamp(mean_variance * 1e-3 + 1e-8, mean_variance * 1e3 + 1e-8)
    return torch.exp(-ssd / variance)
