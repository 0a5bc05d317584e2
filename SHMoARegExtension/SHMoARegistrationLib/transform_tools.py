"""The result transform applied to other nodes, inverted and exported (MRML only, no Qt).

The transform node of a run holds ``T``: fixed-space point -> moving-space point, as Slicer's
*transform from parent* (see :mod:`.conversion`). From it:

* :func:`apply_to_volume` / :func:`apply_to_labels`: any other volume, label map or
  segmentation **of the moving image's space** resampled onto a reference grid (normally the
  fixed volume), as new nodes; label maps get no new label values.
* :func:`apply_to_markups`: a copy of a markups node moved ``moving-to-fixed`` (points picked on
  the moving image, through ``T^-1``, which Slicer inverts on the fly) or ``fixed-to-moving``
  (through ``T``), hardened so the copy holds plain coordinates.
* :func:`inverse_transform_node`: a new node holding ``T^-1`` (moving -> fixed), computed by
  Slicer on the fly from the same grid - no second field is stored.
* :func:`export_transform`: the transform written in any format of ``shmoareg convert``.
* :func:`mask_image_from_segments`: chosen segments as the binary exclusion mask the engine takes.

Resampling and export use the engine's SimpleITK-only modules (``SHMoAReg.toolkit.apply`` and
``.convert``; they do not import torch), so they run inside Slicer's own process. Input nodes are
never modified.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer
import vtk

from .conversion import displacement_from_grid_transform, sitk_image_from_volume, volume_node_from_sitk
from .engine import import_engine_module
from .labels import import_label_image, label_image_from_node, label_table_for

__all__ = ["POINT_DIRECTIONS", "EXPORT_FORMATS", "result_transform", "apply_to_volume", "apply_to_labels",
           "apply_to_markups", "inverse_transform_node", "export_transform", "mask_image_from_segments"]

POINT_DIRECTIONS = ("moving-to-fixed", "fixed-to-moving")
EXPORT_FORMATS = ("itk-h5", "itk-tfm", "nifti-displacement", "l2r-voxel", "slicer-grid")


def result_transform(transform_node: slicer.vtkMRMLTransformNode) -> sitk.Transform:
    """The ITK transform (LPS mm, fixed -> moving) a result transform node holds."""
    return sitk.DisplacementFieldTransform(displacement_from_grid_transform(transform_node))  # float64 already


def _check_not_under_transform(node, role: str) -> None:
    parent = node.GetParentTransformNode()
    if parent is not None and not parent.IsTransformToWorldLinear():
        raise ValueError(f"{role} '{node.GetName()}' is under a non-linear transform ('{parent.GetName()}'); "
                         f"harden it first or take it out from under that transform")


def apply_to_volume(scene: slicer.vtkMRMLScene, transform_node: slicer.vtkMRMLTransformNode,
                    volume: slicer.vtkMRMLScalarVolumeNode, reference: slicer.vtkMRMLScalarVolumeNode,
                    interpolation: str = "linear", name: str | None = None) -> slicer.vtkMRMLScalarVolumeNode:
    """A new volume: ``volume`` (moving space) resampled through ``T`` onto the grid of ``reference``.

    ``interpolation``: linear, nearest or bspline (``shmoareg apply --interpolation``).
    """
    apply = import_engine_module("SHMoAReg.toolkit.apply")
    if interpolation not in ("linear", "nearest", "bspline"):
        raise ValueError(f"interpolation must be linear, nearest or bspline, got {interpolation!r}")
    for node, role in ((volume, "volume"), (reference, "reference")):
        if not isinstance(node, slicer.vtkMRMLScalarVolumeNode) or node.GetImageData() is None:
            raise ValueError(f"the {role} must be a scalar volume with image data")
        _check_not_under_transform(node, role)
    warped = apply.apply_to_image(sitk_image_from_volume(volume), sitk_image_from_volume(reference),
                                  result_transform(transform_node), interpolation)
    node = volume_node_from_sitk(scene, warped, name or f"{volume.GetName()} warped")
    if volume.GetDisplayNode() is not None and volume.GetDisplayNode().GetColorNodeID():
        node.GetDisplayNode().SetAndObserveColorNodeID(volume.GetDisplayNode().GetColorNodeID())
    return node


def apply_to_labels(scene: slicer.vtkMRMLScene, transform_node: slicer.vtkMRMLTransformNode, labels: object,
                    source_volume: slicer.vtkMRMLScalarVolumeNode, reference: slicer.vtkMRMLScalarVolumeNode,
                    name: str | None = None) -> object:
    """A new node of the same kind as ``labels`` (segmentation or label map, moving space) on the grid of
    ``reference``; segmentations are exported on ``source_volume``'s grid first. Per-label linear voting:
    no label value appears that ``labels`` did not have; segment names and colours are kept."""
    apply = import_engine_module("SHMoAReg.toolkit.apply")
    for node, role in ((source_volume, "source volume"), (reference, "reference")):
        if not isinstance(node, slicer.vtkMRMLScalarVolumeNode) or node.GetImageData() is None:
            raise ValueError(f"the {role} must be a scalar volume with image data")
        _check_not_under_transform(node, role)
    table = label_table_for(labels, None)
    image = label_image_from_node(scene, labels, source_volume, sitk_image_from_volume(source_volume), table, "labels")
    warped = apply.apply_to_labels(image, sitk_image_from_volume(reference), result_transform(transform_node))
    return import_label_image(scene, warped, table, labels, None, name or f"{labels.GetName()} warped")


def apply_to_markups(scene: slicer.vtkMRMLScene, transform_node: slicer.vtkMRMLTransformNode,
                     markups: slicer.vtkMRMLMarkupsNode, direction: str = "moving-to-fixed",
                     name: str | None = None) -> slicer.vtkMRMLMarkupsNode:
    """A hardened copy of ``markups`` mapped ``moving-to-fixed`` (``T^-1``) or ``fixed-to-moving`` (``T``)."""
    if direction not in POINT_DIRECTIONS:
        raise ValueError(f"direction must be one of {POINT_DIRECTIONS}, got {direction!r}")
    if not isinstance(markups, slicer.vtkMRMLMarkupsNode):
        raise ValueError(f"expected a markups node, got {type(markups).__name__}")
    _check_not_under_transform(markups, "markups")
    copy = scene.AddNewNodeByClass(markups.GetClassName(), name or f"{markups.GetName()} {direction}")
    copy.Copy(markups)
    copy.SetName(name or f"{markups.GetName()} {direction}")
    copy.SetAndObserveTransformNodeID(None)
    copy.ApplyTransform(_parent_matrix(markups))  # world coordinates of the input, plain
    through = transform_node if direction == "moving-to-fixed" else _inverted_copy(scene, transform_node)
    try:
        # A node under ``through`` is shown with its "to parent" transform: T^-1 under the result node,
        # T under its inverse. Hardening writes those coordinates into the copy.
        copy.SetAndObserveTransformNodeID(through.GetID())
        if not slicer.vtkSlicerTransformLogic.hardenTransform(copy):
            raise RuntimeError(f"Slicer could not harden the transform on '{copy.GetName()}'")
    except BaseException:
        scene.RemoveNode(copy)
        raise
    finally:
        if through is not transform_node:
            scene.RemoveNode(through)
    return copy


def _parent_matrix(node) -> vtk.vtkTransform:
    """The linear transform from ``node``'s coordinates to world (identity when it has no parent)."""
    matrix = vtk.vtkMatrix4x4()
    parent = node.GetParentTransformNode()
    if parent is not None:
        parent.GetMatrixTransformToWorld(matrix)
    transform = vtk.vtkTransform()
    transform.SetMatrix(matrix)
    return transform


def _inverted_copy(scene: slicer.vtkMRMLScene, transform_node: slicer.vtkMRMLTransformNode):
    node = scene.AddNewNodeByClass(transform_node.GetClassName(), f"{transform_node.GetName()} inverse")
    node.CopyContent(transform_node)
    node.Inverse()
    return node


def inverse_transform_node(scene: slicer.vtkMRMLScene, transform_node: slicer.vtkMRMLTransformNode,
                           name: str | None = None) -> slicer.vtkMRMLTransformNode:
    """A new transform node holding ``T^-1`` (moving -> fixed resampling; fixed volume under it aligns with the
    moving one). Slicer inverts the grid on the fly; the Moving/Fixed references are swapped."""
    node = _inverted_copy(scene, transform_node)
    if name:
        node.SetName(name)
    moving_role = slicer.vtkMRMLTransformNode.GetMovingNodeReferenceRole()
    fixed_role = slicer.vtkMRMLTransformNode.GetFixedNodeReferenceRole()
    moving_id, fixed_id = (transform_node.GetNodeReferenceID(role) for role in (moving_role, fixed_role))
    node.SetNodeReferenceID(moving_role, fixed_id)  # the inverse moves the fixed volume onto the moving one
    node.SetNodeReferenceID(fixed_role, moving_id)
    return node


def export_transform(transform_node: slicer.vtkMRMLTransformNode, path: str | Path, fmt: str | None = None,
                     reference: slicer.vtkMRMLScalarVolumeNode | None = None) -> Path:
    """Write ``T`` to ``path`` in ``fmt`` (default: from the file name; see ``shmoareg convert``).

    ``l2r-voxel`` needs ``reference`` = the fixed volume (Learn2Reg counts voxels of its grid);
    the displacement formats are sampled on ``reference``'s grid when given, else on the field's.
    """
    convert = import_engine_module("SHMoAReg.toolkit.convert")
    errors = import_engine_module("SHMoAReg.errors")
    if fmt is not None and fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {EXPORT_FORMATS}, got {fmt!r}")
    reference_image = sitk_image_from_volume(reference) if reference is not None else None
    try:
        return convert.write_transform_file(result_transform(transform_node), path, fmt, reference_image)
    except errors.InputError as error:
        raise ValueError(str(error)) from None


def mask_image_from_segments(scene: slicer.vtkMRMLScene, segmentation: object, segment_names: Sequence[str] | None,
                             volume: slicer.vtkMRMLScalarVolumeNode, role: str,
                             image: sitk.Image | None = None) -> sitk.Image:
    """A uint8 mask (1 = excluded from the similarity) on ``volume``'s grid: the union of the named segments
    of ``segmentation`` (all when ``segment_names`` is None), or the non-zero voxels of a label map.
    ``image``: ``volume`` as a SimpleITK image, when the caller has it already."""
    image = sitk_image_from_volume(volume) if image is None else image
    table = label_table_for(segmentation, None)
    labels = label_image_from_node(scene, segmentation, volume, image, table, f"{role} mask")
    array = sitk.GetArrayViewFromImage(labels)
    if segment_names is None or isinstance(segmentation, slicer.vtkMRMLLabelMapVolumeNode):
        chosen = array > 0
    else:
        unknown = sorted(set(segment_names) - set(table.names))
        if unknown:
            raise ValueError(f"{role} mask: segment(s) {unknown} are not in '{segmentation.GetName()}' "
                             f"(it has {list(table.names)})")
        chosen = np.isin(array, [table.value_of(name) for name in segment_names])
    if not chosen.any():
        raise ValueError(f"{role} mask: the chosen segments cover no voxel of '{volume.GetName()}'")
    mask = sitk.GetImageFromArray(chosen.astype(np.uint8))
    mask.CopyInformation(image)
    return mask
