"""The box the network and instance optimisation run on: the content of the pair plus a margin.

The shipped weights were trained on label maps cropped to their labels plus 4 voxels of the training grid
(:mod:`SHMoAReg.training.dataset`; 24 mm at 6 mm), and the network's convolution blocks normalise each
feature map by its mean and spread over the whole input (``InstanceNorm3d``). On a grid that is mostly empty
those statistics are the background's, not the anatomy's: on the whole 192x160x256 abdominal grid, where the
13 organs fill 5 % of the voxels, the abdominal weights alone reached Dice 0.470 and the network + its short
instance optimisation 0.543, below instance optimisation alone (0.552); on the box below, 0.485 and 0.572
(4 held-out pairs; with half or twice the margin 0.553 and 0.552: docs/training.md).

A voxel is *content* where either normalised image (fixed, or moving after the start transform; both in [0, 1],
:mod:`SHMoAReg.preprocess.normalize`), and its 3x3x3 mean (no isolated noise voxels), exceed
:data:`CONTENT_THRESHOLD`: soft tissue and brighter in CT's [-300, 500] HU window (fat, -100 HU, is 0.25;
air and lung are 0), tissue in a percentile-scaled MR. The box spans the content of both images, grown by
:data:`MARGIN_VOXELS` of the network's grid on every side (the training crop's margin: 24 mm for ``abdomen-ct``'s
6 mm, 16 mm for ``brain-mri``'s 4 mm) and clipped to the grid; without content it is the whole grid. Shapes are ``(1, C, D, H, W)`` and boxes are
slices over ``(D, H, W)`` (index order k, j, i of :mod:`SHMoAReg.conventions`).

Instance optimisation runs on such a box too, with :data:`OPTIMISATION_MARGIN_MM` around the content (and at
least the working grid's minimum size), and its voxel budget (:data:`SHMoAReg.preprocess.grid_rules.MAX_WORKING_VOXELS`)
is spent on that box rather than on the whole field of view (:func:`SHMoAReg.pipeline.stages.working_pair`): the
synthetic whole 192x160x256 abdomens at 2 mm, whose organs and 24 mm around them are about half the voxels, are
optimised at 3.1-3.3 mm instead of 4.0 mm, as the same pairs cropped to their organs are.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import SimpleITK as sitk
import torch
import torch.nn.functional as F

__all__ = ["CONTENT_THRESHOLD", "MARGIN_VOXELS", "OPTIMISATION_MARGIN_MM", "Box", "content_box", "margin_voxels",
           "crop", "uncrop", "box_grid"]

CONTENT_THRESHOLD = 0.2
"""Normalised intensity above which a voxel (and its 3x3x3 mean) is content."""
MARGIN_VOXELS = 4
"""Margin around the content, in voxels of the grid: the margin :mod:`SHMoAReg.training.dataset` leaves around the
labels when it crops the training label maps, so the network sees the field of view it was trained on."""
OPTIMISATION_MARGIN_MM = 24.0
"""Margin around the content for instance optimisation, in mm: room for the field and for the similarity's windows
around the outermost structures (the benchmark's cropped suites keep 24 mm around the organs too)."""

Box = tuple[slice, slice, slice]


def content_box(*images: torch.Tensor, margin: int = MARGIN_VOXELS, threshold: float = CONTENT_THRESHOLD,
                min_size: int = 1) -> Box:
    """The box over ``(D, H, W)`` around the content of ``images`` (``(1, 1, D, H, W)`` normalised images on one
    grid: the fixed image, and the moving one after the start transform), grown by ``margin`` voxels and clipped
    to the grid, then, where it is still shorter than ``min_size`` voxels (a small object on a coarse grid), grown
    about its centre to that size within the grid."""
    if not images or any(image.ndim != 5 or image.shape != images[0].shape for image in images):
        raise ValueError(f"expected (1, 1, D, H, W) images of one shape, got {[tuple(i.shape) for i in images]}")
    size = images[0].shape[2:]
    with torch.no_grad():
        content = torch.zeros(size, dtype=torch.bool, device=images[0].device)
        for image in images:
            mean = F.avg_pool3d(image.float(), 3, stride=1, padding=1, count_include_pad=False)
            content |= ((image > threshold) & (mean > threshold))[0, 0]
        found = torch.nonzero(content)
    if found.numel() == 0:
        return tuple(slice(0, n) for n in size)
    lower = (found.min(dim=0).values - margin).clamp(min=0).tolist()
    upper = [min(int(v) + margin + 1, n) for v, n in zip(found.max(dim=0).values.tolist(), size)]
    box = []
    for a, b, n in zip(lower, upper, size):
        length = max(b - a, min(min_size, n))
        start = min(max(0, (a + b - length) // 2), n - length)  # a itself when nothing was added
        box.append(slice(int(start), int(start + length)))
    return tuple(box)


def margin_voxels(margin_mm: float, spacing: float) -> int:
    """``margin_mm`` in whole voxels of ``spacing`` mm, rounded up."""
    return math.ceil(margin_mm / spacing - 1e-6)


def crop(image: torch.Tensor, box: Box) -> torch.Tensor:
    """``(B, C, D, H, W)`` -> ``(B, C, d, h, w)``: the part inside ``box``."""
    return image[(..., *box)]


def uncrop(field: torch.Tensor, box: Box, size: Sequence[int]) -> torch.Tensor:
    """A field ``(B, C, d, h, w)`` on ``box`` continued to the whole grid ``size`` (``(B, C, D, H, W)``) by the
    values on the box's faces (replicate padding; voxel units are the same on both, the spacing being one)."""
    pad: list[int] = []
    for piece, n in zip(reversed(box), reversed(tuple(size))):
        pad += [piece.start, n - piece.stop]
    if not any(pad):
        return field
    return F.pad(field, pad, mode="replicate")


def box_grid(grid: sitk.Image, box: Box) -> sitk.Image:
    """The part of ``grid`` (a SimpleITK image whose array is ``(D, H, W)``) inside ``box``: same spacing and
    direction, origin at the box's first voxel."""
    return sitk.RegionOfInterest(grid, [piece.stop - piece.start for piece in reversed(box)],
                                 [piece.start for piece in reversed(box)])  # SimpleITK order (i, j, k)
