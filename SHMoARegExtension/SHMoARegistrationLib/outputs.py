"""Load an engine output folder into new (or user-chosen) MRML nodes.

The folder layout is the engine's contract: ``warped.nii.gz``, ``displacement.nii.gz``
(total displacement, LPS mm, on the fixed grid), ``jacobian.nii.gz``,
``warped_labels.nii.gz``, ``experts/layer{L}_{z|y|x}.nii.gz`` (+ ``experts.json``)
and ``report.json``. Volumes are copied into the scene (the nodes keep no storage
node pointing into the temporary folder, which is removed afterwards).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk
import slicer

from .conversion import grid_transform_from_displacement, volume_node_from_sitk
from .labels import LabelTable, import_label_image
from .metrics_table import update_metrics_table

__all__ = ["OutputNodes", "RegistrationResult", "load_results", "EXPERT_COLORS"]

logger = logging.getLogger("SHMoARegistration")

# A categorical palette (Okabe-Ito, then Tableau) for expert indices 0, 1, 2, ...
EXPERT_COLORS: tuple[tuple[float, float, float], ...] = tuple(
    tuple(int(code[i : i + 2], 16) / 255.0 for i in (0, 2, 4))  # type: ignore[misc]
    for code in (
        "E69F00", "56B4E9", "009E73", "F0E442", "0072B2", "D55E00", "CC79A7", "999999",
        "1F77B4", "FF7F0E", "2CA02C", "D62728", "9467BD", "8C564B", "E377C2", "BCBD22",
    )
)
_EXPERT_FILE = re.compile(r"layer(?P<layer>\d+)_(?P<axis>[zyx])\.nii(\.gz)?$")


@dataclass
class OutputNodes:
    """Existing nodes to overwrite with the results (None: add a new node)."""

    warped_volume: slicer.vtkMRMLScalarVolumeNode | None = None
    transform: slicer.vtkMRMLTransformNode | None = None
    jacobian: slicer.vtkMRMLScalarVolumeNode | None = None
    warped_labels: object | None = None
    metrics_table: slicer.vtkMRMLTableNode | None = None

    def nodes(self) -> list:
        return [node for node in vars(self).values() if node is not None]


@dataclass
class RegistrationResult:
    """The nodes a run produced (or updated), its report and where its files were."""

    warped_volume: slicer.vtkMRMLScalarVolumeNode
    transform: slicer.vtkMRMLTransformNode
    metrics_table: slicer.vtkMRMLTableNode
    report: dict
    jacobian: slicer.vtkMRMLScalarVolumeNode | None = None
    warped_labels: object | None = None
    expert_maps: list = field(default_factory=list)
    output_dir: Path | None = None
    log: list[str] = field(default_factory=list)

    def nodes(self) -> list:
        """Every node of the result (for removing them, or checking what a run added)."""
        nodes = [self.warped_volume, self.transform, self.metrics_table, self.jacobian, self.warped_labels]
        return [node for node in nodes + list(self.expert_maps) if node is not None]


def _read_image(path: Path) -> sitk.Image:
    if not path.is_file():
        raise RuntimeError(f"the engine did not write {path.name} into {path.parent}")
    return sitk.ReadImage(str(path))


def _use_color(node, color_node_id: str) -> None:
    display = node.GetDisplayNode()
    scene = node.GetScene()
    if display is not None and scene is not None and scene.GetNodeByID(color_node_id) is not None:
        display.SetAndObserveColorNodeID(color_node_id)


def _expert_color_table(scene, kernel_sizes: list) -> slicer.vtkMRMLColorTableNode:
    """A categorical colour table "expert n (k=K)", shared by runs with the same experts."""
    names = [f"expert {index}" + (f" (k={size})" if size is not None else "") for index, size in enumerate(kernel_sizes)]
    name = "SHMoAReg experts: " + ", ".join(names)
    existing = scene.GetFirstNodeByName(name)
    if isinstance(existing, slicer.vtkMRMLColorTableNode):
        return existing
    table = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    table.SetTypeToUser()
    table.SetNumberOfColors(len(names))
    for index, label in enumerate(names):
        table.SetColor(index, label, *EXPERT_COLORS[index % len(EXPERT_COLORS)], 1.0)
    table.SetAttribute("Category", "SHMoAReg")
    return table


def _kernel_sizes(output_dir: Path) -> list:
    """Kernel size of each expert from ``experts/experts.json`` (None entries if unknown)."""
    for path in (output_dir / "experts" / "experts.json", output_dir / "experts.json"):
        if path.is_file():
            description = json.loads(path.read_text(encoding="utf-8"))
            layers = description.get("shmoe", []) if isinstance(description, dict) else []
            if layers and isinstance(layers[0].get("kernel_sizes"), list):
                return list(layers[0]["kernel_sizes"])
    return []


def _load_expert_maps(scene, output_dir: Path, base_name: str) -> list:
    """One volume per decoder layer and direction (``experts/layer{L}_{z|y|x}.nii.gz``), each on its own grid."""
    folder = output_dir / "experts"
    files = sorted(
        (path for path in folder.glob("*.nii*") if _EXPERT_FILE.search(path.name)),
        key=lambda path: (int(_EXPERT_FILE.search(path.name)["layer"]), "zyx".index(_EXPERT_FILE.search(path.name)["axis"])),
    )
    if not files:
        return []
    images = [(path, _read_image(path)) for path in files]
    kernel_sizes = _kernel_sizes(output_dir)
    count = max([len(kernel_sizes)] + [int(sitk.GetArrayViewFromImage(image).max()) + 1 for _, image in images])
    kernel_sizes += [None] * (count - len(kernel_sizes))
    colors = _expert_color_table(scene, kernel_sizes)
    nodes = []
    for path, image in images:
        match = _EXPERT_FILE.search(path.name)
        node = volume_node_from_sitk(scene, image, f"{base_name} experts layer {match['layer']} {match['axis']}")
        display = node.GetDisplayNode()
        display.SetAndObserveColorNodeID(colors.GetID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(-0.5, count - 0.5)
        display.SetInterpolate(False)
        node.SetAttribute("SHMoAReg.layer", match["layer"])
        node.SetAttribute("SHMoAReg.axis", match["axis"])
        nodes.append(node)
    return nodes


def load_results(
    scene: slicer.vtkMRMLScene,
    output_dir: Path,
    fixed: slicer.vtkMRMLScalarVolumeNode,
    moving: slicer.vtkMRMLScalarVolumeNode,
    outputs: OutputNodes | None = None,
    label_table: LabelTable | None = None,
    moving_labels: object | None = None,
    load_jacobian: bool = True,
    load_expert_maps: bool = True,
) -> RegistrationResult:
    """Create (or update) the result nodes from the engine's output folder.

    The transform node holds the total displacement as a grid transform *from parent*
    (fixed -> moving, RAS), and references the moving and fixed volumes with Slicer's
    spatial-registration roles. Input nodes are not modified.
    """
    output_dir = Path(output_dir)
    outputs = outputs or OutputNodes()
    report_path = output_dir / "report.json"
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path.is_file() else {}
    # Read every file before touching the scene, so a missing file adds no node.
    warped_image = _read_image(output_dir / "warped.nii.gz")
    displacement = _read_image(output_dir / "displacement.nii.gz")
    jacobian_image = _read_image(output_dir / "jacobian.nii.gz") if load_jacobian else None
    labels_path = output_dir / "warped_labels.nii.gz"
    labels_image = _read_image(labels_path) if moving_labels is not None and labels_path.is_file() else None
    grid = grid_transform_from_displacement(displacement)

    base = moving.GetName()
    warped = volume_node_from_sitk(scene, warped_image, f"{base} registered", outputs.warped_volume)
    if moving.GetDisplayNode() is not None and moving.GetDisplayNode().GetColorNodeID():
        warped.GetDisplayNode().SetAndObserveColorNodeID(moving.GetDisplayNode().GetColorNodeID())

    transform = outputs.transform or scene.AddNewNodeByClass("vtkMRMLGridTransformNode", f"{base} to {fixed.GetName()}")
    transform.SetAndObserveTransformFromParent(grid)
    transform.SetNodeReferenceID(slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole(), moving.GetID())
    transform.SetNodeReferenceID(slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole(), fixed.GetID())
    if transform.GetDisplayNode() is None:
        transform.CreateDefaultDisplayNodes()

    jacobian = None
    if jacobian_image is not None:
        jacobian = volume_node_from_sitk(scene, jacobian_image, f"{base} Jacobian", outputs.jacobian)
        _use_color(jacobian, "vtkMRMLColorTableNodeFileDivergingBlueRed.txt")
        jacobian.GetDisplayNode().SetAutoWindowLevel(False)
        jacobian.GetDisplayNode().SetWindowLevelMinMax(0.0, 2.0)  # 1 = volume preserved, centred

    warped_labels = None
    if labels_image is not None and label_table is not None:
        name = f"{moving_labels.GetName()} registered"
        warped_labels = import_label_image(scene, labels_image, label_table, moving_labels, outputs.warped_labels, name)

    expert_maps = _load_expert_maps(scene, output_dir, base) if load_expert_maps else []

    table = outputs.metrics_table or scene.AddNewNodeByClass("vtkMRMLTableNode", f"{base} registration metrics")
    names = label_table.name_of if label_table is not None else None
    update_metrics_table(table, report, (lambda key: names(int(key)) if key.isdigit() else key) if names else str)
    return RegistrationResult(
        warped_volume=warped,
        transform=transform,
        metrics_table=table,
        report=report,
        jacobian=jacobian,
        warped_labels=warped_labels,
        expert_maps=expert_maps,
        output_dir=output_dir,
    )
