"""The known-deformation scenario, shared by the pytest suite and the module's test inside Slicer.

A textured volume with a rotated, anisotropic grid is deformed by a known smooth
field ``u`` (``T(x) = x + u(x)``, fixed -> moving, LPS mm); the Logic registers it
back, and the scenario measures, through MRML:

* ``hardening_error``: Slicer hardening the output transform on a copy of the moving
  volume vs SimpleITK resampling through the engine's ``displacement.nii.gz``
  (relative RMS; ~1e-4 when the RAS/LPS handling and the transform direction are right);
* ``field_error_mm`` vs ``field_mm``: mean distance between the grid transform's
  displacement and the known field, and the field's mean length (interior voxels);
* ``rms_before`` / ``rms_after``: image RMS difference to the fixed image.

This module imports only numpy and SimpleITK at the top (the fake engine in
``Testing/`` loads it by file path); the scenario imports ``slicer`` when it runs.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

__all__ = [
    "AMPLITUDE_MM",
    "ROTATION",
    "known_displacement_lps",
    "field_frame",
    "grid_points_lps",
    "known_displacement_image",
    "textured_array",
    "make_image",
    "known_pair",
    "hardening_error",
    "run_known_deformation",
]

AMPLITUDE_MM = np.array([2.5, -2.0, 1.5])
"""Peak displacement per LPS axis of the known field (mm)."""
ROTATION = sitk.VersorTransform((0.3, 0.2, 0.9), 0.5).GetMatrix()
"""A non-identity direction matrix (LPS) for the test grids."""


def known_displacement_lps(
    points: np.ndarray, centre: np.ndarray, scale_mm: float, amplitude_mm: np.ndarray = AMPLITUDE_MM
) -> np.ndarray:
    """The known field ``u(x)`` (LPS mm) at ``(N, 3)`` LPS points: smooth, at most ``amplitude_mm`` per axis."""
    q = (np.asarray(points, dtype=float) - centre) / scale_mm
    a = np.asarray(amplitude_mm, dtype=float)
    return np.stack(
        [
            a[0] * np.sin(np.pi * q[:, 1]) * np.cos(0.5 * np.pi * q[:, 2]),
            a[1] * np.sin(np.pi * q[:, 2]) * np.cos(0.5 * np.pi * q[:, 0]),
            a[2] * np.sin(np.pi * q[:, 0]) * np.cos(0.5 * np.pi * q[:, 1]),
        ],
        axis=-1,
    )


def field_frame(image: sitk.Image) -> tuple[np.ndarray, float]:
    """Centre (LPS) and length scale (mm) of the known field on ``image``'s grid."""
    size = np.array(image.GetSize(), dtype=float)
    centre = np.array(image.TransformContinuousIndexToPhysicalPoint(((size - 1) / 2).tolist()))
    return centre, float(np.max((size - 1) * np.array(image.GetSpacing())) / 2)


def grid_points_lps(image: sitk.Image) -> np.ndarray:
    """LPS positions of every voxel, shape ``(k, j, i, 3)`` (array order)."""
    k, j, i = np.meshgrid(*(np.arange(n, dtype=float) for n in image.GetSize()[::-1]), indexing="ij")
    matrix = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return np.stack([i, j, k], axis=-1) @ matrix.T + np.array(image.GetOrigin())


def known_displacement_image(fixed: sitk.Image, amplitude_mm: np.ndarray = AMPLITUDE_MM) -> sitk.Image:
    """The known field sampled on the fixed grid as a vector image (LPS mm)."""
    points = grid_points_lps(fixed)
    centre, scale = field_frame(fixed)
    vectors = known_displacement_lps(points.reshape(-1, 3), centre, scale, amplitude_mm).reshape(points.shape)
    field = sitk.GetImageFromArray(vectors, isVector=True)
    field.CopyInformation(fixed)
    return field


def textured_array(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """Smoothed noise with CT soft-tissue-like contrast: texture everywhere, so the field is identifiable."""
    noise = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    smooth = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(sitk.GetImageFromArray(noise), 1.5))
    return (100 * smooth / smooth.std()).astype(np.float32)


def make_image(array: np.ndarray, spacing=(2.0, 1.8, 2.2), origin=(10.0, -20.0, 5.0), direction=ROTATION) -> sitk.Image:
    """An image of ``array`` (k, j, i) on a rotated, anisotropic grid."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def known_pair(
    fixed: sitk.Image, amplitude_mm: np.ndarray = AMPLITUDE_MM, labels: sitk.Image | None = None
) -> tuple[sitk.Image, sitk.Image, sitk.Image | None]:
    """(moving image, known field, moving labels) with ``moving(T(x)) = fixed(x)`` for ``T(x) = x + u(x)``.

    The moving image is the fixed one resampled through the inverse field (``labels``,
    on the fixed grid, likewise with nearest-neighbour interpolation).
    """
    field = known_displacement_image(fixed, amplitude_mm)
    inverse = sitk.DisplacementFieldTransform(sitk.InvertDisplacementField(field, maximumNumberOfIterations=50))
    background = float(sitk.GetArrayViewFromImage(fixed).min())
    moving = sitk.Resample(fixed, fixed, inverse, sitk.sitkLinear, background)
    moving_labels = None if labels is None else sitk.Resample(labels, labels, inverse, sitk.sitkNearestNeighbor, 0)
    return moving, field, moving_labels


def hardening_error(scene, moving, transform_node, itk_transform: sitk.Transform, field_grid: sitk.Image) -> float:
    """Relative RMS difference of Slicer's hardening vs SimpleITK's resampling through ``itk_transform``.

    A copy of ``moving`` is put under ``transform_node`` and hardened with Slicer's
    transform logic (the copy is removed again). Compared where x lies on
    ``field_grid`` (outside it ITK uses a zero displacement, VTK the nearest one)
    and T(x) inside the moving image (the toolkits pad differently).
    """
    import slicer

    from .conversion import sitk_image_from_volume, update_volume_from_sitk

    moving_image = sitk_image_from_volume(moving)
    copy = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "SHMoAReg hardening check")
    try:
        update_volume_from_sitk(copy, moving_image)
        copy.SetAndObserveTransformNodeID(transform_node.GetID())
        if not slicer.vtkSlicerTransformLogic.hardenTransform(copy):
            raise RuntimeError("Slicer could not harden the transform")
        hardened = sitk_image_from_volume(copy)
    finally:
        scene.RemoveNode(copy)
    expected = sitk.Resample(moving_image, hardened, itk_transform, sitk.sitkLinear, 0.0)

    def ones(image: sitk.Image) -> sitk.Image:
        scalar = image if image.GetNumberOfComponentsPerPixel() == 1 else sitk.VectorIndexSelectionCast(image, 0)
        return sitk.Cast(scalar * 0 + 1, sitk.sitkUInt8)

    on_field = sitk.Resample(ones(field_grid), hardened, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    maps_inside = sitk.Resample(ones(moving_image), hardened, itk_transform, sitk.sitkNearestNeighbor, 0)
    mask = sitk.GetArrayFromImage(sitk.BinaryErode(on_field * maps_inside, [1, 1, 1])).astype(bool)
    if mask.mean() < 0.3:
        raise RuntimeError(f"only {mask.mean():.0%} of the hardened grid can be compared")
    difference = (sitk.GetArrayFromImage(hardened) - sitk.GetArrayFromImage(expected))[mask]
    signal = sitk.GetArrayFromImage(expected)[mask]
    return float(np.sqrt(np.mean(difference**2)) / np.sqrt(np.mean(signal**2)))


def run_known_deformation(logic, shape: tuple[int, int, int] = (32, 36, 40), **options) -> dict[str, float]:
    """Register a textured volume deformed by the known field with ``logic``; return the figures.

    ``options`` go to ``logic.register`` (e.g. ``iterations=20, affine=False, device="cpu"``).
    The volumes and results are left in ``logic.scene``.
    """
    from pathlib import Path

    from .conversion import displacement_from_grid_transform, volume_node_from_sitk

    scene = logic.scene
    fixed_image = make_image(textured_array(shape))
    moving_image, field, _ = known_pair(fixed_image)
    nodes = [volume_node_from_sitk(scene, image, name) for image, name in
             ((fixed_image, "known deformation fixed"), (moving_image, "known deformation moving"))]
    keep_temp = options.pop("keep_temp", False)
    result = logic.register(nodes[0], nodes[1], keep_temp=True, **options)
    try:
        displacement = sitk.ReadImage(str(Path(result.output_dir) / "displacement.nii.gz"))
        total = sitk.DisplacementFieldTransform(sitk.Cast(displacement, sitk.sitkVectorFloat64))
        relative = hardening_error(scene, nodes[1], result.transform, total, fixed_image)
    finally:
        if not keep_temp:
            import shutil

            shutil.rmtree(Path(result.output_dir).parent, ignore_errors=True)
    inside = (slice(4, -4),) * 3
    estimated = sitk.GetArrayFromImage(displacement_from_grid_transform(result.transform))
    truth = sitk.GetArrayFromImage(field)
    warped = sitk.GetArrayFromImage(sitk.Resample(moving_image, fixed_image, total, sitk.sitkLinear, 0.0))
    fixed_array, moving_array = sitk.GetArrayFromImage(fixed_image), sitk.GetArrayFromImage(moving_image)
    return {
        "hardening_error": relative,
        "field_error_mm": float(np.linalg.norm(estimated - truth, axis=-1)[inside].mean()),
        "field_mm": float(np.linalg.norm(truth, axis=-1)[inside].mean()),
        "rms_before": float(np.sqrt(np.mean((moving_array - fixed_array)[inside] ** 2))),
        "rms_after": float(np.sqrt(np.mean((warped - fixed_array)[inside] ** 2))),
        "folding_fraction": float(result.report.get("metrics", {}).get("folding_fraction", float("nan"))),
    }
