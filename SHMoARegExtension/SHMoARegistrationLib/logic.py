"""SHMoARegistrationLogic: register two volume nodes with the SHMoAReg engine, without Qt.

Typical use (scripting, tests)::

    logic = SHMoARegistrationLogic(scene)
    result = logic.register(fixed_node, moving_node, iterations=50)
    result.transform   # grid transform node, fixed -> moving ("from parent")

The GUI uses the asynchronous pair instead: ``job = logic.start(...)``, a timer that
calls ``job.poll()`` until ``job.done``, then ``logic.finish(job)`` on the main thread.

How a run works: the inputs are copied to a fresh temporary folder (SimpleITK files
in LPS), ``python -m SHMoAReg register ... --json-progress`` runs as a separate
process whose stdout/stderr are read by two threads, and when it succeeds the
outputs are loaded into new nodes (:mod:`.outputs`). Input nodes are never changed;
a failed or cancelled run adds no node; the temporary folder is removed unless
``keep_temp`` is set.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicer

from . import transform_tools, validation
from .conversion import markups_points_lps, sitk_image_from_volume
from .engine import default_engine_command, engine_environment, find_engine_root
from .labels import LabelTable, label_image_from_node, label_table_for
from .options import RegistrationOptions
from .outputs import OutputNodes, RegistrationResult, load_results
from .preflight import Finding, preflight
from .process import EngineProcess, ProgressSnapshot
from .scene_nodes import node_ids, remove_nodes_added_since
from .transform_tools import mask_image_from_segments

__all__ = ["SHMoARegistrationLogic", "RegistrationInputs", "RegistrationJob", "RegistrationCancelled"]

logger = logging.getLogger("SHMoARegistration")


class RegistrationCancelled(RuntimeError):
    """The run was cancelled; nothing was added to the scene."""


@dataclass
class RegistrationInputs:
    """The nodes of one registration (labels: segmentation or label map; landmarks: markups).

    Masks (segmentation or label map on the fixed / moving volume) mark regions excluded from the
    similarity term - a lesion, an ablation zone, metal; ``*_mask_segments`` picks segments by name
    (None: every segment, or every non-zero voxel of a label map).
    """

    fixed: slicer.vtkMRMLScalarVolumeNode
    moving: slicer.vtkMRMLScalarVolumeNode
    fixed_labels: object | None = None
    moving_labels: object | None = None
    fixed_landmarks: object | None = None
    moving_landmarks: object | None = None
    fixed_mask: object | None = None
    moving_mask: object | None = None
    fixed_mask_segments: tuple[str, ...] | None = None
    moving_mask_segments: tuple[str, ...] | None = None

    def nodes(self) -> list:
        return [node for node in vars(self).values() if isinstance(node, slicer.vtkMRMLNode)]


@dataclass
class RegistrationJob:
    """A started run: poll it from a timer, cancel it, then hand it to ``logic.finish``."""

    process: EngineProcess
    temp_dir: Path
    output_dir: Path
    inputs: RegistrationInputs
    options: RegistrationOptions
    outputs: OutputNodes
    label_table: LabelTable | None
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    last: ProgressSnapshot = field(default_factory=ProgressSnapshot)

    def poll(self) -> ProgressSnapshot:
        """Latest progress; also moves new engine log lines into ``log`` and Python's logging."""
        for line in self.process.take_log_lines():
            self.log.append(line)
            logger.info("engine: %s", line)
        self.last = self.process.snapshot()
        return self.last

    @property
    def done(self) -> bool:
        return not self.poll().running

    def cancel(self, wait: bool = True) -> None:
        """Stop the engine process tree; with ``wait=False`` return at once (keep polling until ``done``)."""
        logger.info("cancelling the registration (pid %d)", self.process.pid)
        self.process.cancel(wait=wait)


class SHMoARegistrationLogic:
    """Registration of MRML volume nodes with the SHMoAReg engine.

    Args:
        scene: the MRML scene (default: ``slicer.mrmlScene`` inside Slicer).
        engine_command: command that starts ``SHMoAReg register`` (default:
            ``[PythonSlicer or sys.executable, "-m", "SHMoAReg", "register"]``).
        engine_root: folder holding the ``SHMoAReg`` package, put on the engine's PYTHONPATH.
        temp_root: where temporary folders are made (default: Slicer's temporary
            folder inside Slicer, else the system's).
    """

    def __init__(
        self,
        scene: slicer.vtkMRMLScene | None = None,
        engine_command: list[str] | None = None,
        engine_root: str | Path | None = None,
        temp_root: str | Path | None = None,
    ):
        if scene is None:
            scene = getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise ValueError("no MRML scene given (and slicer.mrmlScene does not exist outside Slicer)")
        self.scene = scene
        self.engine_command = list(engine_command) if engine_command else default_engine_command()
        self.engine_root = Path(engine_root) if engine_root else find_engine_root()
        if temp_root is None and hasattr(slicer, "app"):
            temp_root = slicer.app.temporaryPath
        self.temp_root = Path(temp_root) if temp_root else None

    # -- checks ---------------------------------------------------------------------------
    def validate(self, inputs: RegistrationInputs, outputs: OutputNodes | None = None) -> None:
        """Raise ValueError naming the first unusable input or output node."""
        validation.check_volume(inputs.fixed, "fixed", self.scene)
        validation.check_volume(inputs.moving, "moving", self.scene)
        validation.check_labels_node(inputs.fixed_labels, "fixed", self.scene)
        validation.check_labels_node(inputs.moving_labels, "moving", self.scene)
        validation.check_labels_pair(inputs.fixed_labels, inputs.moving_labels)
        validation.check_landmarks(inputs.fixed_landmarks, inputs.moving_landmarks)
        validation.check_labels_node(inputs.fixed_mask, "fixed mask", self.scene)
        validation.check_labels_node(inputs.moving_mask, "moving mask", self.scene)
        validation.check_outputs(outputs.nodes() if outputs else [], inputs.nodes())

    def preflight(self, fixed, moving, options: RegistrationOptions | None = None, gpu=True) -> list[Finding]:
        """Warnings worth showing before a run (overlap, GPU presence and memory)."""
        validation.check_volume(fixed, "fixed", self.scene)
        validation.check_volume(moving, "moving", self.scene)
        return preflight(fixed, moving, options or RegistrationOptions(), gpu)

    # -- asynchronous API -----------------------------------------------------------------
    def start(
        self,
        inputs: RegistrationInputs,
        options: RegistrationOptions | None = None,
        outputs: OutputNodes | None = None,
    ) -> RegistrationJob:
        """Check the inputs, write them to a temporary folder and start the engine.

        Returns at once; the scene is left as it was (temporary nodes are removed).
        """
        options = options or RegistrationOptions()
        options.validate()
        if (inputs.fixed_mask is not None or inputs.moving_mask is not None) and options.iterations == 0:
            raise ValueError("masks act on instance optimisation: set iterations above 0 to use a mask")
        outputs = outputs or OutputNodes()
        self.validate(inputs, outputs)
        if self.temp_root is not None:
            self.temp_root.mkdir(parents=True, exist_ok=True)
        temp_dir = Path(tempfile.mkdtemp(prefix="SHMoAReg-", dir=self.temp_root))
        try:
            arguments, table = self._write_inputs(inputs, temp_dir)
            output_dir = temp_dir / "output"
            argv = [*self.engine_command, *arguments, "--output-dir", str(output_dir),
                    *options.engine_arguments(), "--json-progress"]
            logger.info("starting: %s", " ".join(argv))
            process = EngineProcess(argv, env=engine_environment(self.engine_root), cwd=temp_dir)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
        return RegistrationJob(process, temp_dir, output_dir, inputs, options, outputs, table)

    def _write_inputs(self, inputs: RegistrationInputs, folder: Path) -> tuple[list[str], LabelTable | None]:
        fixed_image = sitk_image_from_volume(inputs.fixed)
        moving_image = sitk_image_from_volume(inputs.moving)
        arguments = []
        for image, name in ((fixed_image, "fixed"), (moving_image, "moving")):
            sitk.WriteImage(image, str(folder / f"{name}.nii"))
            arguments += [f"--{name}", str(folder / f"{name}.nii")]
        table = None
        if inputs.fixed_labels is not None or inputs.moving_labels is not None:
            table = label_table_for(inputs.moving_labels, inputs.fixed_labels)
            for node, volume, image, role in (
                (inputs.fixed_labels, inputs.fixed, fixed_image, "fixed"),
                (inputs.moving_labels, inputs.moving, moving_image, "moving"),
            ):
                if node is None:
                    continue
                labels = label_image_from_node(self.scene, node, volume, image, table, role)
                sitk.WriteImage(labels, str(folder / f"{role}_labels.nii"))
                arguments += [f"--{role}-labels", str(folder / f"{role}_labels.nii")]
        for node, segments, volume, image, role in (
            (inputs.fixed_mask, inputs.fixed_mask_segments, inputs.fixed, fixed_image, "fixed"),
            (inputs.moving_mask, inputs.moving_mask_segments, inputs.moving, moving_image, "moving"),
        ):
            if node is not None:
                mask = mask_image_from_segments(self.scene, node, segments, volume, role, image)
                sitk.WriteImage(mask, str(folder / f"{role}_mask.nii"))
                arguments += [f"--{role}-mask", str(folder / f"{role}_mask.nii")]
        if inputs.fixed_landmarks is not None:
            for node, role in ((inputs.fixed_landmarks, "fixed"), (inputs.moving_landmarks, "moving")):
                path = folder / f"{role}_landmarks.csv"
                np.savetxt(path, markups_points_lps(node), delimiter=",", fmt="%.6f")  # x,y,z LPS mm per row
                arguments += [f"--{role}-landmarks", str(path)]
        return arguments, table

    def finish(self, job: RegistrationJob) -> RegistrationResult:
        """Load a finished run's outputs into the scene (main thread) and clean up.

        Raises:
            RegistrationCancelled: the job was cancelled.
            RuntimeError: the engine failed (its message), or an output is missing.
        """
        try:
            job.process.wait()
            snapshot = job.poll()
            if job.process.cancelled or (snapshot.final or {}).get("stage") == "cancelled":
                raise RegistrationCancelled("the registration was cancelled")
            if snapshot.returncode != 0 or not snapshot.final or snapshot.final.get("stage") != "done":
                raise RuntimeError(f"the registration failed: {job.process.error_message()}")
            result = self._load(job)
            result.log = list(job.log)
            return result
        finally:
            self.cleanup(job)

    def _load(self, job: RegistrationJob) -> RegistrationResult:
        before = node_ids(self.scene)
        try:
            result = load_results(
                self.scene, job.output_dir, job.inputs.fixed, job.inputs.moving, job.outputs,
                job.label_table, job.inputs.moving_labels,
                load_jacobian=job.options.jacobian, load_expert_maps=job.options.expert_maps,
            )
        except BaseException:
            remove_nodes_added_since(self.scene, before, keep_subject_hierarchy=False)
            raise
        if job.options.apply_transform_to_moving:
            self.apply_transform_to_moving(result, job.inputs.moving)
        if not job.options.keep_temp:
            result.output_dir = None
        return result

    def cleanup(self, job: RegistrationJob) -> None:
        """Stop the process if it still runs; remove the temporary folder unless ``keep_temp``."""
        if job.process.snapshot().running:
            job.process.cancel()
        if job.options.keep_temp:
            logger.info("temporary files kept in %s", job.temp_dir)
        else:
            shutil.rmtree(job.temp_dir, ignore_errors=True)

    # -- synchronous API ------------------------------------------------------------------
    def register(
        self,
        fixed: slicer.vtkMRMLScalarVolumeNode,
        moving: slicer.vtkMRMLScalarVolumeNode,
        *,
        fixed_labels: object | None = None,
        moving_labels: object | None = None,
        fixed_landmarks: object | None = None,
        moving_landmarks: object | None = None,
        fixed_mask: object | None = None,
        moving_mask: object | None = None,
        fixed_mask_segments: tuple[str, ...] | None = None,
        moving_mask_segments: tuple[str, ...] | None = None,
        outputs: OutputNodes | None = None,
        progress: Callable[[ProgressSnapshot], None] | None = None,
        should_cancel: Callable[[], bool] | None = None,
        poll_interval_s: float = 0.1,
        **option_keywords,
    ) -> RegistrationResult:
        """Register ``moving`` to ``fixed`` and wait for the result (options as keywords of
        :class:`RegistrationOptions`, e.g. ``iterations=20, affine=False``).

        Raises:
            ValueError: unusable inputs or options (nothing is started).
            RegistrationCancelled: ``should_cancel()`` returned True.
            TimeoutError: the run took longer than ``timeout_s``.
            RuntimeError: the engine failed.
        """
        options = RegistrationOptions.from_keywords(**option_keywords)
        inputs = RegistrationInputs(fixed, moving, fixed_labels, moving_labels, fixed_landmarks, moving_landmarks,
                                    fixed_mask, moving_mask, fixed_mask_segments, moving_mask_segments)
        job = self.start(inputs, options, outputs)
        try:
            while True:
                snapshot = job.poll()
                if progress is not None:
                    progress(snapshot)
                if not snapshot.running:
                    break
                if should_cancel is not None and should_cancel():
                    job.cancel()
                    break
                if options.timeout_s is not None and snapshot.elapsed_s > options.timeout_s:
                    job.cancel()
                    raise TimeoutError(f"the registration took longer than {options.timeout_s:g} s and was stopped")
                time.sleep(poll_interval_s)
        except BaseException:
            self.cleanup(job)  # stops the engine if it still runs
            raise
        return self.finish(job)

    # -- transform tools ----------------------------------------------------------------------
    def warp_node(
        self,
        transform: slicer.vtkMRMLTransformNode,
        node: slicer.vtkMRMLNode,
        reference: slicer.vtkMRMLScalarVolumeNode | None = None,
        *,
        moving_volume: slicer.vtkMRMLScalarVolumeNode | None = None,
        direction: str = "moving-to-fixed",
        name: str | None = None,
    ) -> slicer.vtkMRMLNode:
        """A new node: ``node`` (of the moving image's space) taken through a result ``transform``.

        What is done depends on the node's class (:mod:`.transform_tools`):

        * markups: a hardened copy mapped ``direction`` (``moving-to-fixed`` or ``fixed-to-moving``);
          ``reference`` is not used;
        * segmentation: exported on ``moving_volume``'s grid (``reference``'s when None, which keeps only what
          lies inside the reference's field of view), then resampled onto ``reference`` by label voting;
        * label map volume: resampled from its own grid onto ``reference`` by label voting;
        * scalar volume: resampled linearly onto ``reference``.

        Raises:
            ValueError: no transform or node, no ``reference`` for a volume or segmentation, or a node of
                another class.
        """
        if transform is None or node is None:
            raise ValueError("choose a transform and a node to warp")
        if isinstance(node, slicer.vtkMRMLMarkupsNode):
            return transform_tools.apply_to_markups(self.scene, transform, node, direction, name)
        kinds = (slicer.vtkMRMLSegmentationNode, slicer.vtkMRMLLabelMapVolumeNode, slicer.vtkMRMLScalarVolumeNode)
        if not isinstance(node, kinds):
            raise ValueError(f"cannot warp '{node.GetName()}' ({node.GetClassName()}); expected a scalar volume, "
                             f"label map, segmentation or markups node")
        if reference is None:
            raise ValueError("choose the reference grid (normally the fixed volume)")
        if isinstance(node, slicer.vtkMRMLSegmentationNode):
            source = moving_volume if moving_volume is not None else reference
            return transform_tools.apply_to_labels(self.scene, transform, node, source, reference, name)
        if isinstance(node, slicer.vtkMRMLLabelMapVolumeNode):  # before scalar volumes: it is one of them
            return transform_tools.apply_to_labels(self.scene, transform, node, node, reference, name)
        return transform_tools.apply_to_volume(self.scene, transform, node, reference, name=name)

    # -- presentation (pure MRML, no Qt) --------------------------------------------------
    @staticmethod
    def apply_transform_to_moving(result: RegistrationResult, moving: slicer.vtkMRMLScalarVolumeNode) -> bool:
        """Put ``moving`` under the result transform (it then shows aligned with the fixed volume).

        Returns False (and changes nothing) if ``moving`` already has a parent transform,
        since the result was computed in that transform's world coordinates.
        """
        if moving.GetParentTransformNode() is not None:
            logger.warning("'%s' already has a parent transform; the result transform was not applied", moving.GetName())
            return False
        moving.SetAndObserveTransformNodeID(result.transform.GetID())
        return True

    def show_in_views(self, background, foreground, opacity: float = 0.5) -> None:
        """Show ``background`` (fixed) and ``foreground`` (warped) in every slice view, faded."""
        for index in range(self.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            composite = self.scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            composite.SetBackgroundVolumeID(background.GetID())
            composite.SetForegroundVolumeID(foreground.GetID())
            composite.SetForegroundOpacity(opacity)
