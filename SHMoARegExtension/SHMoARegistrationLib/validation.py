"""Checks of the nodes given to the Logic; each failure is a ValueError naming the node and the problem."""
from __future__ import annotations

import numpy as np
import slicer

__all__ = ["check_volume", "check_labels_node", "check_labels_pair", "check_landmarks", "check_outputs"]


def check_volume(node: object, role: str, scene: slicer.vtkMRMLScene) -> None:
    """``node`` must be a 3-D, single-component, non-constant, finite scalar volume of ``scene``."""
    if node is None:
        raise ValueError(f"no {role} volume selected")
    if not isinstance(node, slicer.vtkMRMLScalarVolumeNode):
        raise ValueError(f"the {role} volume must be a scalar volume node, got {type(node).__name__}")
    name = node.GetName()
    if node.GetScene() is not scene:
        raise ValueError(f"the {role} volume '{name}' is not in the Logic's scene")
    image = node.GetImageData()
    if image is None:
        raise ValueError(f"the {role} volume '{name}' has no image data")
    components = image.GetNumberOfScalarComponents()
    if components != 1:
        raise ValueError(
            f"the {role} volume '{name}' has {components} components per voxel (a vector or 4-D volume); "
            "extract one component first (Vector to Scalar Volume module)"
        )
    dimensions = tuple(image.GetDimensions())
    if min(dimensions) <= 0 or image.GetNumberOfPoints() == 0:
        raise ValueError(f"the {role} volume '{name}' is empty (dimensions {dimensions})")
    if min(dimensions) < 2:
        raise ValueError(
            f"the {role} volume '{name}' is 2-D (dimensions {dimensions}); a 3-D volume with at least "
            "2 voxels along every axis is needed"
        )
    spacing = np.array(node.GetSpacing())
    if np.any(spacing <= 0) or not np.all(np.isfinite(spacing)):
        raise ValueError(f"the {role} volume '{name}' has invalid spacing {tuple(spacing)}")
    array = slicer.util.arrayFromVolume(node)
    if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
        raise ValueError(f"the {role} volume '{name}' contains NaN or infinite voxels")
    if array.min() == array.max():
        raise ValueError(f"the {role} volume '{name}' is constant (every voxel is {array.min()}); nothing to register")


def check_labels_node(node: object, role: str, scene: slicer.vtkMRMLScene) -> None:
    """``node`` must be None, a segmentation or a label map volume of ``scene``."""
    if node is None:
        return
    if not isinstance(node, (slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLLabelMapVolumeNode)):
        raise ValueError(f"the {role} labels must be a segmentation or label map node, got {type(node).__name__}")
    if node.GetScene() is not scene:
        raise ValueError(f"the {role} labels '{node.GetName()}' are not in the Logic's scene")
    if isinstance(node, slicer.vtkMRMLLabelMapVolumeNode) and node.GetImageData() is None:
        raise ValueError(f"the {role} label map '{node.GetName()}' has no image data")


def check_labels_pair(fixed: object, moving: object) -> None:
    """Two label inputs must be of one kind: segmentations match by segment name, label maps by value."""
    if fixed is not None and moving is not None and type(fixed) is not type(moving):
        raise ValueError(
            f"the fixed labels '{fixed.GetName()}' ({fixed.GetClassName()}) and moving labels '{moving.GetName()}' "
            f"({moving.GetClassName()}) must be of one kind: two segmentations (matched by segment name) or two "
            "label maps (matched by value); convert one of them in the Segmentations module"
        )


def check_landmarks(fixed: object, moving: object) -> None:
    """Both or neither; markups nodes with the same, non-zero number of points (point n matches point n)."""
    if fixed is None and moving is None:
        return
    if fixed is None or moving is None:
        raise ValueError("give both fixed and moving landmarks, or neither")
    for node, role in ((fixed, "fixed"), (moving, "moving")):
        if not isinstance(node, slicer.vtkMRMLMarkupsNode):
            raise ValueError(f"the {role} landmarks must be a markups node, got {type(node).__name__}")
    count_fixed, count_moving = fixed.GetNumberOfControlPoints(), moving.GetNumberOfControlPoints()
    if count_fixed == 0 or count_fixed != count_moving:
        raise ValueError(
            f"the landmarks must have the same, non-zero number of points: fixed '{fixed.GetName()}' has "
            f"{count_fixed}, moving '{moving.GetName()}' has {count_moving}"
        )


def check_outputs(outputs: list, inputs: list) -> None:
    """Output nodes must differ from every input; a chosen transform node must be able to hold a grid."""
    input_ids = {node.GetID() for node in inputs if node is not None}
    for node in outputs:
        if node.GetID() in input_ids:
            raise ValueError(f"'{node.GetName()}' is an input; choose another output node (or create a new one)")
        if isinstance(node, slicer.vtkMRMLTransformNode) and node.GetClassName() not in (
            "vtkMRMLTransformNode", "vtkMRMLGridTransformNode"
        ):
            raise ValueError(
                f"the output transform '{node.GetName()}' is a {node.GetClassName()}; "
                "choose a grid transform node or create a new one"
            )
