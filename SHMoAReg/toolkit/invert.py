"""The inverse of a registration transform (``shmoareg invert``, ``register --inverse``).

``T`` maps fixed-space points to moving-space points; ``T^-1`` maps moving-space
points (landmarks drawn on the moving image) back to the fixed image, and resamples
the *fixed* image onto the moving grid. ``T`` is taken apart into its components
(:mod:`.components`) and each is inverted, in reverse order:

* linear transforms (the affine pre-alignment): exactly, ``A.GetInverse()``;
* a displacement field ``D(x) = x + u(x)`` from a **diffeomorphic** run, when its
  stationary velocity ``v`` is known (``velocity.nii.gz``): exactly, ``D^-1 = exp(-v)``,
  integrated with the same scaling and squaring as the registration;
* any other displacement field: fixed-point iteration on the field's own grid,
  ``w <- -u(y + w(y))``, until the update is below ``tolerance_mm``;
* other non-linear transforms (e.g. B-splines) are first sampled on ``reference``.

Accuracy is reported as the residual ``|T(T^-1(y)) - y|`` in mm over the voxels of
``reference``, normally the moving image (:mod:`.residual`).
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from ..conventions import mm_to_voxel, voxel_to_mm
from ..errors import InputError
from ..transforms.field_transform import field_image, transform_to_displacement
from ..optimise.warp import DEFAULT_INTEGRATION_STEPS, integrate_velocity, warp_image
from .components import assemble, components, grid_of, is_displacement_field, read_grid
from .convert import TransformFormat, read_transform_file, write_transform_file
from .residual import inverse_residual, residual_grid

__all__ = ["Inversion", "invert_transform", "invert_file", "exponential", "invert_field", "read_velocity",
           "DEFAULT_INTEGRATION_STEPS"]


@dataclass
class Inversion:
    """``transform`` maps moving-space points to fixed-space points (LPS mm)."""

    transform: sitk.Transform
    method: str  # "linear", "velocity" (exact, exp(-v)) or "fixed-point"
    iterations: int  # fixed-point iterations (0 otherwise)
    residual_mm: dict  # mean / p99 / max of |T(T^-1(y)) - y| and the number of voxels measured

    def summary(self) -> str:
        r = self.residual_mm
        how = {"velocity": "exact, from the negative velocity field", "linear": "exact (linear)",
               "fixed-point": f"fixed-point iteration ({self.iterations} iterations)"}[self.method]
        if not r.get("voxels"):
            return f"inverse: {how}"
        return (f"inverse: {how}; residual |T(T^-1(y)) - y| mean {r['mean']:.4f} mm, 99th percentile "
                f"{r['p99']:.4f} mm, max {r['max']:.4f} mm over {r['voxels']} voxels")


def exponential(velocity: sitk.Image, steps: int = DEFAULT_INTEGRATION_STEPS, negate: bool = False) -> sitk.Image:
    """``exp(+-v) - id`` (LPS mm) on the velocity's grid, by the registration's scaling and squaring.

    velocity: LPS-mm vector image (``velocity.nii.gz``). float32, like the registration itself.
    """
    voxels = mm_to_voxel(sitk.GetArrayFromImage(velocity).astype(np.float64), velocity)
    tensor = torch.from_numpy(np.ascontiguousarray(voxels, dtype=np.float32))[None]
    with torch.no_grad():
        field = integrate_velocity(-tensor if negate else tensor, steps)[0].double().numpy()
    return field_image(voxel_to_mm(field, velocity), grid_of(velocity))


def invert_field(field: sitk.Image, max_iterations: int = 200, tolerance_mm: float = 1e-4) -> tuple[sitk.Image, int]:
    """Fixed-point inverse of ``D(x) = x + u(x)`` on ``field``'s grid: ``w = -u(y + w(y))``.

    Converges where ``D`` is invertible with ``|grad u| < 1``; iterates until the largest
    update is below ``tolerance_mm``. Returns (inverse displacement field in LPS mm, iterations).
    """
    grid = grid_of(field)
    u_voxels = mm_to_voxel(sitk.GetArrayFromImage(field).astype(np.float64), grid)
    u = torch.from_numpy(np.ascontiguousarray(u_voxels))[None]
    # |update| in mm is at most sqrt(3) * largest spacing * largest voxel component of the update
    bound = np.sqrt(3.0) * max(field.GetSpacing())
    w = -u
    iterations = 0
    with torch.no_grad():
        for iterations in range(1, max_iterations + 1):
            updated = -warp_image(u, w)  # -u(y + w(y)), trilinear on the field's grid
            change_mm = (updated - w).abs().amax().item() * bound
            w = updated
            if change_mm < tolerance_mm:
                break
    return field_image(voxel_to_mm(w[0].numpy(), grid), grid), iterations


def _velocity_matches(velocity: sitk.Image, field: sitk.Image, steps: int) -> float | None:
    """Largest |exp(v) - u| in mm when ``velocity`` lies on ``field``'s grid, else None."""
    same_grid = (velocity.GetSize() == field.GetSize()
                 and np.allclose(velocity.GetOrigin(), field.GetOrigin(), atol=1e-3)
                 and np.allclose(velocity.GetSpacing(), field.GetSpacing(), atol=1e-6)
                 and np.allclose(velocity.GetDirection(), field.GetDirection(), atol=1e-6))
    if not same_grid or velocity.GetNumberOfComponentsPerPixel() != 3:
        return None
    forward = sitk.GetArrayFromImage(exponential(velocity, steps))
    return float(np.abs(forward - sitk.GetArrayFromImage(field)).max())


def invert_transform(transform: sitk.Transform, reference: sitk.Image | None = None,
                     velocity: sitk.Image | None = None, integration_steps: int = DEFAULT_INTEGRATION_STEPS,
                     max_iterations: int = 200, tolerance_mm: float = 1e-4,
                     velocity_tolerance_mm: float = 0.01) -> Inversion:
    """Invert ``transform`` (fixed -> moving); see the module docstring.

    reference: grid for the residual and for sampling non-field non-linear components
    (normally the moving image). velocity: the run's stationary velocity (LPS mm on the
    displacement field's grid); it must reproduce that field within ``velocity_tolerance_mm``.
    """
    parts = components(transform)
    inverted: list[sitk.Transform] = []
    method, iterations = "linear", 0
    for part in reversed(parts):  # T = P0 o P1 o ... o Pn  =>  T^-1 = Pn^-1 o ... o P0^-1
        if part.IsLinear():
            inverted.append(part.GetInverse())
            continue
        if is_displacement_field(part):
            field = sitk.DisplacementFieldTransform(part).GetDisplacementField()
        elif reference is not None:
            field = transform_to_displacement(part, reference)
        else:
            raise InputError(f"inverting a {part.GetName()} needs a reference grid (--reference)")
        if velocity is not None:
            mismatch = _velocity_matches(velocity, field, integration_steps)
            if mismatch is None or mismatch > velocity_tolerance_mm:
                found = "lies on another grid" if mismatch is None else f"differs by up to {mismatch:.3g} mm"
                raise InputError(f"the velocity field does not belong to this transform: exp(v) {found} from its "
                                 f"displacement field (tolerance {velocity_tolerance_mm} mm)")
            inverse_field, method = exponential(velocity, integration_steps, negate=True), "velocity"
            velocity = None  # belongs to one field only
        else:
            inverse_field, count = invert_field(field, max_iterations, tolerance_mm)
            method, iterations = "fixed-point", iterations + count
        inverted.append(sitk.DisplacementFieldTransform(inverse_field))
    # inverted = [Pn^-1, ..., P0^-1] is already in ITK order: P0^-1, last in the list, is applied first
    inverse = assemble(inverted)
    residual = inverse_residual(transform, inverse, residual_grid(reference)) if reference is not None else {}
    return Inversion(inverse, method, iterations, residual)


def read_velocity(path: str | os.PathLike) -> tuple[sitk.Image, int]:
    """A ``velocity.nii.gz`` written by ``register --diffeomorphic`` and its number of squarings.

    The count is taken from ``report.json`` beside it, else from the file's notes, else the default.
    """
    path = Path(path)
    velocity = read_transform_file(path, TransformFormat.NIFTI_DISPLACEMENT)
    image = sitk.DisplacementFieldTransform(velocity).GetDisplacementField()
    steps = DEFAULT_INTEGRATION_STEPS
    report = path.parent / "report.json"
    try:
        steps = int(json.loads(report.read_text())["velocity"]["integration_steps"])
    except (OSError, ValueError, KeyError, TypeError):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        notes = reader.GetMetaData("descrip") if reader.HasMetaDataKey("descrip") else ""
        match = re.search(r"(\d+) squarings", notes)
        if match:
            steps = int(match.group(1))
    return image, steps


def invert_file(transform: str | os.PathLike, reference: str | os.PathLike | sitk.Image, output: str | os.PathLike,
                velocity: str | os.PathLike | None | bool = True, to: TransformFormat | str | None = None,
                max_iterations: int = 200, tolerance_mm: float = 1e-4,
                log: Callable[[str], None] | None = None) -> Inversion:
    """``shmoareg invert``: read ``transform``, invert it, write ``output``.

    velocity: a velocity file, True (use ``velocity.nii.gz`` beside the transform when there is one
    and it belongs to it) or False/None (fixed-point iteration). ``output``: an ITK transform file
    holds the inverse as exact pieces (inverted affine, inverse field on its own grid); an image
    format holds the inverse displacement sampled on ``reference``'s grid.
    """
    transform_path = Path(transform)
    forward = read_transform_file(transform_path)
    reference_image = read_grid(reference)
    inversion = None
    if velocity is not None and velocity is not False:
        automatic = velocity is True
        path = transform_path.parent / "velocity.nii.gz" if automatic else Path(velocity)
        if path.is_file():
            field, steps = read_velocity(path)
            try:
                inversion = invert_transform(forward, reference_image, field, steps, max_iterations, tolerance_mm)
            except InputError as error:
                if not automatic:
                    raise
                if log is not None:
                    log(f"{path} not used ({error}); inverting by fixed-point iteration")
        elif not automatic:
            raise InputError(f"{path}: no such velocity file")
    if inversion is None:
        inversion = invert_transform(forward, reference_image, None, DEFAULT_INTEGRATION_STEPS, max_iterations,
                                     tolerance_mm)
    write_transform_file(inversion.transform, output, to, reference_image)
    return inversion
