"""Multi-modal pairs: the ``mr-ct`` preset (MIND-SSC similarity) on MR-like vs CT images.

* Synthetic (fast): a CT-like phantom against an MR-like remapping of the same phantom
  (a non-monotonic intensity map - fat bright, bone and vessels dark - with a bias field
  and noise) under a known smooth deformation: organ Dice and field error must improve.
* Real data (``/work/shared/data``; skipped without it): the real abdominal CT against an
  MR-like remapping of itself with a known deformation, and (``slow``) the real abdominal
  MR against the real CT of another subject, scored by organ label overlap.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import SHMoAReg
from SHMoAReg.preprocess.affine import affine_prealign
from SHMoAReg.evaluate.metrics import dice_per_label
from SHMoAReg.synthetic import deform, displacement_of, phantom, smooth_deformation

DATA = Path(os.environ.get("SHMOAREG_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
needs_data = pytest.mark.skipif(not (DATA / "abdomen-ct").is_dir() or not (DATA / "abdomen-mr").is_dir(),
                                reason=f"real data not found: {DATA} (../shared/data beside the checkout, or set SHMOAREG_SHARED_DATA)")


def mr_like(ct: sitk.Image, seed: int = 0) -> sitk.Image:
    """A T1-MR-like image of a CT (HU): fat bright, soft tissue mid-grey, vessels/bone/air dark; bias field + noise."""
    hu = sitk.GetArrayFromImage(ct).astype(np.float64)
    mr = np.interp(hu, [-1000, -300, -80, 0, 50, 70, 140, 160, 400, 1500],
                   [5, 60, 420, 200, 260, 330, 130, 110, 60, 20])
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in hu.shape), indexing="ij")
    mr = mr * np.exp(0.25 * x - 0.15 * y + 0.1 * z) + np.random.default_rng(seed).normal(0, 8, hu.shape)
    image = sitk.GetImageFromArray(mr.astype(np.float32))
    image.CopyInformation(ct)
    return image


def mean_dice(fixed_labels: sitk.Image, moving_labels: sitk.Image, transform: sitk.Transform | None,
              labels: list[int] | None = None) -> float:
    warped = sitk.Resample(moving_labels, fixed_labels, transform or sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    scores = dice_per_label(fixed_labels, warped, labels)
    return float(np.nanmean(list(scores.values())))


def test_mr_like_phantom_against_ct_with_known_deformation():
    ct, labels = phantom((36, 32, 28), (3.0, 3.0, 3.0), seed=0)
    truth = smooth_deformation(ct, 6.0, seed=3)
    fixed = mr_like(deform(ct, truth))
    fixed_labels = deform(labels, truth, labels=True)
    known = displacement_of(truth, fixed)
    body = sitk.GetArrayFromImage(deform(ct, truth)) > -500
    result = SHMoAReg.register(fixed, ct, None, preset="mr-ct", iterations=60, affine=False, spacing=3.0)
    error_before = np.linalg.norm(known, axis=-1)[body].mean()
    error_after = np.linalg.norm(sitk.GetArrayFromImage(result.displacement) - known, axis=-1)[body].mean()
    dice_before, dice_after = mean_dice(fixed_labels, labels, None), mean_dice(fixed_labels, labels, result.transform)
    print(f"MR-like phantom vs CT: Dice {dice_before:.3f} -> {dice_after:.3f}; field error {error_before:.2f} -> "
          f"{error_after:.2f} mm")
    assert result.report["parameters"]["similarity"] == "mind"
    assert dice_after > dice_before + 0.1
    assert error_after < 0.9 * error_before


# -- real data ---------------------------------------------------------------------------------
def _real_ct(crop: bool) -> tuple[sitk.Image, sitk.Image]:
    ct = sitk.ReadImage(str(DATA / "abdomen-ct" / "example_ct_sm.nii.gz"), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(DATA / "abdomen-ct" / "example_seg.nii.gz"))
    if crop:  # the central 64 x 64 voxels in-plane, all 30 slices: upper abdomen (liver, spleen, kidneys)
        start = [(n - 64) // 2 for n in ct.GetSize()[:2]] + [0]
        ct, labels = (sitk.RegionOfInterest(i, [64, 64, 30], start) for i in (ct, labels))
    return ct, labels


def _organs(labels: sitk.Image, minimum_voxels: int) -> list[int]:
    values, counts = np.unique(sitk.GetArrayViewFromImage(labels), return_counts=True)
    return [int(v) for v, c in zip(values, counts) if v and c >= minimum_voxels]


def _ct_vs_mr_like(crop: bool, max_mm: float, iterations: int, spacing: float | None) -> dict:
    ct, labels = _real_ct(crop)
    truth = smooth_deformation(ct, max_mm, mesh_size=3, seed=11)
    fixed_ct = deform(ct, truth)
    fixed, fixed_labels = mr_like(fixed_ct, seed=2), deform(labels, truth, labels=True)
    organs = _organs(fixed_labels, 200)
    known = displacement_of(truth, fixed)
    body = sitk.GetArrayFromImage(fixed_ct) > -500
    start = time.perf_counter()
    result = SHMoAReg.register(fixed, ct, None, preset="mr-ct", iterations=iterations, affine=False, spacing=spacing)
    return {"dice_before": mean_dice(fixed_labels, labels, None, organs),
            "dice_after": mean_dice(fixed_labels, labels, result.transform, organs),
            "field_error_before_mm": float(np.linalg.norm(known, axis=-1)[body].mean()),
            "field_error_after_mm": float(np.linalg.norm(sitk.GetArrayFromImage(result.displacement) - known,
                                                         axis=-1)[body].mean()),
            "organs": len(organs), "seconds": time.perf_counter() - start,
            "folding_fraction": result.report["metrics"]["folding_fraction"]}


@needs_data
def test_real_ct_against_its_mr_like_remap_small():
    figures = _ct_vs_mr_like(crop=True, max_mm=8.0, iterations=40, spacing=3.0)
    print("real CT crop vs MR-like remap:", json.dumps({k: round(v, 3) for k, v in figures.items()}))
    assert figures["dice_after"] > figures["dice_before"] + 0.05
    assert figures["field_error_after_mm"] < figures["field_error_before_mm"]


@pytest.mark.slow
@needs_data
def test_real_ct_against_its_mr_like_remap_full():
    figures = _ct_vs_mr_like(crop=False, max_mm=15.0, iterations=150, spacing=None)
    print("real CT vs MR-like remap (15 mm):", json.dumps({k: round(v, 3) for k, v in figures.items()}))
    assert figures["dice_after"] > figures["dice_before"] + 0.1
    assert figures["field_error_after_mm"] < 0.6 * figures["field_error_before_mm"]


ORGANS = ["liver", "spleen", "kidney_right", "kidney_left", "stomach", "pancreas", "gallbladder", "duodenum", "aorta",
          "inferior_vena_cava", "autochthon_left", "autochthon_right", "iliopsoas_left", "iliopsoas_right"]


@pytest.mark.slow
@needs_data
def test_real_mr_against_real_ct_of_another_subject():
    """MR (fixed, a 20-slice slab) vs the CT's upper-abdomen sub-volume (moving): organ Dice by name.

    Different subjects, so the overlap is only a rough measure; the images' world frames are unrelated, so
    "before" is the centre-of-geometry alignment the affine starts from.
    """
    mr = sitk.ReadImage(str(DATA / "abdomen-mr" / "example_mr_sm.nii.gz"), sitk.sitkFloat32)
    mr_labels = sitk.ReadImage(str(DATA / "abdomen-mr" / "example_seg_mr.nii.gz"))
    ct, ct_labels = _real_ct(crop=False)
    mr_ids = {v: int(k) for k, v in json.loads((DATA / "abdomen-mr" / "labels_present.json").read_text())
              ["example_seg_mr.nii.gz"].items()}
    ct_ids = {v: int(k) for k, v in json.loads((DATA / "abdomen-ct" / "labels_present.json").read_text())
              ["example_seg.nii.gz"].items()}
    names = [n for n in ORGANS if n in mr_ids and n in ct_ids]
    # relabel the CT's ids to the MR's, so that one Dice per organ name compares the two
    table = np.zeros(int(sitk.GetArrayViewFromImage(ct_labels).max()) + 1, np.uint16)
    for name in names:
        table[ct_ids[name]] = mr_ids[name]
    relabelled = sitk.GetImageFromArray(table[sitk.GetArrayFromImage(ct_labels)])
    relabelled.CopyInformation(ct_labels)
    organs = [mr_ids[n] for n in names]

    def per_organ(transform):
        warped = sitk.Resample(relabelled, mr_labels, transform, sitk.sitkNearestNeighbor, 0)
        scores = dice_per_label(mr_labels, warped, organs)
        return {n: round(scores[mr_ids[n]], 3) for n in names}

    centres = sitk.CenteredTransformInitializer(mr, ct, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    affine = affine_prealign(mr, ct, seed=0)
    start = time.perf_counter()
    result = SHMoAReg.register(mr, ct, None, preset="mr-ct", seed=0)
    seconds = time.perf_counter() - start
    figures = {"centres": per_organ(centres), "affine": per_organ(affine), "deformable": per_organ(result.transform)}
    means = {k: round(float(np.mean(list(v.values()))), 3) for k, v in figures.items()}
    print("MR vs CT organ Dice:", json.dumps(figures), "means:", json.dumps(means), f"{seconds:.0f} s",
          f"folding {result.report['metrics']['folding_fraction']:.5f}")
    assert means["deformable"] > means["centres"] + 0.1
    assert means["deformable"] >= means["affine"]
