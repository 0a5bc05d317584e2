"""``shmoareg convert``: every format holds the same fixed -> moving mapping.

A known transform ``T = A o D`` (an affine after a smooth analytic displacement field on
a rotated, anisotropic grid) is written in every format, read back, and sampled on a
reference grid: each must give the same displacement within 1e-4 mm. The ITK file and
the grid files must load in SimpleITK and in Slicer's transform storage node
(``slicer-core``) with the same mapping.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SHMoAReg.cli import main
from SHMoAReg.errors import InputError
from SHMoAReg.transforms.field_transform import transform_to_displacement
from SHMoAReg.toolkit.convert import TransformFormat, convert_transform, read_transform_file, write_transform_file

ROTATION = sitk.VersorTransform((0.3, 0.2, 0.9), 0.5).GetMatrix()
SUFFIX = {"itk-h5": ".h5", "itk-tfm": ".tfm", "nifti-displacement": ".nii.gz", "l2r-voxel": ".nii.gz",
          "slicer-grid": ".nrrd"}


def make_grid(size=(20, 18, 16), spacing=(2.0, 2.5, 3.0), origin=(12.0, -30.0, 7.0), direction=ROTATION) -> sitk.Image:
    grid = sitk.Image(size, sitk.sitkFloat32)
    grid.SetSpacing(spacing)
    grid.SetOrigin(origin)
    grid.SetDirection(direction)
    return grid


def analytic_field(grid: sitk.Image, amplitude=4.0) -> sitk.Image:
    """u(x) = amplitude * (sin(x_S / 17), cos(x_L / 23), sin((x_P + x_L) / 19)) in LPS mm."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.GetSize()[::-1]), indexing="ij")
    index = np.stack([i, j, k], -1).astype(float)
    matrix = np.array(grid.GetDirection()).reshape(3, 3) @ np.diag(grid.GetSpacing())
    x = index @ matrix.T + np.array(grid.GetOrigin())
    u = amplitude * np.stack([np.sin(x[..., 2] / 17), np.cos(x[..., 0] / 23), np.sin((x[..., 1] + x[..., 0]) / 19)], -1)
    field = sitk.GetImageFromArray(u, isVector=True)
    field.CopyInformation(grid)
    return field


@pytest.fixture(scope="module")
def known():
    """(T = A o D, field grid, reference grid that differs from it)."""
    grid = make_grid()
    field = sitk.DisplacementFieldTransform(analytic_field(grid))
    affine = sitk.AffineTransform(3)
    affine.SetMatrix((1.04, 0.05, 0.0, -0.03, 0.97, 0.02, 0.01, 0.0, 1.02))
    affine.SetTranslation((4.0, -3.0, 2.5))
    affine.SetCenter(grid.TransformContinuousIndexToPhysicalPoint((10, 9, 8)))
    reference = make_grid((17, 15, 13), (2.3, 2.1, 2.7), (16.0, -24.0, 12.0))
    return sitk.CompositeTransform([affine, field]), grid, reference


def sampled(transform: sitk.Transform, reference: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(transform_to_displacement(transform, reference))


@pytest.mark.parametrize("fmt", [f.value for f in TransformFormat])
def test_every_format_round_trips_within_1e4_mm(known, tmp_path, fmt):
    transform, _, reference = known
    path = write_transform_file(transform, tmp_path / f"t{SUFFIX[fmt]}", fmt, reference)
    back = read_transform_file(path, fmt, reference)
    error = np.abs(sampled(back, reference) - sampled(transform, reference)).max()
    assert error < 1e-4, f"{fmt}: round-trip error {error:.2e} mm"


def test_chain_through_all_formats_keeps_the_displacement(known, tmp_path):
    transform, _, reference = known
    expected = sampled(transform, reference)
    source, source_format = tmp_path / "start.h5", "itk-h5"
    write_transform_file(transform, source, source_format)
    for step, fmt in enumerate(["nifti-displacement", "itk-tfm", "slicer-grid", "l2r-voxel", "itk-h5"]):
        target = tmp_path / f"step{step}{SUFFIX[fmt]}"
        convert_transform(source, target, fmt, source_format, reference)
        source, source_format = target, fmt
    error = np.abs(sampled(read_transform_file(source), reference) - expected).max()
    assert error < 1e-4, f"after five conversions: {error:.2e} mm"


def test_grid_formats_default_to_the_field_grid(known, tmp_path):
    transform, grid, _ = known
    path = write_transform_file(transform, tmp_path / "u.nii.gz", "nifti-displacement")
    image = sitk.ReadImage(str(path))
    assert image.GetSize() == grid.GetSize() and np.allclose(image.GetDirection(), grid.GetDirection())
    assert "LPS mm" in image.GetMetaData("descrip") and "fixed->moving" in image.GetMetaData("descrip")
    with pytest.raises(InputError, match="l2r-voxel needs --reference"):
        write_transform_file(transform, tmp_path / "l2r.nii.gz", "l2r-voxel")
    with pytest.raises(InputError, match="needs|--reference"):
        write_transform_file(sitk.Euler3DTransform(), tmp_path / "e.nrrd", "slicer-grid")
    with pytest.raises(InputError, match="named"):
        write_transform_file(transform, tmp_path / "wrong.h5", "nifti-displacement")


def test_l2r_file_is_what_learn2reg_evaluates(known, tmp_path):
    """Learn2Reg: nibabel array (X, Y, Z, 3); fixed voxel index + disp = moving voxel index (same grid)."""
    nib = pytest.importorskip("nibabel")
    transform, _, reference = known
    path = write_transform_file(transform, tmp_path / "disp.nii.gz", "l2r-voxel", reference)
    disp = nib.load(str(path)).get_fdata()
    assert disp.shape == (*reference.GetSize(), 3)
    for index in [(0, 0, 0), (5, 7, 3), (16, 14, 12)]:
        moving_point = transform.TransformPoint(reference.TransformIndexToPhysicalPoint(index))
        moving_index = reference.TransformPhysicalPointToContinuousIndex(moving_point)
        np.testing.assert_allclose(np.array(index) + disp[index], moving_index, atol=1e-4)


def test_learn2reg_file_of_register_reads_back(tmp_path):
    """The engine's own --l2r-displacement file (3-D vector image) reads as l2r-voxel too."""
    grid = make_grid((8, 9, 10))
    field = analytic_field(grid)
    voxels = np.stack([np.array(grid.TransformPhysicalPointToContinuousIndex(
        (np.array(grid.TransformIndexToPhysicalPoint(idx)) + field[idx]).tolist())) - np.array(idx)
        for idx in [(2, 3, 4)]])
    path = write_transform_file(sitk.DisplacementFieldTransform(sitk.Image(field)), tmp_path / "a.nii.gz", "l2r-voxel", grid)
    four_d = sitk.ReadImage(str(path))
    vector = sitk.GetImageFromArray(np.moveaxis(sitk.GetArrayFromImage(four_d), 0, -1), isVector=True)
    vector.CopyInformation(grid)
    sitk.WriteImage(vector, str(tmp_path / "engine.nii.gz"))
    back = read_transform_file(tmp_path / "engine.nii.gz", "l2r-voxel")
    np.testing.assert_allclose(sampled(back, grid), sitk.GetArrayFromImage(field), atol=1e-4)
    np.testing.assert_allclose(sitk.GetArrayFromImage(four_d)[:, 4, 3, 2], voxels[0], atol=1e-4)


def test_cli_convert(known, tmp_path, capsys):
    transform, _, reference = known
    sitk.WriteTransform(transform, str(tmp_path / "t.h5"))
    sitk.WriteImage(reference, str(tmp_path / "fixed.nii.gz"))
    args = ["convert", "--transform", str(tmp_path / "t.h5"), "--to", "slicer-grid", "--reference",
            str(tmp_path / "fixed.nii.gz"), "-o", str(tmp_path / "grid.nrrd")]
    assert main(args) == 0
    assert main(args) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    back = read_transform_file(tmp_path / "grid.nrrd")
    assert np.abs(sampled(back, reference) - sampled(transform, reference)).max() < 1e-4


# -- Slicer ------------------------------------------------------------------------------------
def _slicer_from_parent_lps(path, points_lps: np.ndarray) -> np.ndarray:
    slicer = pytest.importorskip("slicer", reason="needs the slicer-core package")
    scene = slicer.vtkMRMLScene()
    node = scene.AddNewNodeByClass("vtkMRMLTransformNode")
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(path))
    assert storage.ReadData(node), f"Slicer could not read {path}"
    to_moving = node.GetTransformFromParent()  # the resampling transform, RAS
    flip = np.array([-1.0, -1.0, 1.0])
    return np.array([np.array(to_moving.TransformPoint((p * flip).tolist())) * flip for p in points_lps])


@pytest.mark.parametrize("fmt", ["itk-h5", "slicer-grid", "nifti-displacement"])
def test_slicer_reads_the_same_mapping(known, tmp_path, fmt):
    """Slicer's storage node: the file's from-parent transform (RAS) equals T (LPS) at the reference's voxels."""
    transform, grid, reference = known
    path = write_transform_file(transform, tmp_path / f"t{SUFFIX[fmt]}", fmt, reference if fmt != "itk-h5" else None)
    # voxel centres of the field grid inside the reference: there every reader's interpolation is exact
    index = np.array([[3, 4, 5], [10, 9, 8], [15, 12, 6], [7, 2, 11]])
    points = np.array([(reference if fmt != "itk-h5" else grid).TransformIndexToPhysicalPoint(i.tolist())
                       for i in index])
    expected = np.array([transform.TransformPoint(p.tolist()) for p in points])
    np.testing.assert_allclose(_slicer_from_parent_lps(path, points), expected, atol=1e-4)
    np.testing.assert_allclose([sitk.ReadTransform(str(path)).TransformPoint(p.tolist()) if fmt.startswith("itk")
                                else read_transform_file(path).TransformPoint(p.tolist()) for p in points],
                               expected, atol=1e-4)
