"""End to end with an analytic answer: oblique, anisotropic, different fixed and moving grids.

A phantom ``I`` is sampled on two grids: ``moving = I`` on grid B and
``fixed = I o T`` on grid A, with ``T`` a known smooth B-spline deformation. The
true fixed->moving transform is then ``T`` (SHMoAReg.conventions).
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from SHMoAReg import register
from SHMoAReg.synthetic import displacement_of, phantom, smooth_deformation

DIRECTION_A = tuple(sitk.VersorTransform((0.2, 0.3, 0.9), 0.35).GetMatrix())
DIRECTION_B = tuple(sitk.VersorTransform((-0.6, 0.1, 0.4), 0.25).GetMatrix())


def _grid(size, spacing, direction, centre=(0.0, 0.0, 0.0)) -> sitk.Image:
    """A grid whose centre voxel lies at ``centre`` (so that oblique grids cover the phantom)."""
    grid = sitk.Image(list(size), sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetDirection(direction)
    half = np.array(direction).reshape(3, 3) @ (np.array(spacing) * (np.array(size) - 1) / 2)
    grid.SetOrigin(tuple(np.array(centre) - half))
    return grid


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("known")
    image, labels = phantom(size=(96, 84, 72), spacing=(2.0, 2.0, 2.0), seed=3, origin=(-95.0, -83.0, -71.0))
    truth = smooth_deformation(image, 7.0, mesh_size=3, seed=4)
    grid_a = _grid((64, 80, 40), (2.6, 2.0, 3.4), DIRECTION_A, (2.0, -3.0, 1.0))
    grid_b = _grid((76, 66, 70), (2.8, 3.0, 2.4), DIRECTION_B, (-4.0, 2.0, 3.0))
    files = {
        "fixed": sitk.Resample(image, grid_a, truth, sitk.sitkLinear, -1000.0),
        "fixed_labels": sitk.Resample(labels, grid_a, truth, sitk.sitkNearestNeighbor, 0),
        "moving": sitk.Resample(image, grid_b, sitk.Transform(), sitk.sitkLinear, -1000.0),
        "moving_labels": sitk.Resample(labels, grid_b, sitk.Transform(), sitk.sitkNearestNeighbor, 0),
    }
    paths = {}
    for name, img in files.items():
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(img, str(paths[name]))
    return paths, truth, folder


def test_transform_reproduces_warped_and_recovers_the_known_field(pair):
    paths, truth, folder = pair
    out = folder / "result"
    result = register(paths["fixed"], paths["moving"], out, fixed_labels=paths["fixed_labels"],
                      moving_labels=paths["moving_labels"], affine=False, spacing=3.0, iterations=80)
    fixed = sitk.ReadImage(str(paths["fixed"]))
    moving = sitk.ReadImage(str(paths["moving"]))
    warped = sitk.ReadImage(str(out / "warped.nii.gz"))
    for name in ("transform.h5", "displacement.nii.gz", "jacobian.nii.gz", "warped_labels.nii.gz", "report.json"):
        assert (out / name).is_file(), name
    # 1. the written transform, applied by SimpleITK, reproduces warped.nii.gz on the fixed grid
    again = sitk.Resample(moving, fixed, sitk.ReadTransform(str(out / "transform.h5")), sitk.sitkLinear,
                          float(np.percentile(sitk.GetArrayViewFromImage(moving), 0.5)), sitk.sitkFloat32)
    assert warped.GetSize() == fixed.GetSize() and np.allclose(warped.GetDirection(), fixed.GetDirection(), atol=1e-6)
    assert np.abs(sitk.GetArrayFromImage(again) - sitk.GetArrayFromImage(warped)).max() < 1e-3
    # 2. the recovered displacement matches the known one inside the body
    known = displacement_of(truth, fixed)
    found = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "displacement.nii.gz")))
    body = sitk.GetArrayFromImage(fixed) > -500
    error = np.linalg.norm(found - known, axis=-1)[body].mean()
    magnitude = np.linalg.norm(known, axis=-1)[body].mean()
    print(f"known-answer: mean displacement error {error:.2f} mm (true mean displacement {magnitude:.2f} mm)")
    assert magnitude > 2.0 and error < 0.4 * magnitude and error < 1.5
    # 3. labels align better and the field does not fold
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["dice_mean"] > metrics["dice_mean_before"] + 0.05
    assert metrics["folding_fraction"] < 0.005
    assert result.report["metrics"]["dice_mean"] == metrics["dice_mean"]


def test_cli_contract_and_json_progress(pair, tmp_path):
    paths, _, _ = pair
    out = tmp_path / "cli"
    process = subprocess.run(
        [sys.executable, "-m", "SHMoAReg", "register", "--fixed", str(paths["fixed"]), "--moving", str(paths["moving"]),
         "--output-dir", str(out), "--no-affine", "--spacing", "4", "--iterations", "10", "--json-progress",
         "--l2r-displacement"], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=300)
    assert process.returncode == 0, process.stderr
    lines = [json.loads(line) for line in process.stdout.splitlines() if line.startswith("{")]
    assert lines and all({"stage", "progress", "message"} <= set(line) for line in lines)
    progress = [line["progress"] for line in lines]
    assert progress == sorted(progress) and lines[-1]["stage"] == "done"
    l2r = sitk.ReadImage(str(out / "displacement_l2r_voxels.nii.gz"))
    displacement = sitk.ReadImage(str(out / "displacement.nii.gz"))
    mm = sitk.GetArrayFromImage(displacement)  # (D, H, W, 3) LPS mm
    assert l2r.GetDimension() == 4 and l2r.GetSize() == (*displacement.GetSize(), 3)  # nibabel: (X, Y, Z, 3)
    voxels = np.moveaxis(sitk.GetArrayFromImage(l2r), 0, -1)  # component c = voxels along index axis c (i, j, k)
    direction = np.array(displacement.GetDirection()).reshape(3, 3)
    assert np.allclose(voxels @ (direction @ np.diag(displacement.GetSpacing())).T, mm, atol=1e-3)


def test_affine_recovers_a_pure_translation(tmp_path):
    image, _ = phantom(size=(48, 44, 40), spacing=(3.0, 3.0, 3.0), seed=5)
    shift = sitk.TranslationTransform(3, (9.0, -6.0, 4.5))
    fixed = sitk.Resample(image, image, shift, sitk.sitkLinear, -1000.0)
    result = register(fixed, image, None, iterations=10, spacing=3.0, preset="abdomen-ct")
    point = fixed.TransformIndexToPhysicalPoint((24, 22, 20))
    mapped = np.array(result.transform.TransformPoint(point)) - np.array(point)
    assert np.linalg.norm(mapped - np.array([9.0, -6.0, 4.5])) < 1.5
