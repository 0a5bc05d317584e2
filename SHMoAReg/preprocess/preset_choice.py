"""``--preset auto``: choose a preset from what the two images look like (torch-free: the Slicer module uses it).

The rules, on a subsample of each image (every n-th voxel along each axis, at most ~250 000 voxels, so a
few milliseconds):

* an image **looks like CT in HU** when its 1st percentile is below ``AIR_BELOW_HU`` (air, -1000 HU, or
  the scanner's padding) and at least ``SOFT_TISSUE_SHARE`` of its voxels lie in ``SOFT_TISSUE_HU``
  (fat to contrast-enhanced soft tissue). Units are judged by the values, not the pixel type.
* both CT -> ``abdomen-ct`` (the CT preset; its HU window suits any body part);
  one CT -> ``mr-ct`` (MIND-SSC, modality independent);
  neither -> ``brain-mri`` when both fields of view look like a head, else ``same-modality``.
* a field of view **looks like a head** when the non-background region (above 10 % of the 1st-99.5th
  percentile range) spans between ``HEAD_MIN_EXTENT_MM`` and ``HEAD_MAX_EXTENT_MM`` along every image axis and is not elongated
  (largest / smallest span < ``HEAD_MAX_ELONGATION``). Spans are those of the 0.5th-99.5th percentile
  of the foreground voxels' indices times the spacing, so a few stray voxels do not count.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

__all__ = ["AUTO", "CHOICES", "ImageSummary", "summarise_image", "choose_preset", "resolve_preset", "AIR_BELOW_HU",
           "SOFT_TISSUE_HU", "SOFT_TISSUE_SHARE", "HEAD_MAX_EXTENT_MM", "HEAD_MIN_EXTENT_MM", "HEAD_MAX_ELONGATION"]

AUTO = "auto"
CHOICES = ("abdomen-ct", "mr-ct", "brain-mri", "same-modality")  # names in SHMoAReg.preprocess.presets.PRESETS (tested)
AIR_BELOW_HU = -500.0
SOFT_TISSUE_HU = (-200.0, 300.0)
SOFT_TISSUE_SHARE = 0.10
HEAD_MAX_EXTENT_MM = 260.0
HEAD_MIN_EXTENT_MM = 100.0  # a smaller object (a phantom, an organ crop) is not a head
HEAD_MAX_ELONGATION = 1.6
FOREGROUND_LEVEL = 0.10  # of the way from the 1st to the 99.5th percentile
SAMPLE_VOXELS = 250_000


@dataclass(frozen=True)
class ImageSummary:
    """What :func:`choose_preset` looks at in one image."""

    low_percentile: float  # 1st percentile of the intensities
    soft_tissue_share: float  # fraction of voxels in SOFT_TISSUE_HU
    extent_mm: tuple[float, float, float]  # span of the foreground along the image's index axes i, j, k
    looks_like_ct: bool
    looks_like_head: bool


def _sample(image: sitk.Image) -> tuple[np.ndarray, int]:
    """Every ``step``-th voxel along each axis (array order k, j, i), as float64, and ``step``."""
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a scalar 3-D image, got a {image.GetDimension()}-D image with "
                         f"{image.GetNumberOfComponentsPerPixel()} components per voxel")
    array = sitk.GetArrayViewFromImage(image)
    step = max(1, math.ceil((array.size / SAMPLE_VOXELS) ** (1.0 / 3.0)))
    return np.asarray(array[::step, ::step, ::step], dtype=np.float64), step


def _foreground_extent(sample: np.ndarray, step: int, spacing: tuple[float, ...]) -> tuple[float, float, float]:
    """Span (mm) along index axes i, j, k of the voxels above ``FOREGROUND_LEVEL`` of the intensity range."""
    low, high = np.percentile(sample, [1.0, 99.5])
    inside = np.argwhere(sample > low + FOREGROUND_LEVEL * (high - low)) if high > low else np.empty((0, 3))
    if len(inside) == 0:
        return (0.0, 0.0, 0.0)
    first, last = np.percentile(inside, [0.5, 99.5], axis=0)  # array axes k, j, i
    spans = ((last - first) + 1.0) * step
    return tuple(float(n * s) for n, s in zip(spans[::-1], spacing))


def summarise_image(image: sitk.Image) -> ImageSummary:
    """The intensity and field-of-view facts of a scalar 3-D ``image`` that decide the preset."""
    sample, step = _sample(image)
    low = float(np.percentile(sample, 1.0))
    share = float(np.mean((sample >= SOFT_TISSUE_HU[0]) & (sample <= SOFT_TISSUE_HU[1])))
    extent = _foreground_extent(sample, step, image.GetSpacing())
    head = (HEAD_MIN_EXTENT_MM <= min(extent) and max(extent) <= HEAD_MAX_EXTENT_MM
            and max(extent) / min(extent) < HEAD_MAX_ELONGATION)
    return ImageSummary(low, share, extent, low < AIR_BELOW_HU and share >= SOFT_TISSUE_SHARE, head)


def _describe(summary: ImageSummary) -> str:
    span = " x ".join(f"{e:.0f}" for e in summary.extent_mm)
    if summary.looks_like_ct:
        return f"CT in HU (1st percentile {summary.low_percentile:.0f}, {100 * summary.soft_tissue_share:.0f} % " \
               f"of voxels in [{SOFT_TISSUE_HU[0]:.0f}, {SOFT_TISSUE_HU[1]:.0f}] HU)"
    return f"not CT in HU, {'head-like' if summary.looks_like_head else 'not head-like'} field of view {span} mm"


def choose_preset(fixed: sitk.Image, moving: sitk.Image) -> tuple[str, str]:
    """A preset name from :data:`SHMoAReg.preprocess.presets.PRESETS` for this pair, and a one-sentence reason.

    See the module docstring for the rules. Raises ValueError for an image that is not scalar 3-D.
    """
    a, b = summarise_image(fixed), summarise_image(moving)
    facts = f"fixed: {_describe(a)}; moving: {_describe(b)}"
    if a.looks_like_ct and b.looks_like_ct:
        name, why = "abdomen-ct", "both images look like CT in HU"
    elif a.looks_like_ct or b.looks_like_ct:
        name, why = "mr-ct", "one image looks like CT in HU and the other does not"
    elif a.looks_like_head and b.looks_like_head:
        name, why = "brain-mri", "neither image looks like CT and both fields of view look like a head"
    else:
        name, why = "same-modality", "neither image looks like CT and not both fields of view look like a head"
    return name, f"preset {name}: {why} ({facts})."


def resolve_preset(name: str, fixed: sitk.Image, moving: sitk.Image) -> tuple[str, str | None]:
    """``(name, None)`` for a named preset; for :data:`AUTO`, :func:`choose_preset`'s ``(name, reason)``."""
    if str(name).strip().lower() == AUTO:
        return choose_preset(fixed, moving)
    return name, None
