"""Losses for instance optimisation and training (MONAI where it does the job).

All take tensors on one grid: images ``(B, 1, D, H, W)``, displacements
``(B, 3, D, H, W)`` in voxels, one-hot labels ``(B, L, D, H, W)``, similarity
weights ``(B, 1, D, H, W)`` in [0, 1] (0 = voxel excluded, e.g. a masked lesion).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, LocalNormalizedCrossCorrelationLoss

from .loss_names import Similarity, Smoothness
from .mind import mind_ssc
from .regularisers import bending_energy_loss, diffusion_loss

__all__ = ["Similarity", "Smoothness", "SIMILARITY_FOOTPRINT", "similarity_features", "similarity_loss",
           "weighted_lncc_map", "exclusion_weight", "smoothness_loss", "soft_dice_loss", "gaussian_blur",
           "multiscale_dice_loss"]


_LNCC_KERNEL = 7
_LNCC = LocalNormalizedCrossCorrelationLoss(spatial_dims=3, kernel_size=_LNCC_KERNEL, kernel_type="rectangular")
_DICE = DiceLoss(include_background=False, reduction="mean")


def similarity_features(image: torch.Tensor, similarity: Similarity | str) -> torch.Tensor:
    """What the similarity compares: the image itself (LNCC) or its MIND-SSC descriptors."""
    return mind_ssc(image) if Similarity(similarity) is Similarity.MIND else image


# How far (voxels) an excluded voxel must be dilated so that no similarity value sees it.
# Weighted LNCC computes its local statistics from unexcluded voxels only, so 0; a MIND
# descriptor depends on patches (radius 1) around offsets of +-2 voxels, so 3.
SIMILARITY_FOOTPRINT = {Similarity.LNCC: 0, Similarity.MIND: 3}


def similarity_loss(fixed_features: torch.Tensor, warped_features: torch.Tensor, similarity: Similarity | str,
                    weight: torch.Tensor | None = None) -> torch.Tensor:
    """Lower is better: ``-LNCC`` (in [-1, 0]) or the mean squared MIND descriptor difference.

    ``weight`` ``(B, 1, D, H, W)`` in {0, 1} excludes voxels: they contribute neither value nor
    gradient, and LNCC's local means and variances are taken over the included voxels of each
    window only (so an excluded lesion does not leak into its neighbours' values).
    """
    similarity = Similarity(similarity)
    if weight is None:
        if similarity is Similarity.MIND:
            return F.mse_loss(warped_features, fixed_features)
        return _LNCC(warped_features, fixed_features)
    if weight.shape[1] != 1 or weight.shape[2:] != fixed_features.shape[2:]:
        raise ValueError(f"weight must be (B, 1, {', '.join(map(str, fixed_features.shape[2:]))}), "
                         f"got {tuple(weight.shape)}")
    if similarity is Similarity.MIND:
        per_voxel = (warped_features - fixed_features).square().mean(dim=1, keepdim=True)
    else:
        per_voxel = weighted_lncc_map(fixed_features, warped_features, weight)
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1e-6)


def weighted_lncc_map(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor,
                      kernel: int = _LNCC_KERNEL) -> torch.Tensor:
    """``-NCC^2`` per voxel over ``kernel``^3 windows, counting only voxels with weight 1 (``(B, 1, D, H, W)``).

    With an all-ones weight it equals MONAI's rectangular LNCC map away from the borders (MONAI zero-pads there).
    """
    def mean(x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(x, kernel, stride=1, padding=kernel // 2, count_include_pad=False)

    share = mean(weight).clamp_min(1e-6)  # fraction of each window that counts
    mu_f, mu_w = mean(weight * fixed) / share, mean(weight * warped) / share
    cross = mean(weight * fixed * warped) / share - mu_f * mu_w
    var_f = (mean(weight * fixed * fixed) / share - mu_f * mu_f).clamp_min(0.0)
    var_w = (mean(weight * warped * warped) / share - mu_w * mu_w).clamp_min(0.0)
    smooth = 1e-5 / kernel**6  # MONAI's 1e-5, which it adds to products of window *sums*
    return -(cross * cross) / (var_f * var_w + smooth)


def exclusion_weight(excluded: torch.Tensor, radius: int) -> torch.Tensor:
    """``1 - dilate(excluded, radius)``: weight 0 wherever a similarity value would see an excluded voxel.

    excluded: ``(B, 1, D, H, W)``, > 0 where a voxel is excluded (a mask, possibly warped).
    """
    excluded = (excluded > 0).to(excluded.dtype)
    if radius > 0:
        excluded = F.max_pool3d(excluded, 2 * radius + 1, stride=1, padding=radius)
    return 1.0 - excluded


def smoothness_loss(displacement: torch.Tensor, smoothness: Smoothness | str = Smoothness.DIFFUSION) -> torch.Tensor:
    """Regulariser of a voxel displacement field (voxel units, no normalisation by size)."""
    if Smoothness(smoothness) is Smoothness.BENDING:
        return bending_energy_loss(displacement)
    return diffusion_loss(displacement)


def soft_dice_loss(fixed_one_hot: torch.Tensor, warped_one_hot: torch.Tensor) -> torch.Tensor:
    """1 - mean soft Dice over foreground labels (channel 0 = background is ignored)."""
    return _DICE(warped_one_hot, fixed_one_hot)


def gaussian_blur(volume: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of every channel of ``volume (B, C, D, H, W)``, ``sigma`` in voxels (zero padding)."""
    if sigma < 0.2:
        return volume
    radius = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-radius, radius + 1, dtype=volume.dtype, device=volume.device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = volume.shape[1]
    out = volume
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = len(x)
        padding = [0, 0, 0]
        padding[axis] = radius
        weight = kernel.view(shape).expand(channels, *shape[1:]).contiguous()
        out = F.conv3d(out, weight, padding=tuple(padding), groups=channels)
    return out


def multiscale_dice_loss(fixed_one_hot: torch.Tensor, moving_one_hot: torch.Tensor, displacement: torch.Tensor,
                         sigmas: tuple[float, ...] = (0.0,)) -> torch.Tensor:
    """Mean over ``sigmas`` of :func:`soft_dice_loss` between the fixed and the warped moving one-hot labels
    ``(B, L+1, D, H, W)``, both blurred by ``sigma`` voxels first: a blurred label map has a gradient far from
    its boundary, so organs that do not yet overlap still pull the displacement ``(B, 3, D, H, W)`` towards
    each other."""
    from .warp import warp_labels

    terms = [soft_dice_loss(gaussian_blur(fixed_one_hot, sigma),
                            warp_labels(gaussian_blur(moving_one_hot, sigma), displacement)) for sigma in sigmas]
    return torch.stack(terms).mean()
