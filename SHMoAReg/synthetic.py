"""Synthetic data with known answers: labelled phantoms and smooth analytic deformations.

Used by ``shmoareg demo``, the tests and the benchmarks. A known deformation is a
SimpleITK cubic B-spline transform ``T(x) = x + B(x)`` (LPS mm) with random
coefficients, so its displacement is known exactly at every point.

To make a pair with a known answer from one image ``I``: ``moving = I`` and
``fixed = I o T`` (``sitk.Resample(I, I, T)``); the true fixed->moving transform of
that pair is then ``T`` itself (see :mod:`SHMoAReg.conventions`).
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = ["smooth_deformation", "deform", "phantom", "displacement_of"]


def smooth_deformation(reference: sitk.Image, max_displacement_mm: float, mesh_size: int = 4,
                       seed: int = 0) -> sitk.BSplineTransform:
    """A random smooth B-spline deformation over ``reference``'s extent.

    Coefficients are drawn N(0, 1) and scaled so that the largest displacement on
    ``reference``'s grid is ``max_displacement_mm``.
    """
    rng = np.random.default_rng(seed)
    transform = sitk.BSplineTransformInitializer(reference, [mesh_size] * 3, 3)
    parameters = rng.standard_normal(len(transform.GetParameters()))
    transform.SetParameters(parameters.tolist())
    peak = np.linalg.norm(displacement_of(transform, reference), axis=-1).max()
    transform.SetParameters((parameters * (max_displacement_mm / max(peak, 1e-12))).tolist())
    return transform


def displacement_of(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    """``T(x) - x`` in LPS mm at every voxel of ``reference`` as a ``(D, H, W, 3)`` array."""
    field = sitk.TransformToDisplacementField(transform, sitk.sitkVectorFloat64, reference.GetSize(),
                                              reference.GetOrigin(), reference.GetSpacing(), reference.GetDirection())
    return sitk.GetArrayFromImage(field)


def deform(image: sitk.Image, transform: sitk.Transform, labels: bool = False) -> sitk.Image:
    """``image o T`` on ``image``'s own grid (nearest neighbour for label maps)."""
    interpolator = sitk.sitkNearestNeighbor if labels else sitk.sitkLinear
    return sitk.Resample(image, image, transform, interpolator, 0.0 if labels else float(_background(image)))


def _background(image: sitk.Image) -> float:
    return float(np.percentile(sitk.GetArrayViewFromImage(image), 1))


def phantom(size: tuple[int, int, int] = (72, 64, 56), spacing: tuple[float, float, float] = (3.0, 3.0, 3.0),
            seed: int = 0, direction: tuple[float, ...] | None = None,
            origin: tuple[float, float, float] = (0.0, 0.0, 0.0)) -> tuple[sitk.Image, sitk.Image]:
    """An abdomen-like labelled phantom: a body with five organ ellipsoids, texture and noise.

    Returns ``(image, labels)``; image intensities are CT-like (HU), labels 1..5.
    ``size`` is (x, y, z) in voxels as ITK orders it.
    """
    rng = np.random.default_rng(seed)
    nx, ny, nz = size
    z, y, x = np.meshgrid(np.linspace(-1, 1, nz), np.linspace(-1, 1, ny), np.linspace(-1, 1, nx), indexing="ij")
    hu = np.full((nz, ny, nx), -1000.0, dtype=np.float32)
    labels = np.zeros((nz, ny, nx), dtype=np.uint8)
    body = (x / 0.9) ** 2 + (y / 0.75) ** 2 < 1
    hu[body] = -80.0
    organs = [  # centre (x, y, z), radii, HU
        ((-0.35, -0.1, 0.1), (0.32, 0.3, 0.45), 60.0),
        ((0.4, -0.2, 0.2), (0.18, 0.15, 0.3), 45.0),
        ((-0.3, 0.35, -0.3), (0.12, 0.12, 0.25), 150.0),
        ((0.35, 0.35, -0.3), (0.12, 0.12, 0.25), 130.0),
        ((0.0, 0.45, 0.0), (0.08, 0.08, 0.8), 400.0),
    ]
    for label, (centre, radii, value) in enumerate(organs, start=1):
        jitter = rng.uniform(-0.03, 0.03, 3)
        inside = sum(((c - m - j) / r) ** 2 for c, m, j, r in zip((x, y, z), centre, jitter, radii)) < 1
        hu[inside & body] = value
        labels[inside & body] = label
    texture = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(
        sitk.GetImageFromArray(rng.standard_normal(hu.shape).astype(np.float32)), 2.0))
    hu = hu + 40.0 * texture / (texture.std() + 1e-6) * body + rng.normal(0, 10, hu.shape)
    image, label_image = sitk.GetImageFromArray(hu.astype(np.float32)), sitk.GetImageFromArray(labels)
    for img in (image, label_image):
        img.SetSpacing(spacing)
        img.SetOrigin(origin)
        if direction is not None:
            img.SetDirection(direction)
    return image, label_image
