"""Losses for instance optimisation and training (MONAI where it does the job).

All take tensors on one grid: images ``(B, 1, D, H, W)``, displacements
``(B, 3, D, H, W)`` in voxels, one-hot labels ``(B, L, D, H, W)``.
"""
from __future__ import annotations

from enum import Enum

import torch
import torch.nn.functional as F
from monai.losses import BendingEnergyLoss, DiceLoss, DiffusionLoss, LocalNormalizedCrossCorrelationLoss

from .mind import mind_ssc

__all__ = ["Similarity", "Smoothness", "similarity_features", "similarity_loss", "smoothness_loss", "soft_dice_loss"]


class Similarity(str, Enum):
    LNCC = "lncc"  # local normalised cross-correlation: same modality
    MIND = "mind"  # MIND-SSC descriptors compared with SSD: works across modalities


class Smoothness(str, Enum):
    DIFFUSION = "diffusion"  # mean squared first derivatives
    BENDING = "bending"  # mean squared second derivatives


_LNCC = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=7, kernel_type="rectangular")
_DIFFUSION = DiffusionLoss(normalize=False)
_BENDING = BendingEnergyLoss(normalize=False)
_DICE = DiceLoss(include_background=False, reduction="mean")


def similarity_features(image: torch.Tensor, similarity: Similarity | str) -> torch.Tensor:
    """What the similarity compares: the image itself (LNCC) or its MIND-SSC descriptors."""
    return mind_ssc(image) if Similarity(similarity) is Similarity.MIND else image


def similarity_loss(fixed_features: torch.Tensor, warped_features: torch.Tensor, similarity: Similarity | str) -> torch.Tensor:
    """Lower is better: ``-LNCC`` (in [-1, 0]) or the mean squared MIND descriptor difference."""
    if Similarity(similarity) is Similarity.MIND:
        return F.mse_loss(warped_features, fixed_features)
    return _LNCC(warped_features, fixed_features)


def smoothness_loss(displacement: torch.Tensor, smoothness: Smoothness | str = Smoothness.DIFFUSION) -> torch.Tensor:
    """Regulariser of a voxel displacement field (voxel units, no normalisation by size)."""
    if Smoothness(smoothness) is Smoothness.BENDING:
        return _BENDING(displacement)
    return _DIFFUSION(displacement)


def soft_dice_loss(fixed_one_hot: torch.Tensor, warped_one_hot: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over foreground labels (channel 0 = background is ignored)."""
    return _DICE(warped_one_hot, fixed_one_hot)
