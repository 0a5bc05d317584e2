"""Every stage must earn its place: pick the start transform, and keep the deformable result only when it helps.

A *start* is the transform the deformable stage begins from: the identity (``None``), a translation that
matches the centres of mass (:func:`centre_of_mass_translation`), the affine pre-alignment, ...
:func:`choose_start` resamples the moving image under each candidate onto a coarse copy of the working
grid and keeps the one with the lowest similarity loss, so a failed affine (a wrong local optimum)
cannot be worse than not running it. :func:`compare_with_start` does the same for the deformable stage:
its result is rejected only when it is clearly worse than the start it began from.

Conventions (:mod:`SHMoAReg.conventions`): every transform maps fixed-space points to moving-space
points, LPS mm; ``warped(x) = moving(T(x))``. Losses are "lower is better"
(:func:`SHMoAReg.optimise.losses.similarity_loss`: ``-LNCC`` or the MIND-SSC mean squared difference).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from .grid import image_to_tensor, resample
from ..optimise.losses import Similarity, similarity_features, similarity_loss

__all__ = ["evaluation_grid", "centre_of_mass", "centre_of_mass_translation", "choose_start", "compare_with_start",
           "DICE_TOLERANCE", "LOSS_TOLERANCE"]

LOSS_TOLERANCE = 0.02
"""The deformable result may raise the similarity loss by this fraction of ``|start loss|`` before it is rejected."""
DICE_TOLERANCE = 0.005
"""... and lower the mean Dice by this much (when both Dice values exist)."""


def evaluation_grid(grid: sitk.Image, max_size: int = 64) -> sitk.Image:
    """An empty float32 isotropic grid with ``grid``'s origin and direction, inside the span of its voxel
    centres, whose largest side is at most ``max_size`` voxels; ``grid`` itself when it already fits.
    Spacing (mm) = largest extent ``(n - 1) * spacing`` of ``grid`` / ``(max_size - 1)``."""
    if max_size < 2:
        raise ValueError(f"max_size must be >= 2 voxels, got {max_size}")
    if max(grid.GetSize()) <= max_size:
        return grid
    extent = [(n - 1) * s for n, s in zip(grid.GetSize(), grid.GetSpacing())]
    spacing = max(extent) / (max_size - 1)
    coarse = sitk.Image([int(math.floor(e / spacing + 1e-6)) + 1 for e in extent], sitk.sitkFloat32)
    coarse.SetOrigin(grid.GetOrigin())
    coarse.SetDirection(grid.GetDirection())
    coarse.SetSpacing([spacing] * 3)
    return coarse


def centre_of_mass(image: sitk.Image, low_percentile: float = 1.0, max_voxels: int = 2_000_000) -> tuple[float, ...]:
    """The intensity centre of mass of a scalar 3-D ``image`` in LPS mm, weighting each voxel by
    ``max(I - p, 0)`` with ``p`` its ``low_percentile`` (so air in CT, -1000 HU, and background in MR weigh 0).
    Computed on every n-th voxel along each axis so that at most ``max_voxels`` are read. An image
    without contrast (all weights 0) returns its geometric centre."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a scalar 3-D image, got a {image.GetDimension()}-D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    array = sitk.GetArrayViewFromImage(image)
    step = max(1, math.ceil((array.size / max_voxels) ** (1.0 / 3.0)))
    sample = np.asarray(array[::step, ::step, ::step], dtype=np.float64)
    weight = np.clip(sample - np.percentile(sample, low_percentile), 0.0, None)
    total = float(weight.sum())
    if not total > 0:
        return image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in image.GetSize()])
    k = weight.sum(axis=(1, 2)) @ (np.arange(sample.shape[0]) * step) / total  # array axis 0 = ITK index k
    j = weight.sum(axis=(0, 2)) @ (np.arange(sample.shape[1]) * step) / total
    i = weight.sum(axis=(0, 1)) @ (np.arange(sample.shape[2]) * step) / total
    return image.TransformContinuousIndexToPhysicalPoint([float(i), float(j), float(k)])


def centre_of_mass_translation(fixed: sitk.Image, moving: sitk.Image) -> sitk.TranslationTransform:
    """``T(x) = x + t`` with ``t`` = moving centre of mass - fixed centre of mass (LPS mm,
    :func:`centre_of_mass`): maps fixed-space points to moving space, so it moves the fixed image's
    centre of mass onto the moving image's. (``sitk.CenteredTransformInitializer`` with ``MOMENTS`` does
    the same on raw intensities, which lets CT air, -1000 HU, pull the centre.)"""
    offset = np.subtract(centre_of_mass(moving), centre_of_mass(fixed))
    return sitk.TranslationTransform(3, offset.tolist())


def _sampled(image: sitk.Image, grid: sitk.Image, transform: sitk.Transform | None, background: float | None,
             device: torch.device | str) -> torch.Tensor:
    """``(1, 1, D, H, W)`` float32 of ``image o transform`` on ``grid``; outside ``image``: ``background``, or
    the nearest voxel's value when None."""
    return image_to_tensor(resample(image, grid, transform, default=background or 0.0, pixel_type=sitk.sitkFloat32,
                                    extrapolate=background is None), device)


def choose_start(fixed_image: sitk.Image, moving_image: sitk.Image, grid: sitk.Image,
                 candidates: Mapping[str, sitk.Transform | None], normalise: Callable[[torch.Tensor], torch.Tensor],
                 background: float, similarity: Similarity | str, *, max_size: int = 64, margin: float = 0.0,
                 device: torch.device | str = "cpu") -> tuple[str, sitk.Transform | None, dict[str, float]]:
    """The candidate start transform under which the moving image best matches the fixed image.

    Both images are resampled (linear) onto :func:`evaluation_grid` of ``grid`` with at most
    ``2 * max_size`` voxels per side (the moving image under each candidate, ``background`` outside it; the
    fixed image extrapolated by its nearest voxel), normalised with ``normalise`` (the preset's
    normalisation, ``(1, 1, D, H, W) -> (1, 1, D, H, W)``), average-pooled by 2 when that grid is larger
    than ``max_size`` (anti-aliasing), and compared with :func:`start_loss` of ``similarity``
    (lower is better: -global NCC for LNCC, the MIND-SSC loss for MIND). Fixed and moving are treated alike, so the identity of an image with itself
    scores best.

    ``candidates`` maps a name to a fixed -> moving transform (``None`` = identity); give them from the
    simplest to the most elaborate: a later candidate replaces the best so far only when its loss is
    lower by more than ``margin`` (0: plain minimum, ties go to the earlier one). A loss that is not
    finite counts as ``inf``. Returns ``(name, transform, {name: loss})``.
    """
    if not candidates:
        raise ValueError("choose_start needs at least one candidate transform (None = identity)")
    similarity = Similarity(similarity)
    sample = evaluation_grid(grid, 2 * max_size)
    pool = 2 if max(sample.GetSize()) > max_size else 1

    def prepared(tensor: torch.Tensor) -> torch.Tensor:
        tensor = normalise(tensor)
        return tensor if pool == 1 else F.avg_pool3d(tensor, pool, stride=pool, ceil_mode=True)

    losses: dict[str, float] = {}
    with torch.no_grad():
        fixed_t = prepared(_sampled(fixed_image, sample, None, None, device))
        fixed_features = fixed_t if similarity is Similarity.LNCC else similarity_features(fixed_t, similarity)
        for name, transform in candidates.items():
            moving_t = prepared(_sampled(moving_image, sample, transform, background, device))
            loss = start_loss(fixed_features, moving_t, similarity)
            losses[name] = loss if math.isfinite(loss) else math.inf
    best = next(iter(losses))
    for name, loss in losses.items():
        if loss < losses[best] - margin:
            best = name
    return best, candidates[best], losses


def global_ncc(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two images over all their voxels, in [-1, 1]."""
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / ((a * a).sum().sqrt() * (b * b).sum().sqrt()).clamp_min(1e-12))


def start_loss(fixed_features: torch.Tensor, moving_t: torch.Tensor, similarity: Similarity) -> float:
    """How badly a start transform matches (lower is better). For one contrast (LNCC presets) the *global*
    correlation, ``-NCC``: a start is a global alignment, and on a coarse grid a local 7-voxel LNCC can
    prefer the identity over an affine that overlaps the organs much better (seen on inter-subject
    abdominal pairs: identity -0.31 vs affine -0.27 LNCC, while global NCC 0.32 vs 0.39 and Dice 0.18 vs
    0.25 favoured the affine). For MIND presets (different contrasts) the MIND-SSC loss itself."""
    if similarity is Similarity.LNCC:
        return -global_ncc(fixed_features, moving_t)
    return float(similarity_loss(fixed_features, similarity_features(moving_t, similarity), similarity))


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def compare_with_start(before_loss: float, after_loss: float, dice_before: float | None = None,
                       dice_after: float | None = None, *, loss_tolerance: float = LOSS_TOLERANCE,
                       dice_tolerance: float = DICE_TOLERANCE) -> dict:
    """Keep the deformable result unless it is clearly worse than its start.

    ``before_loss`` / ``after_loss``: the similarity loss (lower is better) of the moving image under the
    start transform and under start + deformable field, on one grid. ``dice_before`` / ``dice_after``:
    mean Dice of the same two, or None without labels (non-finite values count as None).
    Rejected (``"kept": "start"``) when the loss rose by more than ``loss_tolerance * |before_loss|``
    (+ 1e-6), or is not finite, or, when both Dice values exist, Dice fell by more than ``dice_tolerance``.
    Returns ``{"kept": "deformable" | "start", "reason": one sentence, "loss_start", "loss_deformable",
    "loss_allowed_increase", "dice_start", "dice_deformable"}``.
    """
    allowed = loss_tolerance * abs(before_loss) + 1e-6
    dice_before, dice_after = _finite(dice_before), _finite(dice_after)
    decision = {"loss_start": float(before_loss), "loss_deformable": float(after_loss),
                "loss_allowed_increase": allowed, "dice_start": dice_before, "dice_deformable": dice_after}
    if not math.isfinite(after_loss):
        return {"kept": "start", "reason": f"the deformable stage gave a non-finite similarity loss ({after_loss}); "
                                           f"kept the start transform", **decision}
    if after_loss > before_loss + allowed:
        return {"kept": "start", "reason": f"the deformable stage raised the similarity loss from {before_loss:.4g} "
                                           f"to {after_loss:.4g} (more than {allowed:.2g}); kept the start transform",
                **decision}
    if dice_before is not None and dice_after is not None and dice_after < dice_before - dice_tolerance:
        return {"kept": "start", "reason": f"the deformable stage lowered the mean Dice from {dice_before:.3f} to "
                                           f"{dice_after:.3f} (by more than {dice_tolerance:g}); kept the start "
                                           f"transform", **decision}
    dice = "" if dice_before is None or dice_after is None else f", mean Dice {dice_before:.3f} -> {dice_after:.3f}"
    return {"kept": "deformable", "reason": f"the deformable stage changed the similarity loss from "
                                            f"{before_loss:.4g} to {after_loss:.4g}{dice}; kept it", **decision}
