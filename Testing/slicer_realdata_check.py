"""Real-data check of the Slicer Logic: an abdominal CT registered to a known deformation of itself.

Inside a real ``vtkMRMLScene`` (PyPI ``slicer-core``), the CT of ``../shared/data/abdomen-ct``
is the fixed volume; the moving volume (and its TotalSegmentator segmentation) is the
CT resampled through the inverse of a known smooth field ``u`` (``T(x) = x + u(x)``).
The Logic registers moving to fixed with the real engine; the figures are

* Dice before/after (mean over the labels) read from the metrics **table node**;
* the displacement error in mm of the output **grid transform** (read back from MRML,
  RAS -> LPS) against ``u``, inside the body (CT > -300 HU), vs the size of ``u``.

Run::

    .venv/bin/python Testing/slicer_realdata_check.py [--iterations N] [--amplitude 6 -5 4]

``Testing/test_slicer_logic.py::test_real_ct_known_deformation`` (marked slow) calls
:func:`run_check` and checks the figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "abdomen-ct"
CT = DATA / "example_ct.nii.gz"
LABELS = DATA / "example_seg_fast_force_split.nii.gz"
LABEL_NAMES = DATA / "total_labels.json"
sys.path.insert(0, str(REPO / "SHMoARegExtension"))

ORGANS = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas")


def data_available() -> bool:
    return CT.is_file() and LABELS.is_file()


def _scene():
    import slicer

    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if not factory.GetConverterRules():
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())
    scene = slicer.vtkMRMLScene()
    color_logic = slicer.vtkMRMLColorLogic()
    color_logic.SetMRMLScene(scene)
    return scene, color_logic


def _segmentation(scene, labels: sitk.Image, names: dict[int, str], name: str):
    """A segmentation node with one named segment per label of ``labels`` (via a temporary label map)."""
    import slicer

    from SHMoARegistrationLib.conversion import update_volume_from_sitk

    colors = scene.AddNewNodeByClass("vtkMRMLColorTableNode", "TotalSegmentator labels")
    colors.SetTypeToUser()
    colors.SetNumberOfColors(max(names) + 1)
    rng = np.random.default_rng(0)
    for value in range(max(names) + 1):
        colors.SetColor(value, names.get(value, f"label {value}"), *rng.uniform(0.2, 1.0, 3), 1.0)
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", f"{name} labelmap")
    update_volume_from_sitk(labelmap, labels)
    labelmap.CreateDefaultDisplayNodes()
    labelmap.GetDisplayNode().SetAndObserveColorNodeID(colors.GetID())
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    segmentation.CreateDefaultDisplayNodes()
    if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation):
        raise RuntimeError("could not import the label map")
    scene.RemoveNode(labelmap)
    return segmentation


def run_check(iterations: int | None = None, amplitude_mm=(6.0, -5.0, 4.0), device: str = "auto",
              on_result=None) -> dict:
    """Run the scenario; return the figures (see the module docstring). ``on_result(fixed, moving, result,
    figures)``, when given, sees the scene's nodes before the scene is dropped (e.g. to draw them)."""
    from SHMoARegistrationLib import SHMoARegistrationLogic, selftest
    from SHMoARegistrationLib.conversion import displacement_from_grid_transform, volume_node_from_sitk
    from SHMoARegistrationLib.metrics_table import metric_value

    ct = sitk.Cast(sitk.ReadImage(str(CT)), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(LABELS))
    names = {int(k): v for k, v in json.loads(LABEL_NAMES.read_text()).items()} if LABEL_NAMES.is_file() else {}
    present = sorted(int(v) for v in np.unique(sitk.GetArrayViewFromImage(labels)) if v)
    names = {value: names.get(value, f"label {value}") for value in present}
    moving_image, field, moving_labels = selftest.known_pair(ct, np.array(amplitude_mm), labels)

    scene, _color_logic = _scene()
    volumes = [volume_node_from_sitk(scene, image, name)
               for image, name in ((ct, "CT fixed"), (moving_image, "CT moving (known deformation)"))]
    fixed_segmentation = _segmentation(scene, labels, names, "fixed segmentation")
    moving_segmentation = _segmentation(scene, moving_labels, names, "moving segmentation")

    start = time.monotonic()
    options = {"device": device, "preset": "abdomen-ct"}
    if iterations is not None:
        options["iterations"] = iterations
    with tempfile.TemporaryDirectory(prefix="shmoareg-realdata-") as temp_root:
        logic = SHMoARegistrationLogic(scene, temp_root=temp_root)
        result = logic.register(volumes[0], volumes[1], fixed_labels=fixed_segmentation,
                                moving_labels=moving_segmentation, **options)
    seconds = time.monotonic() - start

    estimated = sitk.GetArrayFromImage(displacement_from_grid_transform(result.transform))
    truth = sitk.GetArrayFromImage(field)
    body = sitk.GetArrayFromImage(ct) > -300
    border = np.zeros_like(body)
    border[5:-5, 5:-5, 5:-5] = True
    mask = body & border
    error = np.linalg.norm(estimated - truth, axis=-1)[mask]
    size = np.linalg.norm(truth, axis=-1)[mask]
    table = result.metrics_table
    organs = {}
    for organ in ORGANS:
        try:
            organs[organ] = (metric_value(table, f"Dice ({organ})", "Before"), metric_value(table, f"Dice ({organ})"))
        except KeyError:
            pass
    figures = {
        "dice_mean_before": metric_value(table, "Dice mean", "Before"),
        "dice_mean_after": metric_value(table, "Dice mean", "After"),
        "dice_organs_before_after": organs,
        "displacement_error_mm_mean": float(error.mean()),
        "displacement_error_mm_median": float(np.median(error)),
        "displacement_error_mm_p95": float(np.percentile(error, 95)),
        "known_displacement_mm_mean": float(size.mean()),
        "known_displacement_mm_max": float(np.linalg.norm(truth, axis=-1).max()),
        "folding_fraction": metric_value(table, "Folding fraction"),
        "seconds": seconds,
        "engine_seconds": result.report.get("timings_s", {}).get("total"),
        "device": result.report.get("device"),
        "iterations": (result.report.get("parameters") or {}).get("iterations"),
        "working_grid": result.report.get("working_grid"),
        "voxels_in_body_mask": int(mask.sum()),
    }
    if on_result is not None:
        on_result(volumes[0], volumes[1], result, figures)
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=None, help="instance-optimisation iterations (default: preset)")
    parser.add_argument("--amplitude", type=float, nargs=3, default=(6.0, -5.0, 4.0), help="peak field per LPS axis, mm")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if not data_available():
        print(f"data not found: {CT}", file=sys.stderr)
        return 2
    figures = run_check(args.iterations, args.amplitude, args.device)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
