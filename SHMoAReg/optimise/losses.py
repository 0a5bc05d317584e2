"""Losses for instance optimisation and training (MONAI where it does the job).

All take tensors on one grid: images ``(B, 1, D, H, W)``, displacements
``(B, 3, D, H, W)`` in voxels, one-hot labels ``(B, L, D, H, W)``, similarity
weights ``(B, 1, D, H, W)`` in [0, 1] (0 = voxel excluded, e.g. a masked lesion).
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .loss_names import Similarity, Smoothness
from .mind import mind_ssc
from .regularisers import bending_energy_loss, diffusion_loss

__all__ = ["Similarity", "Smoothness", "SIMILARITY_FOOTPRINT", "similarity_features", "similarity_loss",
           "lncc_loss", "lncc_fixed_windows", "FixedWindows", "box_sum", "weighted_lncc_map", "exclusion_weight",
           "smoothness_loss", "soft_dice_loss", "gaussian_blur", "multiscale_dice_loss"]


_LNCC_KERNEL = 7
_LNCC_SMOOTH = 1e-5  # MONAI's smooth_dr, added to the products of window *sums* (its smooth_nr is 0)


@functools.lru_cache(maxsize=1)
def _dice_loss():
    """MONAI's Dice loss, imported on first use: importing MONAI takes ~2 s, and a registration without labels
    never needs it."""
    from monai.losses import DiceLoss

    return DiceLoss(include_background=False, reduction="mean")


def similarity_features(image: torch.Tensor, similarity: Similarity | str) -> torch.Tensor:
    """What the similarity compares: the image itself (LNCC) or its MIND-SSC descriptors."""
    return mind_ssc(image) if Similarity(similarity) is Similarity.MIND else image


# How far (voxels) an excluded voxel must be dilated so that no similarity value sees it.
# Weighted LNCC computes its local statistics from unexcluded voxels only, so 0; a MIND
# descriptor depends on patches (radius 1) around offsets of +-2 voxels, so 3.
SIMILARITY_FOOTPRINT = {Similarity.LNCC: 0, Similarity.MIND: 3}


def similarity_loss(fixed_features: torch.Tensor, warped_features: torch.Tensor, similarity: Similarity | str,
                    weight: torch.Tensor | None = None, fixed_windows: FixedWindows | None = None) -> torch.Tensor:
    """Lower is better: ``-LNCC`` (in [-1, 0]) or the mean squared MIND descriptor difference.
    ``fixed_windows``: the fixed side of LNCC, precomputed (:func:`lncc_fixed_windows`; used without ``weight``).

    ``weight`` ``(B, 1, D, H, W)`` in {0, 1} excludes voxels: they contribute neither value nor
    gradient, and LNCC's local means and variances are taken over the included voxels of each
    window only (so an excluded lesion does not leak into its neighbours' values).
    """
    similarity = Similarity(similarity)
    if weight is None:
        if similarity is Similarity.MIND:
            return F.mse_loss(warped_features, fixed_features)
        return lncc_loss(fixed_features, warped_features, fixed_windows=fixed_windows)
    if weight.shape[1] != 1 or weight.shape[2:] != fixed_features.shape[2:]:
        raise ValueError(f"weight must be (B, 1, {', '.join(map(str, fixed_features.shape[2:]))}), "
                         f"got {tuple(weight.shape)}")
    if similarity is Similarity.MIND:
        per_voxel = (warped_features - fixed_features).square().mean(dim=1, keepdim=True)
    else:
        per_voxel = weighted_lncc_map(fixed_features, warped_features, weight)
    return (per_voxel * weight).sum() / weight.sum().clamp_min(1e-6)


def _window_sums(volume: torch.Tensor, kernel: int) -> torch.Tensor:
    radius = kernel // 2
    for dim in (2, 3, 4):
        length = volume.shape[dim]
        total = volume.clone()
        for shift in range(1, min(radius, length - 1) + 1):  # windows reach past the border: zeros there
            total.narrow(dim, shift, length - shift).add_(volume.narrow(dim, 0, length - shift))
            total.narrow(dim, 0, length - shift).add_(volume.narrow(dim, shift, length - shift))
        volume = total
    return volume


class _BoxSum(torch.autograd.Function):
    """A zero-padded box sum is linear and its own adjoint (symmetric window), so its backward is itself."""

    @staticmethod
    def forward(ctx, volume: torch.Tensor, kernel: int) -> torch.Tensor:
        ctx.kernel = kernel
        return _window_sums(volume, kernel)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _window_sums(grad, ctx.kernel), None


def box_sum(volume: torch.Tensor, kernel: int = _LNCC_KERNEL) -> torch.Tensor:
    """Sum of ``volume (B, C, D, H, W)`` over the ``kernel``^3 window centred on each voxel (``kernel`` odd),
    zeros outside: ``kernel`` shifted in-place additions per axis, and the same for the gradient. On 2 CPU
    cores this makes LNCC 2.8x faster in forward + backward than MONAI's 3-D convolution, and it adds the
    values directly, so it is as exact (a running-sum version was faster still but lost all precision in
    uniform regions, where the local variance is a difference of two large sums)."""
    return _BoxSum.apply(volume, kernel)


class FixedWindows(NamedTuple):
    """The fixed image's side of LNCC, which does not change while the moving image is warped: its window
    sums and its window variances (``sum f^2 - (sum f)^2 / n``, clamped as MONAI clamps it), ``(B, D, H, W)``."""

    sums: torch.Tensor
    variances: torch.Tensor


def lncc_fixed_windows(fixed: torch.Tensor, kernel: int = _LNCC_KERNEL) -> FixedWindows:
    """:class:`FixedWindows` of ``fixed (B, 1, D, H, W)``: compute once, pass to :func:`lncc_loss` every iteration."""
    sums, squares = box_sum(torch.cat([fixed, fixed * fixed], dim=1), kernel).unbind(dim=1)
    return FixedWindows(sums, (squares - sums * sums / float(kernel**3)).clamp_min(_LNCC_SMOOTH))


def lncc_loss(fixed: torch.Tensor, warped: torch.Tensor, kernel: int = _LNCC_KERNEL,
              fixed_windows: FixedWindows | None = None) -> torch.Tensor:
    """``-mean(NCC^2)`` over ``kernel``^3 windows (zero-padded at the borders): MONAI's rectangular
    ``LocalNormalizedCrossCorrelationLoss`` (tested equal), with the window sums from :func:`box_sum`.

    fixed, warped: ``(B, 1, D, H, W)``; ``fixed_windows``: :func:`lncc_fixed_windows` of ``fixed`` when the caller
    keeps it (instance optimisation: 3 window sums per iteration instead of 5). Returns a scalar in [-1, 0].
    """
    count = float(kernel**3)
    if fixed_windows is None:
        fixed_windows = lncc_fixed_windows(fixed, kernel)
    sum_w, sum_ww, sum_fw = box_sum(torch.cat([warped, warped * warped, fixed * warped], dim=1), kernel).unbind(dim=1)
    cross = sum_fw - sum_w * fixed_windows.sums / count
    var_w = (sum_ww - sum_w * sum_w / count).clamp_min(_LNCC_SMOOTH)
    return -(cross * cross / (fixed_windows.variances * var_w)).mean()


def weighted_lncc_map(fixed: torch.Tensor, warped: torch.Tensor, weight: torch.Tensor,
                      kernel: int = _LNCC_KERNEL) -> torch.Tensor:
    """``-NCC^2`` per voxel over ``kernel``^3 windows, counting only voxels with weight 1 (``(B, 1, D, H, W)``).

    With an all-ones weight it equals MONAI's rectangular LNCC map away from the borders (MONAI zero-pads there).
    """
    inside = box_sum(torch.ones_like(weight), kernel)  # voxels of each window inside the image

    def mean(x: torch.Tensor) -> torch.Tensor:
        return box_sum(x, kernel) / inside

    share = mean(weight).clamp_min(1e-6)  # fraction of each window that counts
    mu_f, mu_w = mean(weight * fixed) / share, mean(weight * warped) / share
    cross = mean(weight * fixed * warped) / share - mu_f * mu_w
    var_f = (mean(weight * fixed * fixed) / share - mu_f * mu_f).clamp_min(0.0)
    var_w = (mean(weight * warped * warped) / share - mu_w * mu_w).clamp_min(0.0)
    smooth = _LNCC_SMOOTH / kernel**6
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
    return _dice_loss()(warped_one_hot, fixed_one_hot)


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
