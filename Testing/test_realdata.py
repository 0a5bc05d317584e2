"""Real-data accuracy checks (issue 3, "must show" 2 and 3). Slow: run with ``pytest -m slow -s``.

They need ../shared/data (see its README) and skip with the reason when it is absent.
"""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_data
from SHMoAReg import register
from SHMoAReg.preprocess.affine import affine_prealign
from SHMoAReg.evaluate.evaluation import warp_labels
from SHMoAReg.evaluate.metrics import dice_per_label, summarize
from SHMoAReg.synthetic import deform, displacement_of, smooth_deformation

pytestmark = [pytest.mark.slow, pytest.mark.realdata]


def test_abdominal_ct_known_deformation_instance_optimisation_only(tmp_path):
    folder = shared_data("abdomen-ct")
    image = sitk.ReadImage(str(folder / "example_ct.nii.gz"), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(folder / "example_seg_fast_force_split.nii.gz"))
    truth = smooth_deformation(image, 15.0, mesh_size=4, seed=1)
    fixed, fixed_labels = deform(image, truth), deform(labels, truth, labels=True)
    start = time.perf_counter()
    result = register(fixed, image, tmp_path / "ct", fixed_labels=fixed_labels, moving_labels=labels, affine=False,
                      weights=None, device="cpu")
    wall = time.perf_counter() - start
    body = sitk.GetArrayFromImage(fixed) > -500
    error = np.linalg.norm(sitk.GetArrayFromImage(result.displacement) - displacement_of(truth, fixed), axis=-1)[body]
    m = result.report["metrics"]
    print(f"\nabdominal CT, known 15 mm deformation, instance optimisation only (CPU): Dice {m['dice_mean_before']:.3f} -> "
          f"{m['dice_mean']:.3f} over {len(m['dice'])} labels; displacement error {error.mean():.2f} mm "
          f"(true {np.linalg.norm(displacement_of(truth, fixed), axis=-1)[body].mean():.2f} mm); SDlogJ {m['sdlogj']:.3f}; "
          f"folding {100 * m['folding_fraction']:.4f} %; HD95 {m['hd95_mm_mean']:.2f} mm; wall {wall:.1f} s")
    assert m["dice_mean"] >= 0.85 and m["folding_fraction"] < 0.005


def test_brain_pair_affine_plus_instance_optimisation(tmp_path):
    folder = shared_data("brain-mri")
    eval_labels = json.loads((folder / "vxm_eval_labels.json").read_text())
    eval_labels = [int(v) for v in (eval_labels.get("labels", eval_labels) if isinstance(eval_labels, dict) else eval_labels)]
    fixed = sitk.ReadImage(str(folder / "vxm_test_scan_t1.nii.gz"), sitk.sitkFloat32)
    fixed_labels = sitk.ReadImage(str(folder / "vxm_test_scan_aseg.nii.gz"))
    moving = sitk.ReadImage(str(folder / "fsaverage_brain.nii.gz"), sitk.sitkFloat32)
    moving_labels = sitk.ReadImage(str(folder / "fsaverage_aseg.nii.gz"))
    start = time.perf_counter()
    result = register(fixed, moving, tmp_path / "brain", fixed_labels=fixed_labels, moving_labels=moving_labels,
                      preset="brain-mri", device="cpu")
    wall = time.perf_counter() - start

    def dice(warped):
        return summarize(dice_per_label(fixed_labels, warped, eval_labels))

    identity = dice(warp_labels(moving_labels, fixed, None))
    affine_only = dice(warp_labels(moving_labels, fixed, affine_prealign(fixed, moving)))
    after = dice(result.warped_labels)
    m = result.report["metrics"]
    print(f"\nbrain vxm_test_scan <- fsaverage, 30 VoxelMorph structures: Dice identity {identity:.3f}, affine "
          f"{affine_only:.3f}, affine + instance optimisation {after:.3f}; SDlogJ {m['sdlogj']:.3f}; folding "
          f"{100 * m['folding_fraction']:.4f} %; wall {wall:.1f} s")
    assert after > affine_only > identity
