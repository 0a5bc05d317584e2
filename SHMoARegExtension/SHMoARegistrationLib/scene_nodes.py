"""Leave the scene as it was: the IDs of its nodes now, and removal of every node added since."""
from __future__ import annotations

import slicer

__all__ = ["node_ids", "remove_nodes_added_since"]


def node_ids(scene: slicer.vtkMRMLScene) -> set[str]:
    return {scene.GetNthNode(index).GetID() for index in range(scene.GetNumberOfNodes())}


def remove_nodes_added_since(scene: slicer.vtkMRMLScene, existing: set[str], keep_subject_hierarchy: bool = True) -> None:
    """Remove every node whose ID is not in ``existing`` (newest first). The subject hierarchy, a scene
    singleton that Slicer creates on first use, stays unless ``keep_subject_hierarchy`` is False."""
    for index in reversed(range(scene.GetNumberOfNodes())):
        node = scene.GetNthNode(index)
        if node is None or node.GetID() in existing:
            continue
        if keep_subject_hierarchy and node.IsA("vtkMRMLSubjectHierarchyNode"):
            continue
        scene.RemoveNode(node)
