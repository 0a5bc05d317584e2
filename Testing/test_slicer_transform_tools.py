"""The Slicer side of the transform toolkit, on a real MRML scene: apply the result transform to other
volumes, label maps, segmentations and markups; its inverse; export; mask segments for a run.

The result comes from ``slicer_fake_engine.py``, whose "registration" is the known analytic field of
``SHMoARegistrationLib/selftest.py`` on a rotated, anisotropic grid, so every answer is known.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (real MRML)")
sitk = pytest.importorskip("SimpleITK")

from test_slicer_logic import (  # noqa: E402,F401  (scene and pair are fixtures)
    add_volume, blob, fake_logic, fingerprint, label_array, make_image, node_ids, pair, scene)
from SHMoARegistrationLib import transform_tools  # noqa: E402
from SHMoARegistrationLib.conversion import LPS_TO_RAS, sitk_image_from_volume  # noqa: E402
from SHMoARegistrationLib.selftest import known_displacement_image  # noqa: E402


@pytest.fixture
def result(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    return fake_logic(scene, tmp_path, monkeypatch=monkeypatch).register(fixed, moving)


def known_transform(fixed_node) -> sitk.Transform:
    field = known_displacement_image(sitk_image_from_volume(fixed_node))
    return sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))


def inner_points(image: sitk.Image, count: int = 12, seed: int = 0) -> np.ndarray:
    """LPS points at voxel centres well inside the grid (the field is exact there)."""
    rng = np.random.default_rng(seed)
    size = np.array(image.GetSize())
    indices = rng.integers(size // 4, 3 * size // 4, size=(count, 3))
    return np.array([image.TransformIndexToPhysicalPoint([int(v) for v in index]) for index in indices])


def add_markups(scene, points_lps: np.ndarray, name: str):
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", name)
    for point in points_lps @ LPS_TO_RAS.T:
        node.AddControlPoint(*point)
    return node


def markups_lps(node) -> np.ndarray:
    points = [node.GetNthControlPointPosition(i) for i in range(node.GetNumberOfControlPoints())]
    return np.array(points) @ LPS_TO_RAS.T


def test_apply_to_volume_matches_itk_resampling(scene, pair, result):
    fixed, moving = pair
    other = add_volume(scene, make_image(blob(shift=(0.2, -0.1, 0.1)) ** 1.5), "other moving-space volume")
    before = fingerprint(other)
    warped = transform_tools.apply_to_volume(scene, result.transform, other, fixed)
    expected = sitk.Resample(sitk_image_from_volume(other), sitk_image_from_volume(fixed), known_transform(fixed),
                             sitk.sitkLinear, 0.0)
    got = slicer.util.arrayFromVolume(warped)
    assert np.abs(got - sitk.GetArrayFromImage(expected)).max() < 1e-3 * np.abs(got).max()
    assert sitk_image_from_volume(warped).GetSize() == sitk_image_from_volume(fixed).GetSize()
    assert fingerprint(other) == before and warped is not other


def test_apply_to_label_map_and_segmentation_adds_no_label_values(scene, pair, result):
    fixed, moving = pair
    labels = add_volume(scene, make_image(label_array()), "moving labels", "vtkMRMLLabelMapVolumeNode")
    warped = transform_tools.apply_to_labels(scene, result.transform, labels, moving, fixed)
    assert isinstance(warped, slicer.vtkMRMLLabelMapVolumeNode)
    values = np.unique(slicer.util.arrayFromVolume(warped))
    assert set(values.tolist()) <= {0, 1, 2} and {1, 2} <= set(values.tolist())
    nearest = sitk.Resample(sitk_image_from_volume(labels), sitk_image_from_volume(fixed), known_transform(fixed),
                            sitk.sitkNearestNeighbor, 0)
    agreement = np.mean(slicer.util.arrayFromVolume(warped) == sitk.GetArrayFromImage(nearest))
    assert agreement > 0.97  # voting and nearest differ only on a few boundary voxels

    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "moving segmentation")
    segmentation.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    names = [segmentation.GetSegmentation().GetNthSegment(i).GetName() for i in range(2)]
    warped_segmentation = transform_tools.apply_to_labels(scene, result.transform, segmentation, moving, fixed)
    assert isinstance(warped_segmentation, slicer.vtkMRMLSegmentationNode)
    segments = warped_segmentation.GetSegmentation()
    assert sorted(segments.GetNthSegment(i).GetName() for i in range(segments.GetNumberOfSegments())) == sorted(names)


def test_markups_move_in_the_direction_asked(scene, pair, result):
    fixed, _ = pair
    fixed_image = sitk_image_from_volume(fixed)
    transform = known_transform(fixed)
    on_fixed = inner_points(fixed_image)
    on_moving = np.array([transform.TransformPoint(tuple(p)) for p in on_fixed])
    picked_on_moving = add_markups(scene, on_moving, "picked on moving")
    mapped = transform_tools.apply_to_markups(scene, result.transform, picked_on_moving, "moving-to-fixed")
    assert np.abs(markups_lps(mapped) - on_fixed).max() < 0.1  # mm, through Slicer's on-the-fly inverse
    picked_on_fixed = add_markups(scene, on_fixed, "picked on fixed")
    forward = transform_tools.apply_to_markups(scene, result.transform, picked_on_fixed, "fixed-to-moving")
    assert np.abs(markups_lps(forward) - on_moving).max() < 0.1
    assert forward.GetParentTransformNode() is None and mapped.GetParentTransformNode() is None
    assert np.allclose(markups_lps(picked_on_moving), on_moving)  # the input is untouched
    with pytest.raises(ValueError, match="direction must be one of"):
        transform_tools.apply_to_markups(scene, result.transform, picked_on_fixed, "sideways")


def test_inverse_node_maps_moving_points_back(scene, pair, result):
    fixed, moving = pair
    inverse = transform_tools.inverse_transform_node(scene, result.transform, "inverse")
    on_fixed = inner_points(sitk_image_from_volume(fixed), seed=3)
    transform = known_transform(fixed)
    on_moving = np.array([transform.TransformPoint(tuple(p)) for p in on_fixed])
    from_parent = inverse.GetTransformFromParent()  # the inverse's resampling direction: moving -> fixed
    back = np.array([from_parent.TransformPoint(tuple(q)) for q in on_moving @ LPS_TO_RAS.T]) @ LPS_TO_RAS.T
    assert np.abs(back - on_fixed).max() < 0.1
    moving_role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
    assert inverse.GetNodeReferenceID(moving_role) == fixed.GetID()
    assert result.transform.GetTransformFromParent().GetInverseFlag() == 0  # the result node is unchanged


@pytest.mark.parametrize("name, fmt", [("t.h5", None), ("t.tfm", "itk-tfm"), ("d.nii.gz", "nifti-displacement")])
def test_export_round_trips_through_simpleitk(scene, pair, result, tmp_path, name, fmt):
    fixed, _ = pair
    path = transform_tools.export_transform(result.transform, tmp_path / name, fmt)
    if name.endswith(".nii.gz"):
        read = sitk.DisplacementFieldTransform(sitk.Cast(sitk.ReadImage(str(path)), sitk.sitkVectorFloat64))
    else:
        read = sitk.ReadTransform(str(path))
    points = inner_points(sitk_image_from_volume(fixed), seed=5)
    expected = known_transform(fixed)
    error = max(np.linalg.norm(np.subtract(read.TransformPoint(tuple(p)), expected.TransformPoint(tuple(p))))
                for p in points)
    assert error < 1e-4


def test_export_l2r_needs_the_fixed_volume(scene, pair, result, tmp_path):
    fixed, _ = pair
    with pytest.raises(ValueError, match="l2r-voxel needs --reference"):
        transform_tools.export_transform(result.transform, tmp_path / "l2r.nii.gz", "l2r-voxel")
    path = transform_tools.export_transform(result.transform, tmp_path / "l2r.nii.gz", "l2r-voxel", reference=fixed)
    assert sitk.ReadImage(str(path)).GetSize() == (*sitk_image_from_volume(fixed).GetSize(), 3)
    with pytest.raises(ValueError, match="format must be one of"):
        transform_tools.export_transform(result.transform, tmp_path / "x.h5", "matlab")


def _lesion_segmentation(scene, volume):
    """Two segments on ``volume``'s grid (the pair's): "organ" (label 1) and "lesion" (label 2)."""
    labels = add_volume(scene, make_image(label_array()), "labels", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "masks")
    segmentation.CreateDefaultDisplayNodes()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labels, segmentation)
    segments = segmentation.GetSegmentation()
    for index, name in ((0, "organ"), (1, "lesion")):
        segments.GetNthSegment(index).SetName(name)
    scene.RemoveNode(labels)
    return segmentation


def test_mask_segments_reach_the_engine_on_the_image_grid(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    masks = _lesion_segmentation(scene, fixed)
    logic = fake_logic(scene, tmp_path, monkeypatch=monkeypatch)
    result = logic.register(fixed, moving, fixed_mask=masks, fixed_mask_segments=("lesion",))
    parameters = result.report["parameters"]
    assert parameters["fixed_mask_voxels"] == int(np.count_nonzero(label_array() == 2))
    assert parameters["fixed_mask_on_image_grid"] and "moving_mask_voxels" not in parameters
    both = logic.register(fixed, moving, moving_mask=masks)  # every segment (on the moving grid: same here)
    assert both.report["parameters"]["moving_mask_voxels"] == int(np.count_nonzero(label_array()))
    assert json.dumps(parameters)  # plain values


def test_bad_mask_requests_add_nothing(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    masks = _lesion_segmentation(scene, fixed)
    logic = fake_logic(scene, tmp_path, monkeypatch=monkeypatch)
    scene.AddNewNodeByClass("vtkMRMLSubjectHierarchyNode")  # Slicer's scene always has it
    before = node_ids(scene)
    with pytest.raises(ValueError, match=r"segment\(s\) \['tumour'\] are not in 'masks'"):
        logic.register(fixed, moving, fixed_mask=masks, fixed_mask_segments=("tumour",))
    with pytest.raises(ValueError, match="set iterations above 0"):
        logic.register(fixed, moving, fixed_mask=masks, iterations=0)
    with pytest.raises(ValueError, match="fixed mask labels must be a segmentation or label map"):
        logic.register(fixed, moving, fixed_mask=fixed)
    assert node_ids(scene) == before


def test_mask_segments_with_the_real_engine(scene, pair, tmp_path):
    """The same request through the real engine: the excluded fraction it reports is the lesion's share of
    the working grid (resampled, so about that of the fixed grid)."""
    from test_slicer_logic import REAL_ENGINE_AVAILABLE, REPO
    from SHMoARegistrationLib import SHMoARegistrationLogic

    if not REAL_ENGINE_AVAILABLE:
        pytest.skip("the engine's command line is not there")
    fixed, moving = pair
    masks = _lesion_segmentation(scene, fixed)
    logic = SHMoARegistrationLogic(scene, engine_root=REPO, temp_root=tmp_path)
    result = logic.register(fixed, moving, fixed_mask=masks, fixed_mask_segments=("lesion",), iterations=5,
                            affine=False, device="cpu", spacing_mm=2.0, timeout_s=300)
    masks_report = result.report["parameters"]["masks"]
    excluded = masks_report["fixed_excluded_fraction"]
    expected = np.count_nonzero(label_array() == 2) / label_array().size
    assert 0.5 * expected < excluded < 2 * expected, (excluded, expected)
    assert masks_report["moving_excluded_fraction"] is None
    print(f"excluded {excluded:.4f} of the working grid, lesion {expected:.4f} of the fixed grid")
