"""The working grid and resampling onto it.

The network and the optimiser work on a grid that covers the fixed image: same
origin (centre of fixed voxel 0) and direction, isotropic ``spacing``, and enough
voxels that its last voxel centre lies at or beyond the fixed image's last voxel
centre. A displacement field on this grid therefore interpolates (never
extrapolates) at every fixed voxel.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk
import torch

from .grid_rules import working_grid_size

__all__ = ["working_grid", "resample", "image_to_tensor", "tensor_to_array", "coarse_grid"]


def working_grid(fixed: sitk.Image, spacing: float) -> sitk.Image:
    """An empty float32 image on the working grid of ``fixed`` with isotropic ``spacing`` mm."""
    size = working_grid_size(fixed.GetSize(), fixed.GetSpacing(), spacing)  # raises ValueError if spacing <= 0
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetOrigin(fixed.GetOrigin())
    grid.SetDirection(fixed.GetDirection())
    grid.SetSpacing([float(spacing)] * 3)
    return grid


def coarse_grid(grid: sitk.Image, factor: int, size: tuple[int, int, int]) -> sitk.Image:
    """The grid of a tensor that was downsampled by ``factor`` (cell-centred, like avg-pooling).

    ``size`` is the coarse tensor's (D, H, W); coarse voxel ``n`` is centred on fine
    index ``n * factor + (factor - 1) / 2``.
    """
    coarse = sitk.Image([int(s) for s in size[::-1]], sitk.sitkFloat32)
    coarse.SetSpacing([s * factor for s in grid.GetSpacing()])
    coarse.SetDirection(grid.GetDirection())
    shift = [(factor - 1) / 2.0] * 3
    coarse.SetOrigin(grid.TransformContinuousIndexToPhysicalPoint(shift))
    return coarse


def resample(image: sitk.Image, reference: sitk.Image, transform: sitk.Transform | None = None,
             interpolator: int = sitk.sitkLinear, default: float = 0.0, pixel_type: int | None = None,
             extrapolate: bool = False) -> sitk.Image:
    """``image(T(x))`` for every voxel ``x`` of ``reference`` (identity ``T`` when None); outside ``image``:
    ``default``, or with ``extrapolate`` the nearest voxel's value (no artificial edge, e.g. in a field)."""
    transform = transform if transform is not None else sitk.Transform(3, sitk.sitkIdentity)
    out_type = pixel_type if pixel_type is not None else image.GetPixelID()
    if not extrapolate:
        return sitk.Resample(image, reference, transform, interpolator, default, out_type)
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(reference)
    resampler.SetTransform(transform)
    resampler.SetInterpolator(interpolator)
    resampler.SetOutputPixelType(out_type)
    resampler.SetUseNearestNeighborExtrapolator(True)
    return resampler.Execute(image)


def image_to_tensor(image: sitk.Image, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(1, 1, D, H, W)`` float32 tensor of a scalar image (array axes = ITK k, j, i)."""
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    return torch.from_numpy(array)[None, None].to(device)


def tensor_to_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().to("cpu", torch.float32).numpy()
