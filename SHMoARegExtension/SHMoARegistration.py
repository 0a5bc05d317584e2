"""SHMoARegistration: deformable registration with the SHMoAReg engine, as a 3D Slicer module.

The module name differs from the engine package (``SHMoAReg``) so neither shadows the
other on ``sys.path``. This file holds the thin Qt layer only: the module description,
a Widget that binds the ``.ui`` to a typed parameter node and polls a running job with
a ``QTimer``, and the self-test. Everything else (the Logic) lives in
``SHMoARegistrationLib`` and runs without Qt.

Self-test inside Slicer::

    Slicer --no-main-window --testing --python-code "import slicer.util; slicer.util.selectModule('SHMoARegistration'); \\
        import SHMoARegistration; SHMoARegistration.SHMoARegistrationTest().runTest()"
"""
from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Annotated, Optional, Union

import qt
import slicer
import vtk
from slicer import (
    vtkMRMLGridTransformNode,
    vtkMRMLLabelMapVolumeNode,
    vtkMRMLMarkupsFiducialNode,
    vtkMRMLScalarVolumeNode,
    vtkMRMLSegmentationNode,
)
from slicer.parameterNodeWrapper import Choice, Default, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from SHMoARegistrationLib import (
    PRESETS,
    OutputNodes,
    RegistrationCancelled,
    RegistrationInputs,
    RegistrationOptions,
    SHMoARegistrationLogic,
)
from SHMoARegistrationLib import dependencies, selftest, transform_tools
from SHMoARegistrationLib.preflight import query_gpu

logger = logging.getLogger("SHMoARegistration")


class SHMoARegistration(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        super().__init__(parent)
        self.parent.title = "SHMoA Registration"
        self.parent.categories = ["Registration"]
        self.parent.dependencies = []
        self.parent.contributors = ["SHMoAReg developers"]
        self.parent.helpText = (
            "Deformable registration of two volumes with SHMoAReg (hierarchical Mixture-of-Experts network "
            "and instance optimisation). Pick a fixed and a moving volume and click Register. The results are "
            "new nodes: the warped volume, a displacement-field transform (fixed to moving: put the moving "
            "volume under it to align it with the fixed volume; Slicer inverts it on the fly), a Jacobian map, "
            "one expert map per decoder layer and direction, the warped segmentation and a metrics table. "
            "Input nodes are never modified. See docs/slicer.md in the SHMoAReg repository."
        )
        self.parent.acknowledgementText = (
            "SHMoAReg implements the method of arXiv:2509.20073. The module layout follows SlicerElastix "
            "(A. Lasso) and the scripted-module template of 3D Slicer."
        )


class Device(enum.Enum):
    """Device choices; stored by name in the scene, the value is the engine's ``--device``."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


@parameterNodeWrapper
class SHMoARegistrationParameterNode:
    """The module state, saved with the scene (names match ``SlicerParameterName`` in the .ui)."""

    fixedVolume: vtkMRMLScalarVolumeNode
    movingVolume: vtkMRMLScalarVolumeNode
    fixedLabels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    movingLabels: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    fixedLandmarks: Optional[vtkMRMLMarkupsFiducialNode]
    movingLandmarks: Optional[vtkMRMLMarkupsFiducialNode]
    fixedMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    movingMask: Union[vtkMRMLSegmentationNode, vtkMRMLLabelMapVolumeNode, None]
    fixedMaskSegments: str  # segment names separated by commas; empty: every segment
    movingMaskSegments: str
    preset: Annotated[str, Choice(list(PRESETS)), Default("auto")]
    weightsFile: Path
    device: Device
    iterations: Annotated[int, WithinRange(-1, 10000), Default(-1)]  # -1: the preset's
    affine: Annotated[bool, Default(True)]
    diffeomorphic: bool
    expertMaps: Annotated[bool, Default(True)]
    jacobian: Annotated[bool, Default(True)]
    outputVolume: Optional[vtkMRMLScalarVolumeNode]
    outputTransform: Optional[vtkMRMLGridTransformNode]
    applyTransformToMoving: bool
    showResult: Annotated[bool, Default(True)]
    spacingMm: Annotated[float, WithinRange(0.0, 10.0), Default(0.0)]  # 0: the preset's
    seed: Annotated[int, WithinRange(0, 2147483647), Default(0)]
    keepTemp: bool


def options_from_parameters(parameters: SHMoARegistrationParameterNode) -> RegistrationOptions:
    """The Logic's options for the GUI state."""
    weights = str(parameters.weightsFile) if parameters.weightsFile and str(parameters.weightsFile) not in ("", ".") else None
    return RegistrationOptions(
        preset=parameters.preset,
        weights=weights,
        device=parameters.device.value,
        iterations=None if parameters.iterations < 0 else parameters.iterations,
        affine=parameters.affine,
        diffeomorphic=parameters.diffeomorphic,
        spacing_mm=parameters.spacingMm or None,
        seed=parameters.seed,
        expert_maps=parameters.expertMaps,
        jacobian=parameters.jacobian,
        keep_temp=parameters.keepTemp,
        apply_transform_to_moving=parameters.applyTransformToMoving,
    )


PARAMETER_OF_OPTION = {"affine": "affine", "device": "device", "spacing_mm": "spacingMm", "iterations": "iterations",
                       "preset": "preset", "diffeomorphic": "diffeomorphic", "seed": "seed"}
"""Parameter node field of each :class:`RegistrationOptions` field a pre-flight suggestion may change."""


def apply_suggestion(parameters: SHMoARegistrationParameterNode, suggestion: dict) -> None:
    """Write a pre-flight suggestion (option name -> value, e.g. ``{"spacing_mm": 3.5}``) into the parameter
    node, so the GUI shows the settings that run (:func:`options_from_parameters` reads them back)."""
    unknown = sorted(set(suggestion) - set(PARAMETER_OF_OPTION))
    if unknown:
        raise ValueError(f"cannot apply the suggested option(s) {unknown}; "
                         f"expected some of {sorted(PARAMETER_OF_OPTION)}")
    for name, value in suggestion.items():
        if name == "device":
            value = Device(getattr(value, "value", value))
        elif name == "spacing_mm":
            value = float(value) if value else 0.0  # 0: the preset's
        elif name == "iterations":
            value = -1 if value is None else int(value)  # -1: the preset's
        setattr(parameters, PARAMETER_OF_OPTION[name], value)


def segment_names(text: str) -> tuple[str, ...] | None:
    """``"liver, lesion"`` -> ``("liver", "lesion")``; empty -> None (every segment)."""
    names = tuple(name.strip() for name in (text or "").split(",") if name.strip())
    return names or None


def inputs_from_parameters(p: SHMoARegistrationParameterNode) -> RegistrationInputs:
    """The Logic's input nodes for the GUI state."""
    return RegistrationInputs(p.fixedVolume, p.movingVolume, p.fixedLabels, p.movingLabels, p.fixedLandmarks,
                              p.movingLandmarks, p.fixedMask, p.movingMask, segment_names(p.fixedMaskSegments),
                              segment_names(p.movingMaskSegments))


class SHMoARegistrationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI: binds the .ui to the parameter node, runs the Logic asynchronously, shows progress."""

    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._logLinesShown = 0
        self._timer = qt.QTimer()
        self._timer.setInterval(self.POLL_INTERVAL_MS)
        self._timer.timeout.connect(self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SHMoARegistration.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SHMoARegistrationLogic(slicer.mrmlScene)
        self.ui.progressBar.setVisible(False)
        self.ui.applyButton.connect("clicked(bool)", self.onApply)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.applyToNodeButton.connect("clicked(bool)", self.onWarpNode)
        self.ui.inverseButton.connect("clicked(bool)", self.onInverse)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self._describeDevices()
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self._timer.stop()
        if self._job is not None:
            self._job.cancel()
            self.logic.cleanup(self._job)
            self._job = None
        self.removeObservers()

    # -- parameter node (standard template) -----------------------------------------------------
    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        parameterNode = SHMoARegistrationParameterNode(self.getParameterNode())
        if not parameterNode.fixedVolume:
            volumes = slicer.mrmlScene.GetNodesByClass("vtkMRMLScalarVolumeNode")
            if volumes.GetNumberOfItems() >= 2:
                parameterNode.fixedVolume = volumes.GetItemAsObject(0)
                parameterNode.movingVolume = volumes.GetItemAsObject(1)
        self.setParameterNode(parameterNode)

    def getParameterNode(self):
        """The scene's singleton parameter node of this module (tagged with the module name)."""
        store = ScriptedLoadableModuleLogic()
        store.moduleName = "SHMoARegistration"
        return store.getParameterNode()

    def setParameterNode(self, parameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = parameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.fixedVolume and self._parameterNode.movingVolume)
        running = self._job is not None
        self.ui.applyButton.enabled = ready and not running
        self.ui.cancelButton.enabled = running
        self.ui.applyButton.toolTip = "Register the moving volume to the fixed volume" if ready else "Select a fixed and a moving volume"

    def _describeDevices(self) -> None:
        gpu = query_gpu()
        self.ui.deviceInfoLabel.text = (
            f"CUDA GPU: {gpu.name}, {gpu.free_mb:.0f} of {gpu.total_mb:.0f} MB free" if gpu else "No CUDA GPU found: runs on the CPU."
        )

    # -- running -------------------------------------------------------------------------------
    def onApply(self) -> None:
        if not self._ensureDependencies():
            return
        p = self._parameterNode
        options = options_from_parameters(p)
        inputs = inputs_from_parameters(p)
        outputs = OutputNodes(warped_volume=p.outputVolume, transform=p.outputTransform)
        with slicer.util.tryWithErrorDisplay("Cannot start the registration.", waitCursor=True):
            if not self._confirmPreflight(inputs, options):
                return
            options = options_from_parameters(p)  # with the suggestions the user accepted
            self._job = self.logic.start(inputs, options, outputs)
            self._logLinesShown = 0
            self.ui.logTextEdit.clear()
            self.ui.progressBar.setValue(0)
            self.ui.progressBar.setVisible(True)
            self.ui.statusLabel.text = "Starting..."
            self._checkCanApply()
            self._timer.start()

    def onCancel(self) -> None:
        if self._job is not None:
            self.ui.statusLabel.text = "Cancelling..."
            self.ui.cancelButton.enabled = False
            self._job.cancel(wait=False)  # the timer sees the process end

    def onTimer(self) -> None:
        job = self._job
        if job is None:
            self._timer.stop()
            return
        snapshot = job.poll()
        for line in job.log[self._logLinesShown:]:
            self.ui.logTextEdit.appendPlainText(line)
        self._logLinesShown = len(job.log)
        self.ui.progressBar.setValue(int(round(100 * snapshot.progress)))
        left = f", about {snapshot.remaining_s:.0f} s left" if snapshot.remaining_s is not None else ""
        self.ui.statusLabel.text = f"{snapshot.stage}: {snapshot.message} ({snapshot.progress:.0%}{left})"
        if snapshot.running:
            return
        self._timer.stop()
        self._job = None
        try:
            with slicer.util.WaitCursor():
                result = self.logic.finish(job)
        except RegistrationCancelled:
            self.ui.statusLabel.text = "Cancelled; nothing was added to the scene."
        except Exception as error:
            self.ui.statusLabel.text = f"Failed: {error}"
            slicer.util.errorDisplay(f"The registration failed:\n{error}", detailedText="\n".join(job.log[-200:]))
        else:
            self._showResult(result)
        finally:
            self.ui.progressBar.setVisible(False)
            self._checkCanApply()

    def _showResult(self, result) -> None:
        seconds = result.report.get("timings_s", {}).get("total")
        self.ui.statusLabel.text = "Done" + (f" in {seconds:.1f} s." if isinstance(seconds, (int, float)) else ".")
        self.ui.metricsTableView.setMRMLTableNode(result.metrics_table)
        self.ui.toolTransformSelector.setCurrentNode(result.transform)
        self.ui.toolReferenceSelector.setCurrentNode(self._parameterNode.fixedVolume)
        if self._parameterNode.showResult:
            self.logic.show_in_views(self._parameterNode.fixedVolume, result.warped_volume)

    # -- transform tools ---------------------------------------------------------------------------
    def onWarpNode(self) -> None:
        with slicer.util.tryWithErrorDisplay("Cannot warp the node.", waitCursor=True):
            warped = self.logic.warp_node(
                self.ui.toolTransformSelector.currentNode(), self.ui.toolInputSelector.currentNode(),
                self.ui.toolReferenceSelector.currentNode(), moving_volume=self._parameterNode.movingVolume,
                direction=self.ui.pointDirectionComboBox.currentText)
            self.ui.statusLabel.text = f"Created '{warped.GetName()}'."

    def onInverse(self) -> None:
        transform = self.ui.toolTransformSelector.currentNode()
        with slicer.util.tryWithErrorDisplay("Cannot create the inverse.", waitCursor=True):
            if transform is None:
                raise ValueError("choose a transform")
            inverse = transform_tools.inverse_transform_node(slicer.mrmlScene, transform)
            self.ui.statusLabel.text = f"Created '{inverse.GetName()}' (moving to fixed)."

    def onExport(self) -> None:
        transform = self.ui.toolTransformSelector.currentNode()
        with slicer.util.tryWithErrorDisplay("Cannot export the transform.", waitCursor=True):
            if transform is None or not self.ui.exportPathLineEdit.currentPath:
                raise ValueError("choose a transform and a file to write")
            path = transform_tools.export_transform(transform, self.ui.exportPathLineEdit.currentPath,
                                                    self.ui.exportFormatComboBox.currentText,
                                                    self.ui.toolReferenceSelector.currentNode())
            self.ui.statusLabel.text = f"Wrote {path}."

    # -- dialogs -------------------------------------------------------------------------------
    def _confirmPreflight(self, inputs: RegistrationInputs, options: RegistrationOptions) -> bool:
        """Show preflight warnings; apply a suggested fix to the parameter node (Yes), go on (No) or stop (Cancel)."""
        for finding in self.logic.preflight(inputs.fixed, inputs.moving, options):
            if finding.level != "warning":
                logger.info(finding.message)
                continue
            if not finding.suggestion:
                if not slicer.util.confirmOkCancelDisplay(finding.message):
                    return False
                continue
            answer = qt.QMessageBox.question(
                slicer.util.mainWindow(), "SHMoA Registration", finding.message + "\n\nApply this change?",
                qt.QMessageBox.Yes | qt.QMessageBox.No | qt.QMessageBox.Cancel,
            )
            if answer == qt.QMessageBox.Cancel:
                return False
            if answer == qt.QMessageBox.Yes:
                apply_suggestion(self._parameterNode, finding.suggestion)
        return True

    def _ensureDependencies(self) -> bool:
        """Install torch (PyTorch Utils) and the other packages after one confirmation."""

        def installTorch():
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                slicer.util.errorDisplay("SHMoAReg needs the PyTorch extension: install it from the Extensions Manager.")
                return None
            return PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.1")

        with slicer.util.tryWithErrorDisplay("Installing the dependencies failed.", waitCursor=True):
            # The engine runs in a new PythonSlicer process, which sees new packages without a restart.
            return dependencies.install_missing(slicer.util.confirmOkCancelDisplay, installTorch, slicer.util.pip_install)
        return False


class SHMoARegistrationTest(ScriptedLoadableModuleTest):
    """Runs the known-deformation scenario of ``SHMoARegistrationLib.selftest`` inside Slicer."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_known_deformation()
        self.test_bad_input_adds_nothing()

    def test_known_deformation(self) -> None:
        self.delayDisplay("Registering a volume deformed by a known field")
        logic = SHMoARegistrationLogic(slicer.mrmlScene)
        figures = selftest.run_known_deformation(logic, iterations=20, affine=False, device="cpu")
        logger.info("known deformation: %s", figures)
        self.assertLess(figures["hardening_error"], 1e-3)
        self.assertLess(figures["rms_after"], 0.6 * figures["rms_before"])
        self.assertLess(figures["field_error_mm"], 0.5 * figures["field_mm"])
        self.delayDisplay("Test passed")

    def test_bad_input_adds_nothing(self) -> None:
        logic = SHMoARegistrationLogic(slicer.mrmlScene)
        count = slicer.mrmlScene.GetNumberOfNodes()
        empty = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
        with self.assertRaises(ValueError):
            logic.register(empty, empty)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), count + 1)
