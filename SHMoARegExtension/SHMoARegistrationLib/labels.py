"""Segmentations and label maps <-> integer label images for the engine.

The engine scores Dice per label value, so the fixed and moving label images must
use the same value for the same structure. Segments are matched **by name**: the
label table lists the moving segment names first, then fixed-only names, and
segment ``n`` of that table is written with value ``n + 1`` in both images.
Label map volumes are used as they are (their values must already agree).

Inputs are never modified: segmentations are exported from a temporary deep copy
(conversion to binary labelmap would otherwise add a representation to the input);
the temporary nodes are removed before the functions return.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from .conversion import same_geometry, sitk_image_from_volume, update_volume_from_sitk
from .scene_nodes import node_ids, remove_nodes_added_since
from .validation import check_labels_pair

__all__ = ["LabelTable", "label_table_for", "label_image_from_node", "import_label_image"]

@dataclass(frozen=True)
class LabelTable:
    """Names and RGB colours of label values 1..N (index ``n`` is label ``n + 1``)."""

    names: tuple[str, ...]
    colors: tuple[tuple[float, float, float], ...]

    def value_of(self, name: str) -> int:
        return self.names.index(name) + 1

    def name_of(self, value: int) -> str:
        return self.names[value - 1] if 1 <= value <= len(self.names) else f"label {value}"


def _segments(node: slicer.vtkMRMLSegmentationNode) -> list[tuple[str, str, tuple[float, float, float]]]:
    segmentation = node.GetSegmentation()
    result = []
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        result.append((segmentation.GetNthSegmentID(index), segment.GetName(), tuple(segment.GetColor())))
    return result


def label_table_for(moving: object | None, fixed: object | None) -> LabelTable:
    """The shared label table of two label inputs (segmentation names, or a label map's values).

    Raises:
        ValueError: one input is a segmentation and the other a label map (their labels cannot be matched).
    """
    check_labels_pair(fixed, moving)
    names: list[str] = []
    colors: list[tuple[float, float, float]] = []
    for node in (moving, fixed):
        if isinstance(node, slicer.vtkMRMLSegmentationNode):
            for _, name, color in _segments(node):
                if name not in names:
                    names.append(name)
                    colors.append(color)
    if not names:
        for node in (moving, fixed):
            if isinstance(node, slicer.vtkMRMLLabelMapVolumeNode) and node.GetImageData() is not None:
                top = int(np.max(slicer.util.arrayFromVolume(node)))
                while len(names) < top:
                    names.append(f"label {len(names) + 1}")
                    colors.append(_default_color(len(names)))
    return LabelTable(tuple(names), tuple(colors))


def _default_color(value: int) -> tuple[float, float, float]:
    red, green, blue = colorsys.hsv_to_rgb((value * 0.618034) % 1.0, 0.7, 0.95)  # golden-ratio hues
    return (red, green, blue)


def _color_table(scene: slicer.vtkMRMLScene, table: LabelTable) -> slicer.vtkMRMLColorTableNode:
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "SHMoAReg temporary labels")
    node.SetHideFromEditors(True)
    node.SetTypeToUser()
    node.SetNumberOfColors(len(table.names) + 1)
    node.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for value, (name, color) in enumerate(zip(table.names, table.colors), start=1):
        node.SetColor(value, name, *color, 1.0)
    return node


def _export_segmentation(
    scene: slicer.vtkMRMLScene,
    node: slicer.vtkMRMLSegmentationNode,
    reference: slicer.vtkMRMLVolumeNode,
    table: LabelTable,
) -> sitk.Image:
    existing = node_ids(scene)
    try:
        copy = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "SHMoAReg temporary segmentation")
        copy.SetHideFromEditors(True)
        copy.GetSegmentation().DeepCopy(node.GetSegmentation())
        if node.GetParentTransformNode() is not None:
            copy.SetAndObserveTransformNodeID(node.GetParentTransformNode().GetID())
        colors = _color_table(scene, table)
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SHMoAReg temporary labelmap")
        segment_ids = vtk.vtkStringArray()
        for segment_id, _, _ in _segments(copy):
            segment_ids.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
            copy, segment_ids, labelmap, reference, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, colors
        )
        if not ok or labelmap.GetImageData() is None:
            raise ValueError(f"'{node.GetName()}': its segments could not be exported onto '{reference.GetName()}'")
        return sitk_image_from_volume(labelmap)
    finally:
        # the temporary nodes and what the export made for them (display nodes, a colour table)
        remove_nodes_added_since(scene, existing)


def label_image_from_node(
    scene: slicer.vtkMRMLScene,
    node: object,
    reference: slicer.vtkMRMLVolumeNode,
    reference_image: sitk.Image,
    table: LabelTable,
    role: str,
) -> sitk.Image:
    """A uint16 label image on the grid of ``reference`` for a segmentation or label map node.

    Raises:
        ValueError: a label map on another grid than its volume, or no labelled voxel on the grid.
    """
    if isinstance(node, slicer.vtkMRMLSegmentationNode):
        if node.GetSegmentation().GetNumberOfSegments() == 0:
            raise ValueError(f"{role} segmentation '{node.GetName()}' has no segments")
        image = _export_segmentation(scene, node, reference, table)
        if image.GetSize() != reference_image.GetSize():
            raise ValueError(f"{role} segmentation '{node.GetName()}' was not exported onto the grid of '{reference.GetName()}'")
        # The export is on the reference's voxel grid; give it the reference's world geometry
        # (which includes a linear parent transform of the volume, as the volume's image does).
        image.CopyInformation(reference_image)
    elif isinstance(node, slicer.vtkMRMLLabelMapVolumeNode):
        image = sitk_image_from_volume(node)
        if not same_geometry(image, reference_image):
            raise ValueError(
                f"{role} label map '{node.GetName()}' is on another grid than '{reference.GetName()}' "
                f"(size {image.GetSize()} vs {reference_image.GetSize()}, origin {np.round(image.GetOrigin(), 2)} vs "
                f"{np.round(reference_image.GetOrigin(), 2)}); resample it onto the volume first"
            )
        image.CopyInformation(reference_image)
    else:
        raise ValueError(
            f"{role} labels must be a segmentation or a label map volume node, got {type(node).__name__}"
        )
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.array_equal(array, np.round(array)):
        raise ValueError(f"{role} label map '{node.GetName()}' holds non-integer values")
    if array.min() < 0 or array.max() > 65535:
        raise ValueError(f"{role} labels '{node.GetName()}' must lie in 0..65535, found {array.min()}..{array.max()}")
    if not np.any(array):
        raise ValueError(
            f"{role} labels '{node.GetName()}' have no labelled voxel on the grid of '{reference.GetName()}'"
        )
    return sitk.Cast(image, sitk.sitkUInt16)


def import_label_image(
    scene: slicer.vtkMRMLScene,
    image: sitk.Image,
    table: LabelTable,
    like: object,
    output: object | None,
    name: str,
) -> object:
    """Load a label image as the same kind of node as ``like`` (segmentation or label map).

    ``output`` (optional) is an existing node of that kind to overwrite; otherwise a
    new node called ``name`` is added. Segments get the names and colours of ``table``.
    """
    if isinstance(like, slicer.vtkMRMLLabelMapVolumeNode):
        node = output or scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", name)
        update_volume_from_sitk(node, sitk.Cast(image, sitk.sitkUInt16))
        if node.GetDisplayNode() is None:
            node.CreateDefaultDisplayNodes()
        if like.GetDisplayNode() is not None and like.GetDisplayNode().GetColorNodeID():
            node.GetDisplayNode().SetAndObserveColorNodeID(like.GetDisplayNode().GetColorNodeID())
        return node
    node = output or scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    node.GetSegmentation().RemoveAllSegments()
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "SHMoAReg temporary labelmap")
    colors = _color_table(scene, table)
    try:
        update_volume_from_sitk(labelmap, sitk.Cast(image, sitk.sitkUInt16))
        labelmap.CreateDefaultDisplayNodes()
        labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node):
            raise RuntimeError(f"could not import the warped labels into '{node.GetName()}'")
        _name_segments(node, table)
    finally:
        for display in [labelmap.GetNthDisplayNode(i) for i in range(labelmap.GetNumberOfDisplayNodes())]:
            scene.RemoveNode(display)
        scene.RemoveNode(labelmap)
        scene.RemoveNode(colors)
    return node


def _name_segments(node: slicer.vtkMRMLSegmentationNode, table: LabelTable) -> None:
    """Give imported segments the table's names and colours (matched by label value)."""
    segmentation = node.GetSegmentation()
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = segment.GetLabelValue()
        if 1 <= value <= len(table.names):
            segment.SetName(table.names[value - 1])
            segment.SetColor(*table.colors[value - 1])
