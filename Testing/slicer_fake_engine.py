"""A stand-in for ``python -m SHMoAReg register`` with a known analytic answer.

It accepts the engine's command line and writes the engine's output folder exactly
as the contract states (``warped.nii.gz``, ``transform.h5``, ``displacement.nii.gz``,
``jacobian.nii.gz``, ``warped_labels.nii.gz``, ``experts/``, ``report.json``), but the
"registration" is the known analytic field of ``SHMoARegistrationLib/selftest.py``. The
Slicer Logic tests use it to check loading, RAS/LPS handling, progress, failures and
cancelling independently of the network.

Behaviour is chosen with the environment variable ``SHMOAREG_FAKE_MODE``:
``ok`` (default), ``fail`` (error line, exit status 2), ``slow`` (reports progress for
a minute and starts a child process whose pid goes to ``$SHMOAREG_FAKE_CHILD_PID``),
``missing`` (reports success but writes no ``warped.nii.gz``).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk


def _load_selftest():
    """The known field from the module's ``SHMoARegistrationLib/selftest.py``, loaded by path (no slicer import)."""
    path = Path(__file__).resolve().parents[1] / "SHMoARegExtension" / "SHMoARegistrationLib" / "selftest.py"
    spec = importlib.util.spec_from_file_location("shmoareg_selftest", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


selftest = _load_selftest()
known_displacement_image = selftest.known_displacement_image
grid_points_lps = selftest.grid_points_lps


def _dice(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    values = sorted((set(np.unique(a)) | set(np.unique(b))) - {0})
    return {str(int(v)): float(2 * np.sum((a == v) & (b == v)) / max(np.sum(a == v) + np.sum(b == v), 1)) for v in values}


def _progress(stage: str, progress: float, message: str = "", **extra) -> None:
    print(json.dumps({"stage": stage, "progress": progress, "message": message, **extra}), flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="fake-shmoareg")
    for name in ("fixed", "moving", "output-dir", "fixed-labels", "moving-labels", "fixed-landmarks",
                 "moving-landmarks", "weights", "iterations", "device", "seed", "preset", "spacing", "fixed-mask",
                 "moving-mask"):
        parser.add_argument(f"--{name}")
    for flag in ("json-progress", "diffeomorphic", "overwrite", "affine", "no-affine"):
        parser.add_argument(f"--{flag}", action="store_true")
    args = parser.parse_args(argv[1:] if argv and argv[0] == "register" else argv)
    mode = os.environ.get("SHMOAREG_FAKE_MODE", "ok")
    print(f"fake engine: mode {mode}, args {argv}", file=sys.stderr, flush=True)
    _progress("load", 0.05, "reading the images")
    if mode == "fail":
        _progress("error", 0.05, "fixed image: the image is constant")
        print("error: fixed image: the image is constant", file=sys.stderr, flush=True)
        return 2
    if mode == "slow":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        Path(os.environ["SHMOAREG_FAKE_CHILD_PID"]).write_text(str(child.pid))
        for step in range(600):
            _progress("optimise", 0.1 + step / 1000, f"iteration {step}")
            time.sleep(0.1)
        return 0
    fixed, moving = sitk.ReadImage(args.fixed), sitk.ReadImage(args.moving)
    field = known_displacement_image(fixed)
    transform = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
    out = Path(args.output_dir)
    (out / "experts").mkdir(parents=True, exist_ok=True)
    _progress("warp", 0.6, "resampling")
    warped = sitk.Resample(moving, fixed, transform, sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    sitk.WriteImage(field, str(out / "displacement.nii.gz"))
    sitk.WriteTransform(transform, str(out / "transform.h5"))
    if mode != "missing":
        sitk.WriteImage(warped, str(out / "warped.nii.gz"))
    sitk.WriteImage(sitk.DisplacementFieldJacobianDeterminant(field), str(out / "jacobian.nii.gz"))
    metrics: dict = {"sdlogj": 0.01, "folding_fraction": 0.0}
    if args.moving_labels:
        labels = sitk.ReadImage(args.moving_labels)
        warped_labels = sitk.Resample(labels, fixed, transform, sitk.sitkNearestNeighbor, 0, labels.GetPixelID())
        sitk.WriteImage(warped_labels, str(out / "warped_labels.nii.gz"))
        if args.fixed_labels:
            fixed_labels = sitk.GetArrayFromImage(sitk.ReadImage(args.fixed_labels))
            metrics["dice"] = _dice(fixed_labels, sitk.GetArrayFromImage(warped_labels))
            metrics["dice_before"] = _dice(fixed_labels, sitk.GetArrayFromImage(labels))
            metrics["dice_mean"] = float(np.mean(list(metrics["dice"].values())))
            metrics["dice_mean_before"] = float(np.mean(list(metrics["dice_before"].values())))
    for layer in range(2):
        for axis_index, axis in enumerate("zyx"):
            experts = sitk.GetImageFromArray(
                ((grid_points_lps(fixed)[..., axis_index] > 0) + layer).astype(np.uint8)
            )
            experts.CopyInformation(fixed)
            sitk.WriteImage(experts, str(out / "experts" / f"layer{layer}_{axis}.nii.gz"))
    utilisation = {"shmoe": [{"layer": f"layer{layer}", "kernel_sizes": [3, 5, 7, 9]} for layer in range(2)]}
    (out / "experts" / "experts.json").write_text(json.dumps(utilisation))
    parameters: dict = {"argv": argv}
    for role, path in (("fixed", args.fixed_mask), ("moving", args.moving_mask)):
        if path:  # what the Logic handed over: voxels excluded, and whether the mask is on its image's grid
            mask, image = sitk.ReadImage(path), fixed if role == "fixed" else moving
            parameters[f"{role}_mask_voxels"] = int(np.count_nonzero(sitk.GetArrayViewFromImage(mask)))
            parameters[f"{role}_mask_on_image_grid"] = bool(
                mask.GetSize() == image.GetSize() and np.allclose(mask.GetOrigin(), image.GetOrigin(), atol=1e-4)
                and np.allclose(mask.GetDirection(), image.GetDirection(), atol=1e-6))
    report = {"metrics": metrics, "timings_s": {"total": 0.1}, "device": "cpu", "peak_memory_mb": 12.0,
              "weights": {"name": "fake"}, "parameters": parameters}
    (out / "report.json").write_text(json.dumps(report))
    _progress("done", 1.0, "finished", output_dir=str(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
