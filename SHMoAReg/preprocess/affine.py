"""Affine pre-alignment with SimpleITK (fixed -> moving, the ITK resampling direction)."""
from __future__ import annotations

import math
from collections.abc import Callable

import SimpleITK as sitk

from ..errors import RegistrationCancelled

__all__ = ["affine_prealign", "affine_spacing", "AFFINE_MAX_VOXELS"]

AFFINE_MAX_VOXELS = 2**17
"""Most voxels of the affine stage's finest level: a whole abdomen (384x320x512 mm) is aligned at 7.9 mm
instead of 4 mm, in 2.5 s instead of 22 s, with the same organ Dice after the affine (0.319 vs 0.317, mean of
4 inter-subject pairs; 4 or 5 mm with 25,000 samples per level: 0.313, 0.318 in 4-6 s); an affine has 12
parameters, and 130,000 voxels determine them. On a smooth phantom the coarse affine is less exact (95 % of
the body within 7 mm of a known affine, against 4 mm): the deformable stage takes up the rest."""

MIN_VOXELS_PER_AXIS = 16  # at the finest affine level; the coarsest level keeps at least 8


def affine_spacing(fixed: sitk.Image, moving: sitk.Image, requested: float | None = None,
                   finest: float = 4.0) -> float:
    """The affine stage's grid spacing in mm: ``requested``, else ``finest`` or coarser so that the larger of the
    two images holds at most :data:`AFFINE_MAX_VOXELS` voxels; then, for small images (a few centimetres),
    finer so that every axis keeps ``MIN_VOXELS_PER_AXIS`` voxels, but never finer than the images."""
    if requested is None:
        volume = max(math.prod(n * s for n, s in zip(image.GetSize(), image.GetSpacing())) for image in (fixed, moving))
        requested = max(finest, (volume / AFFINE_MAX_VOXELS) ** (1 / 3))
    extent = min(n * s for image in (fixed, moving) for n, s in zip(image.GetSize(), image.GetSpacing()))
    finest_image = min(min(image.GetSpacing()) for image in (fixed, moving))
    return max(min(requested, extent / MIN_VOXELS_PER_AXIS), finest_image)


def affine_prealign(fixed: sitk.Image, moving: sitk.Image, spacing: float | None = None,
                    progress: Callable[[float, str], None] | None = None,
                    cancelled: Callable[[], bool] | None = None, seed: int = 0) -> sitk.AffineTransform:
    """Mattes mutual information, centre-of-geometry start, up to 3 levels, on images resampled to ``spacing`` mm
    (default :func:`affine_spacing`); reproducible: the same inputs and ``seed`` give the same transform bit for bit.

    Runs ITK single-threaded (restored afterwards): Mattes mutual information adds up its per-thread
    sums in a varying order, so a multi-threaded affine differs in the last bits from run to run
    (~1e-12) and so would every output; the metric follows ITK's global thread count, not the
    registration method's. One thread costs little on these coarse images. The smoothing and resampling
    of the full-size images before it (the same result with any thread count) keep all threads.
    """
    spacing = affine_spacing(fixed, moving, spacing)
    fixed_small, moving_small = (_coarse(image, spacing) for image in (fixed, moving))
    previous = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    try:
        return _affine(fixed_small, moving_small, progress, cancelled, seed)
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(previous)


def _affine(fixed_small: sitk.Image, moving_small: sitk.Image, progress: Callable[[float, str], None] | None,
            cancelled: Callable[[], bool] | None, seed: int) -> sitk.AffineTransform:
    """Returns an affine transform mapping fixed-space points to moving-space points, from the two images already
    smoothed and resampled to the affine grid (:func:`_coarse`). Small images get fewer pyramid levels so every
    level keeps enough voxels.
    """
    shrink = _shrink_factors(min(*fixed_small.GetSize(), *moving_small.GetSize()))
    levels = len(shrink)
    initial = sitk.CenteredTransformInitializer(fixed_small, moving_small, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # SimpleITK reads a sampling seed of 0 as "seed from the wall clock" (sitkWallClock): shift the user's seed
    # so that every seed, the default 0 included, gives the same samples in every run.
    method.SetMetricSamplingPercentage(0.2, seed % (2**32 - 1) + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-3, numberOfIterations=100,
                                                    gradientMagnitudeTolerance=1e-6)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([{4: 2, 2: 1, 1: 0}[f] for f in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)

    def on_iteration() -> None:
        if cancelled is not None and cancelled():
            method.StopRegistration()
        if progress is not None:
            progress(min(method.GetOptimizerIteration() / 100.0, 1.0), f"affine level {method.GetCurrentLevel() + 1}/{levels}")

    method.AddCommand(sitk.sitkIterationEvent, on_iteration)
    result = method.Execute(fixed_small, moving_small)
    if cancelled is not None and cancelled():
        raise RegistrationCancelled("affine pre-alignment cancelled")
    composite = sitk.CompositeTransform(result)
    return sitk.AffineTransform(composite.GetBackTransform() if composite.GetNumberOfTransforms() else result)


def _shrink_factors(smallest_size: int) -> list[int]:
    return [f for f in (4, 2, 1) if smallest_size // f >= 8 or f == 1]


def _coarse(image: sitk.Image, spacing: float) -> sitk.Image:
    size = [max(2, int(round(n * s / spacing))) for n, s in zip(image.GetSize(), image.GetSpacing())]
    reference = sitk.Image(size, sitk.sitkFloat32)
    reference.SetOrigin(image.GetOrigin())
    reference.SetDirection(image.GetDirection())
    reference.SetSpacing([n * s / m for n, s, m in zip(image.GetSize(), image.GetSpacing(), size)])
    smoothed = sitk.SmoothingRecursiveGaussian(image, spacing / 2.0)
    return sitk.Resample(smoothed, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
