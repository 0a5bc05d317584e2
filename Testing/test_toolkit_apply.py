"""``shmoareg apply``: a known analytic transform applied to an image, a label map and landmarks.

``T = A o D`` (an affine after an analytic displacement field, LPS mm) maps fixed-space
points to moving-space points. Images on the fixed grid must equal SimpleITK's
resampler, label maps must keep their label set and match the analytic warp, and
landmarks must land on the analytic answer (within 0.1 mm) in the direction asked for.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from SHMoAReg.cli import main
from SHMoAReg.errors import InputError
from SHMoAReg.toolkit import apply_to_image, apply_to_labels, map_points, read_points, write_points

ROTATION = sitk.VersorTransform((0.3, 0.2, 0.9), 0.4).GetMatrix()


def grid(size=(30, 28, 24), spacing=(1.5, 1.6, 2.0), origin=(-20.0, -25.0, -22.0), direction=ROTATION) -> sitk.Image:
    image = sitk.Image(size, sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(direction)
    return image


def physical(image: sitk.Image) -> np.ndarray:
    k, j, i = np.meshgrid(*(np.arange(n) for n in image.GetSize()[::-1]), indexing="ij")
    matrix = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    return np.stack([i, j, k], -1) @ matrix.T + np.array(image.GetOrigin())


def u_analytic(x: np.ndarray) -> np.ndarray:
    """A smooth displacement (LPS mm, amplitude 3 mm)."""
    return 3.0 * np.stack([np.sin(x[..., 2] / 15), np.cos(x[..., 0] / 19), np.sin((x[..., 1] - x[..., 0]) / 17)], -1)


AFFINE = sitk.AffineTransform(3)
AFFINE.SetMatrix((1.03, 0.04, 0.0, -0.02, 0.98, 0.03, 0.0, 0.02, 1.01))
AFFINE.SetTranslation((2.5, -1.5, 1.0))


def t_analytic(x: np.ndarray) -> np.ndarray:
    """T(x) = A(x + u(x)): what the composite [A, D] computes, without interpolation."""
    y = x + u_analytic(x)
    matrix = np.array(AFFINE.GetMatrix()).reshape(3, 3)
    center, translation = np.array(AFFINE.GetCenter()), np.array(AFFINE.GetTranslation())
    return (y - center) @ matrix.T + center + translation


@pytest.fixture(scope="module")
def transform() -> sitk.Transform:
    """[A, D] with D sampled on a 1.5 mm grid covering every image here (interpolation error < 0.01 mm)."""
    field_grid = grid((81, 81, 81), (1.5, 1.5, 1.5), (-60.0, -60.0, -60.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    field = sitk.GetImageFromArray(u_analytic(physical(field_grid)), isVector=True)
    field.CopyInformation(field_grid)
    return sitk.CompositeTransform([AFFINE, sitk.DisplacementFieldTransform(field)])


def moving_image() -> tuple[sitk.Image, sitk.Image]:
    """(image, labels) of the moving subject: two balls of labels 2 and 5 with an intensity ramp."""
    moving = grid((32, 30, 26), (1.4, 1.5, 1.8), (-22.0, -24.0, -20.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    x = physical(moving)
    labels = np.zeros(x.shape[:3], np.uint8)
    labels[np.linalg.norm(x - [4.0, -3.0, 2.0], axis=-1) < 9] = 2
    labels[np.linalg.norm(x - [-9.0, 8.0, -5.0], axis=-1) < 7] = 5
    image = (100.0 * labels + x[..., 0] + 0.5 * x[..., 2]).astype(np.float32)
    out = [sitk.GetImageFromArray(a) for a in (image, labels)]
    for o in out:
        o.CopyInformation(moving)
    return out[0], out[1]


def test_image_matches_simpleitk_resampler(transform, tmp_path):
    image, _ = moving_image()
    fixed = grid()
    for interpolation, itk in [("linear", sitk.sitkLinear), ("bspline", sitk.sitkBSpline)]:
        ours = apply_to_image(image, fixed, transform, interpolation)
        expected = sitk.Resample(image, fixed, transform, itk, 0.0, image.GetPixelID())
        assert np.array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(expected))
    # the CLI writes the same thing
    sitk.WriteImage(image, str(tmp_path / "moving.nii.gz"))
    sitk.WriteImage(fixed, str(tmp_path / "fixed.nii.gz"))
    sitk.WriteTransform(transform, str(tmp_path / "t.h5"))
    assert main(["apply", "--transform", str(tmp_path / "t.h5"), "--input", str(tmp_path / "moving.nii.gz"),
                 "--reference", str(tmp_path / "fixed.nii.gz"), "-o", str(tmp_path / "out.nii.gz")]) == 0
    written = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    # NIfTI stores geometry in float32, so compare with SimpleITK on the images as read back
    expected = sitk.Resample(sitk.ReadImage(str(tmp_path / "moving.nii.gz")), sitk.ReadImage(str(tmp_path / "fixed.nii.gz")),
                             transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected))
    assert written.GetSize() == fixed.GetSize() and np.allclose(written.GetDirection(), fixed.GetDirection(), atol=1e-6)


def test_image_follows_the_analytic_transform(transform):
    """warped(x) = moving(T(x)): the ramp value at T(x) is known analytically."""
    image, labels = moving_image()
    fixed = grid()
    warped = sitk.GetArrayFromImage(apply_to_image(image, fixed, transform))
    y = t_analytic(physical(fixed))
    ramp = y[..., 0] + 0.5 * y[..., 2]
    # away from the balls (no label in the interpolation stencil) and between the moving image's voxel centres
    background = sitk.GetArrayFromImage(apply_to_image(sitk.Cast(labels, sitk.sitkFloat32), fixed, transform)) == 0
    index = (y - np.array(image.GetOrigin())) / np.array(image.GetSpacing())  # the moving grid is axis-aligned
    inside = background & np.all((index > 0.5) & (index < np.array(image.GetSize()) - 1.5), axis=-1)
    assert inside.sum() > 1000
    assert np.abs(warped[inside] - ramp[inside]).max() < 0.1  # linear ramp: interpolation is exact


@pytest.mark.parametrize("interpolation", ["nearest", "label"])
def test_labels_keep_their_values_and_match_the_analytic_warp(transform, interpolation):
    _, labels = moving_image()
    fixed = grid()
    warped = sitk.GetArrayFromImage(apply_to_labels(labels, fixed, transform, interpolation))
    assert set(np.unique(warped)) <= {0, 2, 5}
    y = t_analytic(physical(fixed))
    truth = np.zeros(warped.shape, np.uint8)
    truth[np.linalg.norm(y - [4.0, -3.0, 2.0], axis=-1) < 9] = 2
    truth[np.linalg.norm(y - [-9.0, 8.0, -5.0], axis=-1) < 7] = 5
    for label in (2, 5):
        a, b = warped == label, truth == label
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9
    if interpolation == "nearest":
        expected = sitk.Resample(labels, fixed, transform, sitk.sitkNearestNeighbor, 0.0)
        assert np.array_equal(warped, sitk.GetArrayFromImage(expected))


def test_labels_refuse_interpolators_that_invent_values(transform):
    _, labels = moving_image()
    with pytest.raises(InputError, match="nearest"):
        apply_to_labels(labels, grid(), transform, "linear")


def test_points_fixed_to_moving_and_back(transform):
    rng = np.random.default_rng(0)
    fixed_points = rng.uniform(-12, 12, (25, 3))
    to_moving, residual = map_points(fixed_points, transform, "fixed-to-moving")
    assert np.abs(to_moving - t_analytic(fixed_points)).max() < 0.1 and residual.max() == 0
    back, residual = map_points(to_moving, transform, "moving-to-fixed")
    assert residual.max() < 1e-4
    assert np.abs(back - fixed_points).max() < 0.1


def test_point_direction_agrees_with_image_warping(transform):
    """A fixed-space point p: the warped image at p shows what the moving image shows at T(p)."""
    image, _ = moving_image()
    fixed = grid()
    warped = apply_to_image(image, fixed, transform)
    index = (12, 9, 7)
    p = np.array(fixed.TransformIndexToPhysicalPoint(index))
    q = map_points(p[None], transform, "fixed-to-moving")[0][0]
    assert abs(image.EvaluateAtPhysicalPoint(q.tolist(), sitk.sitkLinear) - warped[index]) < 1e-3


@pytest.mark.parametrize("suffix", [".csv", ".fcsv", ".mrk.json"])
def test_landmark_files_through_the_cli(transform, tmp_path, suffix):
    rng = np.random.default_rng(1)
    points = rng.uniform(-10, 10, (6, 3))
    source = write_points(points, tmp_path / f"fixed{suffix}")
    sitk.WriteTransform(transform, str(tmp_path / "t.h5"))
    out = tmp_path / f"moving{suffix}"
    assert main(["apply", "--transform", str(tmp_path / "t.h5"), "--input", str(source), "-o", str(out),
                 "--direction", "fixed-to-moving"]) == 0
    moved = read_points(out)
    assert np.abs(moved - t_analytic(points)).max() < 0.1
    back = tmp_path / f"back{suffix}"
    assert main(["apply", "--transform", str(tmp_path / "t.h5"), "--input", str(out), "-o", str(back),
                 "--direction", "moving-to-fixed", "--json-progress"]) == 0
    assert np.abs(read_points(back) - points).max() < 0.1


def test_slicer_files_keep_labels_and_load_in_slicer(transform, tmp_path):
    """Slicer-written RAS files in, LPS files out with the same labels; Slicer reads them back at the right place."""
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core package")
    points = np.array([[1.0, 2.0, 3.0], [-4.0, 5.0, -6.0]])
    ras = points * [-1, -1, 1]
    (tmp_path / "in.fcsv").write_text(
        "# Markups fiducial file version = 4.11\n# CoordinateSystem = 0\n"
        "# columns = id,x,y,z,ow,ox,oy,oz,vis,sel,lock,label,desc,associatedNodeID\n"
        + "".join(f"vtkMRMLMarkupsFiducialNode_{i},{r[0]},{r[1]},{r[2]},0,0,0,1,1,1,0,tip-{i},note,\n"
                  for i, r in enumerate(ras)))
    document = {"markups": [{"type": "Fiducial", "coordinateSystem": "RAS", "controlPoints": [
        {"id": str(i), "label": f"tip-{i}", "position": r.tolist()} for i, r in enumerate(ras)]}]}
    (tmp_path / "in.mrk.json").write_text(json.dumps(document))
    expected = t_analytic(points)
    for suffix, storage_class in [(".fcsv", "vtkMRMLMarkupsFiducialStorageNode"),
                                  (".mrk.json", "vtkMRMLMarkupsJsonStorageNode")]:
        out = tmp_path / f"out{suffix}"
        assert main(["apply", "--transform", _write(transform, tmp_path), "--input", str(tmp_path / f"in{suffix}"),
                     "-o", str(out)]) == 0
        assert "tip-1" in out.read_text() and "LPS" in out.read_text()
        scene = slicer.vtkMRMLScene()
        node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode")
        storage = scene.AddNode(getattr(slicer, storage_class)())  # the JSON reader is not registered by default
        storage.SetFileName(str(out))
        assert storage.ReadData(node)
        loaded = np.array([node.GetNthControlPointPosition(i) for i in range(node.GetNumberOfControlPoints())])
        np.testing.assert_allclose(loaded * [-1, -1, 1], expected, atol=0.1)
        assert node.GetNthControlPointLabel(1) == "tip-1"


def _write(transform: sitk.Transform, folder) -> str:
    path = folder / "t.h5"
    if not path.exists():
        sitk.WriteTransform(transform, str(path))
    return str(path)


def test_cli_errors(transform, tmp_path, capsys):
    image, labels = moving_image()
    sitk.WriteImage(image, str(tmp_path / "m.nii.gz"))
    path = _write(transform, tmp_path)
    assert main(["apply", "--transform", path, "--input", str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert "--reference" in capsys.readouterr().err
    (tmp_path / "o.nii.gz").write_text("")
    assert main(["apply", "--transform", path, "--input", str(tmp_path / "m.nii.gz"), "--reference",
                 str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "o.nii.gz")]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["apply", "--transform", str(tmp_path / "none.h5"), "--input", str(tmp_path / "m.nii.gz"),
                 "--reference", str(tmp_path / "m.nii.gz"), "-o", str(tmp_path / "p.nii.gz")]) == 2
    assert "no such transform" in capsys.readouterr().err
