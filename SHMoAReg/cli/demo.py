"""``shmoareg demo``: a registration with a known answer.

By default the real abdominal CT shipped in ``Resources/Demo`` (TotalSegmentator's example CT and its
label map at 4 mm, Apache-2.0; see the README there) is registered against a known smooth deformation of
itself: a random affine and a stationary-velocity field, made by the benchmark's
:func:`SHMoAReg.benchmark.suites.random_deformation` as in its ``ct-deformed`` suite. The default pipeline
runs (affine pre-alignment, the preset's shipped weights when they exist, instance optimisation).

``phantom=True`` (``shmoareg demo --phantom``) registers a generated labelled phantom (3 mm voxels, an
oblique direction matrix) deformed by a known B-spline field instead; it needs no file.

Both print Dice before/after, the error against the known field and where the outputs are. In both pairs
``moving = fixed o T^-1`` for the known fixed -> moving transform ``T`` (:mod:`SHMoAReg.conventions`), whose
displacement the registration should find.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..io.image_io import write_image
from ..evaluate.metrics import dice_per_label, summarize
from ..synthetic import deform, displacement_of, smooth_deformation
from ..synthetic import phantom as labelled_phantom

__all__ = ["DEMO_DIR", "DEMO_FILES", "demo_data", "make_ct_demo_pair", "make_demo_pair", "run_demo"]

OBLIQUE = tuple(sitk.VersorTransform((0.0, 0.0, 1.0), 0.2).GetMatrix())
DEMO_DIR = Path(__file__).resolve().parents[2] / "Resources" / "Demo"
DEMO_FILES = {"image": "example_ct_4mm.nii.gz", "labels": "example_ct_4mm_labels.nii.gz"}
CT_DEFORMATION = {"max_mm": 12.0, "control_mm": 60.0}  # the ct-deformed suite's: SVF up to 12 mm, 3 deg, 5 mm, 3 %
BODY_ABOVE_HU = -500.0  # the field error is averaged over the body


def demo_data(folder: Path = DEMO_DIR) -> dict[str, Path]:
    """The demo CT and label map in ``folder`` (``Resources/Demo`` of the repository); raises
    :class:`InputError` with one line when they are missing (e.g. an installed wheel without ``Resources``)."""
    paths = {key: Path(folder) / name for key, name in DEMO_FILES.items()}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        raise InputError(f"the demo data is missing ({', '.join(missing)}); it ships in Resources/Demo of the "
                         f"source repository - run from a checkout, or use `shmoareg demo --phantom`")
    return paths


def make_ct_demo_pair(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write the demo CT (fixed), its copy deformed by a known ``T`` (moving), both label maps and the true
    fixed -> moving displacement (LPS mm on the fixed grid, ``true_displacement``) into ``folder``."""
    from ..benchmark.suites import _deformed_pair

    data = demo_data()
    image = sitk.ReadImage(str(data["image"]), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(data["labels"]), sitk.sitkUInt8)
    folder = Path(folder)
    pair = _deformed_pair(image, labels, folder.parent, folder.name, np.random.default_rng(seed), "abdomen-ct",
                          **CT_DEFORMATION)
    return {"fixed": pair.fixed, "moving": pair.moving, "fixed_labels": pair.fixed_labels,
            "moving_labels": pair.moving_labels, "true_displacement": pair.true_displacement}


def make_demo_pair(folder: Path, seed: int = 0, max_displacement_mm: float = 9.0) -> dict[str, Path]:
    """Write the phantom's fixed/moving images and labels with a known transform (``true_transform``) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    image, labels = labelled_phantom(seed=seed, direction=OBLIQUE, origin=(-100.0, -90.0, -80.0))
    truth = smooth_deformation(image, max_displacement_mm, mesh_size=3, seed=seed + 1)
    paths = {"fixed": folder / "fixed.nii.gz", "moving": folder / "moving.nii.gz",
             "fixed_labels": folder / "fixed_labels.nii.gz", "moving_labels": folder / "moving_labels.nii.gz",
             "true_transform": folder / "true_transform.tfm"}
    write_image(deform(image, truth), paths["fixed"])
    write_image(deform(labels, truth, labels=True), paths["fixed_labels"])
    write_image(image, paths["moving"])
    write_image(labels, paths["moving_labels"])
    sitk.WriteTransform(truth, str(paths["true_transform"]))
    return paths


def run_demo(output_dir: Path, device: str = "auto", iterations: int | None = None, progress=None,
             overwrite: bool = False, phantom: bool = False) -> dict:
    """Make the pair (inputs in ``<output_dir>-inputs``), register it into ``output_dir`` and score it.

    Returns Dice before/after (mean over labels), the mean error (mm) of the found displacement against the
    known one over the body, the known displacement's mean, folding, SDlogJ, seconds and the folders.
    """
    from ..pipeline import register

    output_dir = Path(output_dir)
    inputs = output_dir.parent / f"{output_dir.name}-inputs"
    if phantom:
        paths = make_demo_pair(inputs)
        # the phantom's deformation has no affine part: the deformable stage alone
        result = register(paths["fixed"], paths["moving"], output_dir, fixed_labels=paths["fixed_labels"],
                          moving_labels=paths["moving_labels"], affine=False, device=device, iterations=iterations,
                          preset="abdomen-ct", progress=progress, overwrite=overwrite)
        truth = displacement_of(sitk.ReadTransform(str(paths["true_transform"])), sitk.ReadImage(str(paths["fixed"])))
    else:
        paths = make_ct_demo_pair(inputs)
        result = register(paths["fixed"], paths["moving"], output_dir, fixed_labels=paths["fixed_labels"],
                          moving_labels=paths["moving_labels"], device=device, iterations=iterations,
                          preset="abdomen-ct", progress=progress, overwrite=overwrite)
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(paths["true_displacement"]))).astype(np.float64)
    summary = _scores(result, paths, truth)
    summary.update(data="phantom" if phantom else f"abdominal CT ({DEMO_DIR})", output_dir=str(output_dir),
                   inputs_dir=str(inputs))
    return summary


def _scores(result, paths: dict[str, Path], truth: np.ndarray) -> dict:
    """Accuracy of ``result`` against the known ``(D, H, W, 3)`` LPS-mm displacement ``truth`` on the fixed grid."""
    fixed = sitk.ReadImage(str(paths["fixed"]))
    found = sitk.GetArrayFromImage(result.displacement).astype(np.float64)
    body = sitk.GetArrayFromImage(fixed) > BODY_ABOVE_HU
    error = np.linalg.norm(found - truth, axis=-1)[body]
    metrics = result.report["metrics"]
    return {"dice_before": metrics["dice_mean_before"], "dice_after": metrics["dice_mean"],
            "displacement_error_mm": float(error.mean()),
            "true_displacement_mm": float(np.linalg.norm(truth, axis=-1)[body].mean()),
            "folding_fraction": metrics["folding_fraction"], "sdlogj": metrics["sdlogj"],
            "seconds": result.report["timings_s"]["total"], "dice_per_label_after": metrics["dice"],
            "check": summarize(dice_per_label(sitk.ReadImage(str(paths["fixed_labels"])), result.warped_labels))}
