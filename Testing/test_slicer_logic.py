"""The Slicer module's Logic on a real MRML scene (PyPI ``slicer-core``; no Qt, no Slicer GUI).

Most tests run the Logic against ``slicer_fake_engine.py``, which writes the engine's
output folder for a known analytic displacement, so loading, RAS/LPS handling,
progress, failures and cancelling are checked independently of the network. The
``end_to_end`` tests run the real engine on small volumes; the ``slow`` test
(real abdominal CT) lives in ``slicer_realdata_check.py``.
"""
from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (real MRML)")
sitk = pytest.importorskip("SimpleITK")
import vtk  # noqa: E402  (installed with slicer-core)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SHMoARegExtension"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import slicer_fake_engine as fake  # noqa: E402
from SHMoARegistrationLib import (  # noqa: E402
    OutputNodes,
    RegistrationCancelled,
    RegistrationInputs,
    RegistrationOptions,
    SHMoARegistrationLogic,
)
from SHMoARegistrationLib import conversion, selftest  # noqa: E402
from SHMoARegistrationLib.metrics_table import metric_rows, metric_value  # noqa: E402
from SHMoARegistrationLib.preflight import GpuInfo  # noqa: E402

FAKE_ENGINE = [sys.executable, str(Path(fake.__file__).resolve()), "register"]
REAL_ENGINE_AVAILABLE = importlib.util.find_spec("SHMoAReg.__main__") is not None


# -- helpers ----------------------------------------------------------------------------------
def _register_segmentation_rules() -> None:
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


@pytest.fixture
def scene():
    """A scene like Slicer's: default colour tables and segmentation conversion rules."""
    _register_segmentation_rules()
    scene = slicer.vtkMRMLScene()
    color_logic = slicer.vtkMRMLColorLogic()
    color_logic.SetMRMLScene(scene)
    yield scene
    color_logic.SetMRMLScene(None)
    scene.Clear(1)


def make_image(array: np.ndarray, spacing=(1.5, 1.2, 2.0), origin=(10.0, -20.0, 5.0)) -> sitk.Image:
    """An image on a rotated (non-identity direction), anisotropic grid."""
    return selftest.make_image(array, spacing=spacing, origin=origin)


def add_volume(scene, image: sitk.Image, name: str, cls: str = "vtkMRMLScalarVolumeNode"):
    node = scene.AddNewNodeByClass(cls, name)
    conversion.update_volume_from_sitk(node, image)
    node.CreateDefaultDisplayNodes()
    return node


def blob(shape=(20, 24, 28), shift=(0.0, 0.0, 0.0)) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    return (100 * np.exp(-4 * ((x - shift[0]) ** 2 + (y - shift[1]) ** 2 + (z - shift[2]) ** 2))
            + 30 * np.exp(-12 * ((x + 0.4) ** 2 + (y - 0.3) ** 2 + z**2))).astype(np.float32)


def label_array(shape=(20, 24, 28)) -> np.ndarray:
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    labels = ((x**2 + y**2 + z**2) < 0.3).astype(np.uint8)
    labels[(x > 0.5) & (np.abs(y) < 0.3) & (np.abs(z) < 0.3)] = 2
    return labels


@pytest.fixture
def pair(scene):
    """Fixed and moving volume nodes on one grid with a rotated, anisotropic IJK-to-RAS."""
    fixed = add_volume(scene, make_image(blob(shift=(0.1, 0.0, 0.0))), "fixed")
    moving = add_volume(scene, make_image(blob(shift=(0.0, 0.1, 0.0))), "moving")
    return fixed, moving


def node_ids(scene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def fingerprint(node) -> tuple:
    """Voxels, geometry and modification time of a volume node."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    geometry = tuple(matrix.GetElement(r, c) for r in range(4) for c in range(4))
    return (slicer.util.arrayFromVolume(node).tobytes(), geometry, node.GetMTime(), node.GetImageData().GetMTime(),
            node.GetParentTransformNode())


def process_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie waiting for its reaper counts as ended)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def fake_logic(scene, tmp_path, mode: str = "ok", monkeypatch=None) -> SHMoARegistrationLogic:
    if monkeypatch is not None:
        monkeypatch.setenv("SHMOAREG_FAKE_MODE", mode)
        monkeypatch.setenv("SHMOAREG_FAKE_CHILD_PID", str(tmp_path / "child.pid"))
    return SHMoARegistrationLogic(scene, engine_command=FAKE_ENGINE, engine_root=REPO, temp_root=tmp_path / "temp")


def harden_copy(scene, moving, transform):
    """A copy of ``moving`` hardened through ``transform`` with Slicer's own transform logic."""
    copy = add_volume(scene, conversion.sitk_image_from_volume(moving), "hardened copy")
    copy.SetAndObserveTransformNodeID(transform.GetID())
    assert slicer.vtkSlicerTransformLogic.hardenTransform(copy)
    assert copy.GetParentTransformNode() is None
    return conversion.sitk_image_from_volume(copy)


def interior_rms(a: np.ndarray, b: np.ndarray, margin: int = 3) -> float:
    region = (slice(margin, -margin),) * 3
    return float(np.sqrt(np.mean((a[region] - b[region]) ** 2)))


def random_interior_points_lps(image: sitk.Image, count: int, seed: int = 0, on_voxels: bool = False) -> np.ndarray:
    """LPS points inside ``image`` (at voxel centres if ``on_voxels``, where a sampled field is exact)."""
    rng = np.random.default_rng(seed)
    index = rng.uniform(2, np.array(image.GetSize()) - 3, size=(count, 3))
    if on_voxels:
        index = np.round(index)
    return np.array([image.TransformContinuousIndexToPhysicalPoint(i.tolist()) for i in index])


# -- 1. known analytic deformation through MRML -------------------------------------------------
def test_known_deformation_loads_with_correct_direction(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    logic = fake_logic(scene, tmp_path, monkeypatch=monkeypatch)
    result = logic.register(fixed, moving)

    # The grid transform (from parent, RAS) equals the known field x -> x + u(x).
    fixed_image = conversion.sitk_image_from_volume(fixed)
    points_lps = random_interior_points_lps(fixed_image, 50, on_voxels=True)
    centre, scale = selftest.field_frame(fixed_image)
    expected_ras = (points_lps + selftest.known_displacement_lps(points_lps, centre, scale)) * [-1, -1, 1]
    from_parent = result.transform.GetTransformFromParent()
    actual_ras = np.array([from_parent.TransformPoint((p * [-1, -1, 1]).tolist()) for p in points_lps])
    np.testing.assert_allclose(actual_ras, expected_ras, atol=1e-3)
    assert result.transform.IsA("vtkMRMLGridTransformNode")
    assert slicer.util.arrayFromGridTransform(result.transform).shape == fixed_image.GetSize()[::-1] + (3,)

    # Hardening the transform on a copy of the moving volume is ITK's resampling through the known field,
    # and (up to a second interpolation) the engine's warped volume.
    known = sitk.DisplacementFieldTransform(sitk.Cast(selftest.known_displacement_image(fixed_image), sitk.sitkVectorFloat64))
    assert selftest.hardening_error(scene, moving, result.transform, known, fixed_image) < 1e-3
    hardened = harden_copy(scene, moving, result.transform)
    warped = conversion.sitk_image_from_volume(result.warped_volume)
    assert conversion.same_geometry(warped, fixed_image)
    on_fixed = sitk.GetArrayFromImage(sitk.Resample(hardened, fixed_image, sitk.Transform(), sitk.sitkLinear, 0.0))
    warped_array = sitk.GetArrayFromImage(warped)
    moving_array = slicer.util.arrayFromVolume(moving)
    error = interior_rms(on_fixed, warped_array)
    assert error < 0.03 * interior_rms(warped_array, 0 * warped_array)
    assert error < 0.2 * interior_rms(moving_array, warped_array)  # the field matters, and its sign is right


def test_transform_node_references_and_inverse(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    result = fake_logic(scene, tmp_path, monkeypatch=monkeypatch).register(fixed, moving)
    transform = result.transform
    assert transform.GetNodeReference(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()) is moving
    assert transform.GetNodeReference(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()) is fixed
    # Slicer inverts grid transforms on the fly: to-parent o from-parent ~ identity.
    point = conversion.sitk_image_from_volume(fixed).TransformContinuousIndexToPhysicalPoint((10, 11, 9))
    ras = np.array(point) * [-1, -1, 1]
    there = transform.GetTransformFromParent().TransformPoint(ras.tolist())
    back = transform.GetTransformToParent().TransformPoint(there)
    np.testing.assert_allclose(back, ras, atol=1e-2)


# -- 2. transform storage round trip ------------------------------------------------------------
def test_transform_storage_matches_engine_h5(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    result = fake_logic(scene, tmp_path, monkeypatch=monkeypatch).register(fixed, moving, keep_temp=True)
    engine_transform = sitk.ReadTransform(str(result.output_dir / "transform.h5"))
    # Voxel centres: there every reader's interpolation (ITK linear, Slicer's cubic for .h5) is exact.
    points = random_interior_points_lps(conversion.sitk_image_from_volume(fixed), 30, seed=1, on_voxels=True)

    # Slicer -> file -> SimpleITK equals the engine's transform.h5.
    storage = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    storage.SetFileName(str(tmp_path / "saved by slicer.h5"))
    assert storage.WriteData(result.transform)
    saved = sitk.ReadTransform(str(tmp_path / "saved by slicer.h5"))
    for p in points:
        np.testing.assert_allclose(saved.TransformPoint(p.tolist()), engine_transform.TransformPoint(p.tolist()), atol=1e-4)

    # The engine's transform.h5 read by Slicer equals the loaded grid transform.
    loaded = scene.AddNewNodeByClass("vtkMRMLTransformNode", "read by slicer")
    reader = scene.AddNewNodeByClass("vtkMRMLTransformStorageNode")
    reader.SetFileName(str(result.output_dir / "transform.h5"))
    assert reader.ReadData(loaded)
    for p in points:
        ras = (p * [-1, -1, 1]).tolist()
        np.testing.assert_allclose(
            loaded.GetTransformFromParent().TransformPoint(ras),
            result.transform.GetTransformFromParent().TransformPoint(ras), atol=1e-4,
        )
    displacement = sitk.ReadImage(str(result.output_dir / "displacement.nii.gz"))
    back = conversion.displacement_from_grid_transform(result.transform)
    assert conversion.same_geometry(back, displacement)
    np.testing.assert_allclose(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(displacement), atol=1e-5)


# -- 3. inputs untouched, cancel adds nothing, second run adds new nodes ------------------------
def test_inputs_unchanged_and_second_run_adds_new_nodes(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    fixed_labels = add_volume(scene, make_image(label_array()), "fixed labels", "vtkMRMLLabelMapVolumeNode")
    moving_labels = add_volume(scene, make_image(label_array()), "moving labels", "vtkMRMLLabelMapVolumeNode")
    segmentations = []
    for role in ("fixed", "moving"):
        segmentations.append(scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{role} segmentation"))
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(fixed_labels, segmentations[-1])
    volumes = (fixed, moving, fixed_labels, moving_labels)
    before = {node.GetName(): fingerprint(node) for node in volumes}
    segmentation_mtimes = [(node.GetMTime(), node.GetSegmentation().GetMTime()) for node in segmentations]
    logic = fake_logic(scene, tmp_path, monkeypatch=monkeypatch)

    first = logic.register(fixed, moving, fixed_labels=fixed_labels, moving_labels=moving_labels)
    first_warped = slicer.util.arrayFromVolume(first.warped_volume).copy()
    first_field = slicer.util.arrayFromGridTransform(first.transform).copy()
    after_first = node_ids(scene)
    second = logic.register(fixed, moving, fixed_labels=segmentations[0], moving_labels=segmentations[1])

    assert {node.GetName(): fingerprint(node) for node in volumes} == before
    assert [(node.GetMTime(), node.GetSegmentation().GetMTime()) for node in segmentations] == segmentation_mtimes
    assert first.warped_labels.IsA("vtkMRMLLabelMapVolumeNode") and second.warped_labels.IsA("vtkMRMLSegmentationNode")
    assert not {node.GetID() for node in first.nodes()} & {node.GetID() for node in second.nodes()}
    assert all(scene.IsNodePresent(node) for node in first.nodes())
    np.testing.assert_array_equal(slicer.util.arrayFromVolume(first.warped_volume), first_warped)
    np.testing.assert_array_equal(slicer.util.arrayFromGridTransform(first.transform), first_field)
    assert after_first < node_ids(scene)
    assert not list((tmp_path / "temp").iterdir())  # temporary folders removed


def test_user_chosen_output_nodes_are_reused(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    chosen = OutputNodes(
        warped_volume=scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "my output"),
        transform=scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "my transform"),
        metrics_table=scene.AddNewNodeByClass("vtkMRMLTableNode", "my table"),
    )
    result = fake_logic(scene, tmp_path, monkeypatch=monkeypatch).register(fixed, moving, outputs=chosen)
    assert result.warped_volume is chosen.warped_volume
    assert result.transform is chosen.transform
    assert result.metrics_table is chosen.metrics_table
    with pytest.raises(ValueError, match="is an input"):
        fake_logic(scene, tmp_path).register(fixed, moving, outputs=OutputNodes(warped_volume=moving))
    linear = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "linear")
    with pytest.raises(ValueError, match="grid transform"):
        fake_logic(scene, tmp_path).register(fixed, moving, outputs=OutputNodes(transform=linear))


def test_cancel_kills_process_tree_and_adds_no_nodes(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    logic = fake_logic(scene, tmp_path, mode="slow", monkeypatch=monkeypatch)
    before = node_ids(scene)
    job = logic.start(RegistrationInputs(fixed, moving))
    deadline = time.monotonic() + 30
    while job.poll().progress < 0.12 and time.monotonic() < deadline:
        time.sleep(0.05)
    snapshot = job.poll()
    assert snapshot.running and snapshot.stage == "optimise" and snapshot.remaining_s is not None
    child_pid = int((tmp_path / "child.pid").read_text())
    job.cancel()
    with pytest.raises(RegistrationCancelled):
        logic.finish(job)
    assert node_ids(scene) == before
    assert not job.temp_dir.exists()
    deadline = time.monotonic() + 5
    while process_alive(child_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not process_alive(child_pid)  # the engine's child process is gone too


def test_should_cancel_in_synchronous_register(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    logic = fake_logic(scene, tmp_path, mode="slow", monkeypatch=monkeypatch)
    before = node_ids(scene)
    seen = []
    with pytest.raises(RegistrationCancelled):
        logic.register(fixed, moving, progress=seen.append, should_cancel=lambda: len(seen) > 5)
    assert node_ids(scene) == before


# -- 4. bad inputs ------------------------------------------------------------------------------
def _bad_volume(scene, kind: str):
    if kind == "none":
        return None
    if kind == "2-D":
        return add_volume(scene, make_image(blob((1, 24, 28))), "flat")
    if kind == "vector":
        node = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "vector")
        slicer.util.updateVolumeFromArray(node, np.random.default_rng(0).random((20, 24, 28, 4)).astype(np.float32))
        return node
    if kind == "no image":
        return scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "no image")
    if kind == "constant":
        return add_volume(scene, make_image(np.zeros((20, 24, 28), np.float32)), "constant")
    if kind == "nan":
        array = blob()
        array[3, 4, 5] = np.nan
        return add_volume(scene, make_image(array), "nan")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, message",
    [("none", "no moving volume"), ("2-D", "2-D"), ("vector", "4 components"), ("no image", "no image data"),
     ("constant", "constant"), ("nan", "NaN")],
)
def test_bad_moving_volume_raises_and_adds_nothing(scene, pair, tmp_path, kind, message):
    fixed, _ = pair
    bad = _bad_volume(scene, kind)
    before = node_ids(scene)
    with pytest.raises(ValueError, match=message):
        fake_logic(scene, tmp_path).register(fixed, bad)
    assert node_ids(scene) == before
    assert not (tmp_path / "temp").exists() or not list((tmp_path / "temp").iterdir())


def test_labels_on_another_grid_raise(scene, pair, tmp_path):
    fixed, moving = pair
    other = add_volume(scene, make_image(label_array((10, 12, 14)), spacing=(3, 2.4, 4)), "coarse labels",
                       "vtkMRMLLabelMapVolumeNode")
    empty_segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "empty")
    lone_landmarks = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "lone landmarks")
    before = node_ids(scene)
    logic = fake_logic(scene, tmp_path)
    with pytest.raises(ValueError, match="another grid"):
        logic.register(fixed, moving, fixed_labels=other)
    with pytest.raises(ValueError, match="no segments"):
        logic.register(fixed, moving, moving_labels=empty_segmentation)
    with pytest.raises(ValueError, match="must be of one kind"):
        logic.register(fixed, moving, fixed_labels=other, moving_labels=empty_segmentation)
    with pytest.raises(ValueError, match="both fixed and moving landmarks"):
        logic.register(fixed, moving, fixed_landmarks=lone_landmarks)
    with pytest.raises(ValueError, match="unknown registration option"):
        logic.register(fixed, moving, iteration=3)
    with pytest.raises(ValueError, match="preset"):
        logic.register(fixed, moving, preset="knee")
    assert node_ids(scene) == before


def test_engine_failure_reports_message_and_adds_nothing(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    before = node_ids(scene)
    with pytest.raises(RuntimeError, match="the image is constant"):
        fake_logic(scene, tmp_path, mode="fail", monkeypatch=monkeypatch).register(fixed, moving)
    monkeypatch.setenv("SHMOAREG_FAKE_MODE", "missing")
    with pytest.raises(RuntimeError, match="warped.nii.gz"):
        fake_logic(scene, tmp_path).register(fixed, moving)
    assert node_ids(scene) == before


# -- outputs: labels, metrics, maps, presentation ----------------------------------------------
def test_segmentation_metrics_and_maps(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    segmentations = []
    for role in ("fixed", "moving"):
        source = add_volume(scene, make_image(label_array()), f"{role} source", "vtkMRMLLabelMapVolumeNode")
        node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{role} segmentation")
        slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, node)
        names = ("liver", "spleen") if role == "fixed" else ("spleen", "liver")  # matched by name, not order
        segmentation = node.GetSegmentation()
        for index in range(2):
            segmentation.GetNthSegment(index).SetName(names[index] if role == "fixed" else names[1 - index])
        segmentations.append(node)
    result = fake_logic(scene, tmp_path, monkeypatch=monkeypatch).register(
        fixed, moving, fixed_labels=segmentations[0], moving_labels=segmentations[1]
    )
    warped = result.warped_labels
    assert warped.IsA("vtkMRMLSegmentationNode")
    names = sorted(warped.GetSegmentation().GetNthSegment(i).GetName() for i in range(warped.GetSegmentation().GetNumberOfSegments()))
    assert names == ["liver", "spleen"]
    assert metric_value(result.metrics_table, "Dice mean", "Before") == pytest.approx(1.0)
    assert 0.5 < metric_value(result.metrics_table, "Dice (liver)") < 1.0
    assert result.metrics_table.GetAttribute("SHMoAReg.device") == "cpu"
    assert [m.GetAttribute("SHMoAReg.axis") for m in result.expert_maps] == ["z", "y", "x"] * 2
    colors = result.expert_maps[0].GetDisplayNode().GetColorNode()
    assert colors.GetNumberOfColors() == 4 and colors.GetColorName(3) == "expert 3 (k=9)"
    jacobian = slicer.util.arrayFromVolume(result.jacobian)
    assert 0.5 < jacobian.min() <= 1.0 <= jacobian.max() < 1.5


def test_options_switch_off_maps_and_apply_transform(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    composite = scene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
    logic = fake_logic(scene, tmp_path, monkeypatch=monkeypatch)
    result = logic.register(fixed, moving, jacobian=False, expert_maps=False, apply_transform_to_moving=True)
    assert result.jacobian is None and result.expert_maps == []
    assert moving.GetParentTransformNode() is result.transform
    logic.show_in_views(fixed, result.warped_volume)
    assert composite.GetBackgroundVolumeID() == fixed.GetID()
    assert composite.GetForegroundVolumeID() == result.warped_volume.GetID()


def test_progress_and_log_reach_the_caller(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    seen = []
    result = fake_logic(scene, tmp_path, monkeypatch=monkeypatch).register(fixed, moving, progress=seen.append)
    assert seen[-1].stage == "done" and seen[-1].progress == 1.0 and not seen[-1].running
    assert [s.progress for s in seen] == sorted(s.progress for s in seen)
    assert any("fake engine: mode ok" in line for line in result.log)


def test_linear_parent_transform_is_part_of_the_input_geometry(scene, pair):
    fixed, _ = pair
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = (5.0, -3.0, 7.0)
    slicer.util.updateTransformMatrixFromArray(parent, matrix)
    plain = conversion.sitk_image_from_volume(fixed)
    fixed.SetAndObserveTransformNodeID(parent.GetID())
    moved = conversion.sitk_image_from_volume(fixed)
    np.testing.assert_allclose(np.array(moved.GetOrigin()) - plain.GetOrigin(), (-5.0, 3.0, 7.0), atol=1e-9)


def test_segmentation_export_follows_a_transformed_volume(scene):
    """A segmentation in world coordinates is exported onto the world grid of a volume under a linear transform."""
    from SHMoARegistrationLib import labels

    labels_image = make_image(label_array())
    volume = add_volume(scene, make_image(blob()), "volume")
    source = add_volume(scene, labels_image, "source", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(source, segmentation)
    parent = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    matrix = np.eye(4)
    matrix[:3, 3] = (6.0, 0.0, 0.0)
    slicer.util.updateTransformMatrixFromArray(parent, matrix)
    volume.SetAndObserveTransformNodeID(parent.GetID())
    reference = conversion.sitk_image_from_volume(volume)
    exported = labels.label_image_from_node(
        scene, segmentation, volume, reference, labels.label_table_for(segmentation, None), "fixed"
    )
    expected = sitk.Resample(labels_image, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(exported) > 0, sitk.GetArrayFromImage(expected) > 0)
    assert conversion.same_geometry(exported, reference)


def test_metric_rows_from_report():
    report = {"metrics": {"dice": {"1": 0.9}, "dice_before": {"1": 0.5}, "dice_mean": 0.9, "dice_mean_before": 0.5,
                          "tre_mm": 1.5, "tre_mm_before": 4.0, "folding_fraction": 0.0},
              "timings_s": {"network": 1.25}}
    rows = metric_rows(report, label_name=lambda key: {"1": "liver"}[key])
    assert rows[0] == ("Dice mean", 0.5, 0.9, "")
    assert ("Dice (liver)", 0.5, 0.9, "") in rows
    assert ("TRE", 4.0, 1.5, "mm") in rows
    assert rows[-1][0] == "Time network" and np.isnan(rows[-1][1])


# -- options and preflight ----------------------------------------------------------------------
def test_options_to_engine_arguments():
    options = RegistrationOptions(iterations=20, affine=False, device="cpu", spacing_mm=2.5, diffeomorphic=True)
    arguments = options.engine_arguments()
    assert arguments[:6] == ["--preset", "auto", "--device", "cpu", "--seed", "0"]
    assert {"--no-affine", "--diffeomorphic"} <= set(arguments)
    assert arguments[arguments.index("--iterations") + 1] == "20"
    assert arguments[arguments.index("--spacing") + 1] == "2.5"
    for bad in ({"device": "tpu"}, {"iterations": -1}, {"spacing_mm": 0.0}):
        with pytest.raises(ValueError):
            RegistrationOptions.from_keywords(**bad)


def test_preflight_findings(scene, pair, tmp_path):
    fixed, moving = pair
    far = add_volume(scene, make_image(blob(), origin=(500.0, 0.0, 0.0)), "far away")
    logic = fake_logic(scene, tmp_path)
    assert logic.preflight(fixed, moving, RegistrationOptions(device="cpu")) == []
    findings = logic.preflight(fixed, far, RegistrationOptions(affine=False, device="cpu"))
    assert findings[0].suggestion == {"affine": True}
    findings = logic.preflight(fixed, moving, RegistrationOptions(device="cuda"), gpu=None)
    assert findings[0].suggestion == {"device": "cpu"}
    small_gpu = GpuInfo("Small GPU", total_mb=100.0, free_mb=8.0)
    findings = logic.preflight(fixed, moving, RegistrationOptions(device="auto", spacing_mm=0.2), gpu=small_gpu)
    assert findings[0].suggestion["spacing_mm"] > 0.2
    tiny_gpu = GpuInfo("Tiny GPU", total_mb=100.0, free_mb=1.0)  # less than the fixed-grid outputs alone
    findings = logic.preflight(fixed, moving, RegistrationOptions(device="auto", spacing_mm=0.2), gpu=tiny_gpu)
    assert findings[0].suggestion == {"device": "cpu"}


NON_ASCII_NAME = "tëmp ü 図"


def _filesystem_can_name(name: str) -> bool:
    try:
        os.fsencode(name)
        return True
    except UnicodeEncodeError:
        return False


@pytest.mark.skipif(not _filesystem_can_name(NON_ASCII_NAME),
                    reason=f"this Python's filesystem encoding ({sys.getfilesystemencoding()}: an ASCII locale without "
                           f"UTF-8 mode) cannot name non-ASCII paths at all; Slicer runs in UTF-8")
def test_non_ascii_temporary_folder(scene, pair, tmp_path, monkeypatch):
    fixed, moving = pair
    monkeypatch.setenv("SHMOAREG_FAKE_MODE", "ok")
    logic = SHMoARegistrationLogic(scene, engine_command=FAKE_ENGINE, engine_root=REPO, temp_root=tmp_path / NON_ASCII_NAME)
    result = logic.register(fixed, moving)
    assert result.warped_volume.GetImageData() is not None


# -- end to end with the real engine ------------------------------------------------------------
end_to_end = pytest.mark.skipif(not REAL_ENGINE_AVAILABLE, reason="the engine's command line (SHMoAReg.__main__) is not there yet")


@end_to_end
def test_real_engine_known_deformation(scene, tmp_path):
    """The real engine on a 32x36x40 rotated volume deformed by the known field (the module's self-test scenario)."""
    logic = SHMoARegistrationLogic(scene, engine_root=REPO, temp_root=tmp_path)
    figures = selftest.run_known_deformation(logic, iterations=20, affine=False, device="cpu", timeout_s=300)
    assert figures["hardening_error"] < 1e-3  # Slicer's hardening == ITK resampling through displacement.nii.gz
    assert figures["rms_after"] < 0.6 * figures["rms_before"]
    assert figures["field_error_mm"] < 0.5 * figures["field_mm"]
    assert figures["folding_fraction"] < 0.01
    assert not list(tmp_path.iterdir())


@end_to_end
def test_real_engine_cancel_stops_cleanly_and_adds_no_nodes(scene, pair, tmp_path):
    fixed, moving = pair
    logic = SHMoARegistrationLogic(scene, engine_root=REPO, temp_root=tmp_path)
    before = node_ids(scene)
    job = logic.start(RegistrationInputs(fixed, moving), RegistrationOptions(iterations=5000, affine=False, device="cpu"))
    deadline = time.monotonic() + 120
    while job.poll().stage != "optimise" and job.last.running and time.monotonic() < deadline:
        time.sleep(0.1)
    job.cancel(wait=False)  # as the GUI does: SIGTERM now, the timer keeps polling
    while not job.done:
        time.sleep(0.1)
    assert job.last.final is not None and job.last.final["stage"] == "cancelled"  # the engine stopped by itself
    with pytest.raises(RegistrationCancelled):
        logic.finish(job)
    assert node_ids(scene) == before and not job.temp_dir.exists()


# -- real data (slow) ---------------------------------------------------------------------------
import slicer_realdata_check as realdata  # noqa: E402


@pytest.mark.slow
@pytest.mark.skipif(not realdata.data_available(), reason=f"real CT not found at {realdata.CT}")
@end_to_end
def test_real_ct_known_deformation():
    """Abdominal CT vs a known deformation of itself, through MRML (figures: Testing/slicer_realdata_check.py)."""
    figures = realdata.run_check(iterations=20, device="cpu")
    print(figures)
    assert figures["dice_mean_after"] > figures["dice_mean_before"] + 0.1
    assert figures["displacement_error_mm_mean"] < 0.4 * figures["known_displacement_mm_mean"]
    assert figures["folding_fraction"] < 0.01
