"""The Slicer module says what the engine says: pre-flight spacing and memory from ``SHMoAReg/preprocess/grid_rules.py``,
and the Logic's choice of transform tool by node class (``logic.warp_node``).

Small and fast: no engine run and no resampling (the transform tools are replaced by recorders).
"""
from __future__ import annotations

import ast
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

slicer = pytest.importorskip("slicer", reason="needs the slicer-core package (real MRML)")
sitk = pytest.importorskip("SimpleITK")

from test_slicer_logic import REPO, add_volume, blob, label_array, make_image, scene  # noqa: E402,F401 (fixture)
from SHMoARegistrationLib import RegistrationOptions, SHMoARegistrationLogic  # noqa: E402
from SHMoARegistrationLib import conversion, preflight, transform_tools  # noqa: E402
from SHMoARegistrationLib.engine import import_engine_module  # noqa: E402

grid_rules = import_engine_module("SHMoAReg.preprocess.grid_rules")
presets = import_engine_module("SHMoAReg.preprocess.presets")
UI_FILE = REPO / "SHMoARegExtension" / "Resources" / "UI" / "SHMoARegistration.ui"


# -- pre-flight = engine ------------------------------------------------------------------------
def _budget(preset: str) -> int:
    """The engine's working-grid voxel budget of ``preset`` (for auto: the largest of any preset)."""
    if preset == "auto":
        return max(p.max_working_voxels for p in presets.PRESETS.values())
    return presets.PRESETS[preset].max_working_voxels


@pytest.mark.parametrize("preset, requested, spacing, expected", [
    ("brain-mri", None, (1.5, 1.2, 2.0), 1.5),  # the preset's
    ("abdomen-ct", None, (3.0, 3.0, 3.0), 3.0),  # never finer than the fixed image
    ("abdomen-ct", 0.5, (1.5, 1.2, 2.0), 0.5),  # a requested spacing is taken as it is, as the engine does
    ("auto", None, (1.0, 1.0, 1.0), 1.5),  # auto: the finest spacing of any preset
])
def test_preflight_spacing_is_the_engine_rule(scene, preset, requested, spacing, expected):
    fixed = add_volume(scene, make_image(blob((10, 12, 14)), spacing=spacing), "fixed")
    options = RegistrationOptions(preset=preset, spacing_mm=requested)
    size = fixed.GetImageData().GetDimensions()
    budget = _budget(preset)
    engine = grid_rules.working_spacing(requested, preflight.preset_spacing_mm(preset), min(spacing), size, spacing,
                                        budget)
    assert preflight.working_spacing_mm(fixed, options) == pytest.approx(engine) == expected
    assert preflight.preset_spacing_mm("auto") == min(p.spacing for p in presets.PRESETS.values())


@pytest.mark.parametrize("preset", ["generic", "brain-mri", "auto"])
def test_preflight_spacing_keeps_the_engines_voxel_budget(scene, preset):
    """A large fixed volume: the engine coarsens its working grid to the preset's voxel budget, and so does
    pre-flight (for auto: the largest budget of any preset, as it takes the finest spacing)."""
    fixed = add_volume(scene, make_image(np.zeros((130, 130, 130), np.float32), spacing=(2.0, 2.0, 2.0)), "large")
    options = RegistrationOptions(preset=preset)
    size = fixed.GetImageData().GetDimensions()
    budget = _budget(preset)
    engine = grid_rules.working_spacing(None, preflight.preset_spacing_mm(preset), 2.0, size, (2.0,) * 3, budget)
    assert preflight.working_spacing_mm(fixed, options) == pytest.approx(engine)
    assert engine > 2.0
    assert np.prod(grid_rules.working_grid_size(size, (2.0,) * 3, engine)) <= budget


def test_memory_figures_are_the_engines():
    memory = import_engine_module("SHMoAReg.pipeline.memory")  # imports torch: only this test needs it
    for name in ("BYTES_PER_WORKING_VOXEL", "BYTES_PER_WORKING_VOXEL_NETWORK", "BYTES_PER_FIXED_VOXEL"):
        assert getattr(preflight, name) is getattr(grid_rules, name) is getattr(memory, name), name
    assert memory.estimate_bytes is grid_rules.estimate_bytes
    assert import_engine_module("SHMoAReg.io.validation").MIN_WORKING_VOXELS is grid_rules.MIN_WORKING_VOXELS


@pytest.mark.parametrize("preset, weights, network", [("abdomen-ct", None, True), ("generic", None, False),
                                                      ("abdomen-ct", "none", False), ("auto", None, True)])
def test_preflight_estimate_is_the_engines(scene, preset, weights, network):
    """The figure the engine's memory guard computes for the same volume (its working grid from ``grid.py``)."""
    grid = import_engine_module("SHMoAReg.preprocess.grid")  # imports torch
    memory = import_engine_module("SHMoAReg.pipeline.memory")
    fixed = add_volume(scene, make_image(blob()), "fixed")
    options = RegistrationOptions(preset=preset, weights=weights)
    image = conversion.sitk_image_from_volume(fixed)
    budget = _budget(preset)
    spacing = grid_rules.working_spacing(None, preflight.preset_spacing_mm(preset), min(image.GetSpacing()),
                                         image.GetSize(), image.GetSpacing(), budget)
    engine = memory.estimate_bytes(grid.working_grid(image, spacing).GetSize(), image.GetSize(), network) / 2**20
    assert preflight.uses_network(options) is network
    assert preflight.estimate_memory_mb(fixed, options) == engine


def test_suggested_spacing_fits_and_the_gui_can_show_it(scene):
    fixed = add_volume(scene, make_image(blob()), "fixed")
    options = RegistrationOptions(spacing_mm=0.2)
    suggested = preflight.suggest_spacing_mm(fixed, options, free_mb=8.0)
    assert 0.2 < suggested <= preflight.MAX_SUGGESTED_SPACING_MM
    needed = preflight.estimate_memory_mb(fixed, RegistrationOptions(spacing_mm=suggested))
    assert needed <= preflight.GPU_MEMORY_MARGIN * 8.0
    assert preflight.suggest_spacing_mm(fixed, options, free_mb=1.0) is None  # the outputs alone do not fit
    spin_box = next(w for w in ElementTree.parse(UI_FILE).getroot().iter("widget")
                    if w.get("name") == "workingSpacingSpinBox")
    maximum = float(next(p for p in spin_box.findall("property") if p.get("name") == "maximum").find("double").text)
    assert preflight.MAX_SUGGESTED_SPACING_MM <= maximum


def test_grid_rules_import_only_the_standard_library():
    tree = ast.parse((REPO / "SHMoAReg" / "preprocess" / "grid_rules.py").read_text(encoding="utf-8"))
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.level == 0}
    assert imported <= {"__future__", "math", "collections"}, imported


# -- the Logic's warp-node dispatch -------------------------------------------------------------
@pytest.fixture
def recorded(monkeypatch):
    """Replace the three transform tools by recorders: ``[(tool name, args, kwargs), ...]``."""
    calls = []

    def recorder(tool: str):
        def record(*args, **kwargs):
            calls.append((tool, args, kwargs))
            return tool
        return record

    for tool in ("apply_to_volume", "apply_to_labels", "apply_to_markups"):
        monkeypatch.setattr(transform_tools, tool, recorder(tool))
    return calls


def test_warp_node_dispatches_on_the_node_class(scene, recorded):
    logic = SHMoARegistrationLogic(scene, engine_command=["unused"], engine_root=REPO)
    transform = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "result")
    fixed = add_volume(scene, make_image(blob()), "fixed")
    moving = add_volume(scene, make_image(blob()), "moving")
    labels = add_volume(scene, make_image(label_array()), "labels", "vtkMRMLLabelMapVolumeNode")
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "segmentation")
    points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "points")

    assert logic.warp_node(transform, moving, fixed) == "apply_to_volume"
    assert recorded[-1][1] == (scene, transform, moving, fixed)
    assert logic.warp_node(transform, labels, fixed) == "apply_to_labels"  # a label map is a scalar volume too
    assert recorded[-1][1] == (scene, transform, labels, labels, fixed, None)  # sampled from its own grid
    assert logic.warp_node(transform, segmentation, fixed, moving_volume=moving) == "apply_to_labels"
    assert recorded[-1][1] == (scene, transform, segmentation, moving, fixed, None)
    logic.warp_node(transform, segmentation, fixed)
    assert recorded[-1][1][3] is fixed  # no moving volume: exported on the reference grid
    assert logic.warp_node(transform, points, None, direction="fixed-to-moving") == "apply_to_markups"
    assert recorded[-1][1] == (scene, transform, points, "fixed-to-moving", None)

    count = len(recorded)
    with pytest.raises(ValueError, match="reference grid"):
        logic.warp_node(transform, moving, None)
    with pytest.raises(ValueError, match="expected a scalar volume"):
        logic.warp_node(transform, scene.AddNewNodeByClass("vtkMRMLTableNode", "table"), fixed)
    with pytest.raises(ValueError, match="choose a transform"):
        logic.warp_node(None, moving, fixed)
    assert len(recorded) == count
