"""``shmoareg invert`` / ``register --inverse``: the inverse transform and its residual in mm.

On a known smooth field (a random B-spline sampled on a rotated grid, with an affine
after it) the inverse's residual ``|T(T^-1(y)) - y|`` must stay below 0.5 mm by
fixed-point iteration and below 0.1 mm exactly from the negative velocity of a
diffeomorphic field; composing a transform with its inverse maps landmarks back.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

import SHMoAReg
from SHMoAReg.cli import main
from SHMoAReg.errors import InputError
from SHMoAReg.transforms.field_transform import transform_to_displacement
from SHMoAReg.synthetic import deform, phantom, smooth_deformation
from SHMoAReg.toolkit import exponential, invert_transform, map_points
from SHMoAReg.toolkit.invert import invert_file

ROTATION = sitk.VersorTransform((0.3, 0.2, 0.9), 0.5).GetMatrix()


def field_grid() -> sitk.Image:
    grid = sitk.Image((34, 36, 30), sitk.sitkFloat32)
    grid.SetSpacing((2.0, 2.2, 2.5))
    grid.SetOrigin((10.0, -20.0, 5.0))
    grid.SetDirection(ROTATION)
    return grid


def affine(grid: sitk.Image) -> sitk.AffineTransform:
    a = sitk.AffineTransform(3)
    a.SetMatrix((1.05, 0.05, 0.0, -0.04, 0.97, 0.02, 0.0, 0.03, 1.01))
    a.SetTranslation((3.0, -2.0, 1.0))
    a.SetCenter(grid.TransformContinuousIndexToPhysicalPoint((17, 18, 15)))
    return a


@pytest.fixture(scope="module")
def smooth_field():
    """A displacement field of a smooth random B-spline, 8 mm at most (|grad u| < 1: invertible)."""
    grid = field_grid()
    return transform_to_displacement(smooth_deformation(grid, 8.0, mesh_size=3, seed=1), grid)


@pytest.fixture(scope="module")
def velocity(smooth_field):
    """A stationary velocity (LPS mm) and its exponential, like a diffeomorphic run writes them."""
    v = sitk.GetImageFromArray(sitk.GetArrayFromImage(smooth_field) * 0.8, isVector=True)
    v.CopyInformation(smooth_field)
    return v, exponential(v)


def interior_points(grid: sitk.Image, count=40, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    index = rng.uniform(6, np.array(grid.GetSize()) - 7, (count, 3))
    return np.array([grid.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index])


def test_fixed_point_inverse_residual_below_half_mm(smooth_field):
    grid = field_grid()
    forward = sitk.CompositeTransform([affine(grid), sitk.DisplacementFieldTransform(sitk.Image(smooth_field))])
    inversion = invert_transform(forward, reference=grid)
    assert inversion.method == "fixed-point" and inversion.iterations > 1
    r = inversion.residual_mm
    assert r["voxels"] > 0.8 * r["voxels_total"]
    assert r["max"] < 0.5 and r["mean"] < 0.05, inversion.summary()
    # landmarks: fixed -> moving with T, back with T^-1
    points = interior_points(grid)
    moved, _ = map_points(points, forward, "fixed-to-moving")
    back, residual = map_points(moved, forward, "moving-to-fixed", inverse=inversion.transform)
    assert np.abs(back - points).max() < 0.5 and residual.max() < 0.5


def test_velocity_inverse_is_exact_below_a_tenth_of_a_mm(velocity):
    v, field = velocity
    grid = field_grid()
    forward = sitk.CompositeTransform([affine(grid), sitk.DisplacementFieldTransform(sitk.Image(field))])
    inversion = invert_transform(forward, reference=grid, velocity=v)
    assert inversion.method == "velocity" and inversion.iterations == 0
    assert inversion.residual_mm["max"] < 0.1, inversion.summary()
    points = interior_points(grid, seed=3)
    back, _ = map_points(map_points(points, forward)[0], forward, "moving-to-fixed", inverse=inversion.transform)
    assert np.abs(back - points).max() < 0.1


def test_velocity_of_another_transform_is_refused(velocity, smooth_field):
    v, _ = velocity
    forward = sitk.DisplacementFieldTransform(sitk.Image(smooth_field))  # not exp(v)
    with pytest.raises(InputError, match="does not belong"):
        invert_transform(forward, reference=field_grid(), velocity=v)


def test_linear_only_is_exact():
    grid = field_grid()
    inversion = invert_transform(affine(grid), reference=grid)
    assert inversion.method == "linear" and inversion.residual_mm["max"] < 1e-9


def test_cli_invert_finds_the_velocity_and_falls_back(velocity, smooth_field, tmp_path, capsys):
    v, field = velocity
    grid = field_grid()
    sitk.WriteTransform(sitk.CompositeTransform([affine(grid), sitk.DisplacementFieldTransform(sitk.Image(field))]),
                        str(tmp_path / "transform.h5"))
    sitk.WriteImage(sitk.Cast(v, sitk.sitkVectorFloat32), str(tmp_path / "velocity.nii.gz"))
    sitk.WriteImage(grid, str(tmp_path / "moving.nii.gz"))
    base = ["invert", "--transform", str(tmp_path / "transform.h5"), "--reference", str(tmp_path / "moving.nii.gz")]
    assert main(base + ["-o", str(tmp_path / "inverse.h5"), "--json-progress"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["method"] == "velocity" and line["residual_mm"]["max"] < 0.1
    assert main(base + ["-o", str(tmp_path / "inverse_fp.nii.gz"), "--no-velocity"]) == 0
    assert "fixed-point" in capsys.readouterr().out
    # the image output is the inverse displacement sampled on the reference grid
    sampled = sitk.ReadImage(str(tmp_path / "inverse_fp.nii.gz"))
    assert sampled.GetSize() == grid.GetSize()
    exact = sitk.ReadTransform(str(tmp_path / "inverse.h5"))
    assert np.abs(sitk.GetArrayFromImage(sampled) - sitk.GetArrayFromImage(transform_to_displacement(exact, grid))
                  )[6:-6, 6:-6, 6:-6].max() < 0.5
    # a stale velocity beside the transform: warned about and not used
    sitk.WriteTransform(sitk.CompositeTransform([affine(grid), sitk.DisplacementFieldTransform(sitk.Image(smooth_field))]),
                        str(tmp_path / "transform.h5"))
    assert main(base + ["-o", str(tmp_path / "inverse2.h5")]) == 0
    captured = capsys.readouterr()
    assert "not used" in captured.err and "fixed-point" in captured.out
    # ... but refused when given explicitly
    assert main(base + ["-o", str(tmp_path / "inverse3.h5"), "--velocity", str(tmp_path / "velocity.nii.gz")]) == 2


def test_register_inverse_writes_the_inverse(tmp_path):
    """register --diffeomorphic --inverse: velocity.nii.gz, inverse_transform.h5, residual < 0.1 mm; round trip."""
    image, _ = phantom((28, 26, 22), (3.0, 3.0, 3.0), seed=1)
    truth = smooth_deformation(image, 5.0, seed=4)
    fixed = deform(image, truth)
    result = SHMoAReg.register(fixed, image, tmp_path / "out", iterations=12, affine=False, diffeomorphic=True,
                               inverse=True, spacing=3.0)
    out = tmp_path / "out"
    assert (out / "velocity.nii.gz").is_file() and (out / "inverse_transform.h5").is_file()
    report = json.loads((out / "report.json").read_text())
    assert report["inverse"]["method"] == "velocity"
    assert report["inverse"]["residual_mm"]["max"] < 0.1
    forward, inverse = sitk.ReadTransform(str(out / "transform.h5")), sitk.ReadTransform(str(out / "inverse_transform.h5"))
    points = interior_points(fixed, 20)
    back = np.array([inverse.TransformPoint(forward.TransformPoint(p.tolist())) for p in points])
    assert np.abs(back - points).max() < 0.1
    # and `shmoareg invert` on that folder reproduces it from velocity.nii.gz
    inversion = invert_file(out / "transform.h5", image, tmp_path / "again.h5")
    assert inversion.method == "velocity"
    assert result.inverse_transform is not None


def test_register_inverse_without_diffeomorphic_uses_fixed_point(tmp_path):
    image, _ = phantom((24, 22, 20), (3.0, 3.0, 3.0), seed=2)
    fixed = deform(image, smooth_deformation(image, 4.0, seed=5))
    result = SHMoAReg.register(fixed, image, None, iterations=8, affine=False, inverse=True, spacing=3.0)
    assert result.report["inverse"]["method"] == "fixed-point"
    assert result.report["inverse"]["residual_mm"]["max"] < 0.5
    assert result.velocity is None
