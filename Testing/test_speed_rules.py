"""The rules that make a full-size run fast: each is checked for what it must keep, not for its speed."""
import math

import pytest

from SHMoAReg.preprocess.grid_rules import MAX_WORKING_VOXELS, working_grid_size, working_spacing


@pytest.mark.parametrize("size, spacing, preset, expected", [
    ((192, 160, 256), (2.0, 2.0, 2.0), 2.0, 4.0),  # a whole abdomen (Learn2Reg AbdomenCTCT): 97x81x129
    ((175, 188, 211), (1.0, 1.0, 1.0), 1.5, 1.9),  # a brain T1 at 1 mm
    ((88, 94, 106), (2.0, 2.0, 2.0), 1.5, 2.0),  # small enough: the preset's spacing, never finer than the image
    ((512, 512, 300), (0.7, 0.7, 1.0), 2.0, 3.4),  # a thin-slice CT
])
def test_working_grid_is_coarsened_to_the_voxel_budget_and_no_further(size, spacing, preset, expected):
    chosen = working_spacing(None, preset, min(spacing), size, spacing)
    assert chosen == pytest.approx(expected)
    assert math.prod(working_grid_size(size, spacing, chosen)) <= MAX_WORKING_VOXELS
    if chosen > max(preset, min(spacing)):  # 0.1 mm finer would not fit
        assert math.prod(working_grid_size(size, spacing, round(chosen - 0.1, 1))) > MAX_WORKING_VOXELS


def test_the_brain_preset_keeps_a_whole_1_mm_brain_on_its_1_5_mm_grid():
    from SHMoAReg.preprocess.presets import get_preset

    brain = get_preset("brain-mri")
    size, spacing = (175, 188, 211), (1.0, 1.0, 1.0)
    assert working_spacing(None, brain.spacing, 1.0, size, spacing, brain.max_working_voxels) == 1.5
    abdomen = get_preset("abdomen-ct")
    assert working_spacing(None, abdomen.spacing, 2.0, (192, 160, 256), (2.0,) * 3, abdomen.max_working_voxels) == 4.0


def test_a_requested_spacing_is_kept_whatever_the_size():
    assert working_spacing(2.0, 2.0, 2.0, (192, 160, 256), (2.0, 2.0, 2.0)) == 2.0


def test_affine_on_a_whole_abdomen_sized_image_runs_coarse_and_still_recovers_a_known_affine():
    """A 384x320x512 mm phantom (192x160x256 at 2 mm): the affine stage works at about 8 mm, not 4 mm, and still
    removes most of a known rotation + scaling + shift (the deformable stage, run on it end to end in
    test_full_size_pipeline_recovers_a_known_deformation, takes up the rest)."""
    import numpy as np
    import SimpleITK as sitk

    from SHMoAReg.preprocess.affine import affine_prealign, affine_spacing
    from SHMoAReg.synthetic import phantom

    image, _ = phantom((192, 160, 256), (2.0, 2.0, 2.0), seed=1)
    centre = image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()])
    truth = sitk.AffineTransform(3)
    truth.SetCenter(centre)
    rotation = sitk.VersorTransform((0.0, 0.0, 1.0), math.radians(6.0)).GetMatrix()
    truth.SetMatrix((np.reshape(rotation, (3, 3)) @ np.diag([1.05, 0.97, 1.0])).ravel().tolist())
    truth.SetTranslation((8.0, -6.0, 10.0))
    moving = image
    fixed = sitk.Resample(image, image, truth.GetInverse(), sitk.sitkLinear, float(np.min(sitk.GetArrayViewFromImage(image))))
    assert affine_spacing(fixed, moving) > 7.0
    found = affine_prealign(fixed, moving, seed=0)  # fixed -> moving, as truth.GetInverse() o ... : truth maps moving -> fixed
    array = sitk.GetArrayViewFromImage(fixed)
    body = np.argwhere(array > np.percentile(array, 60))[::997]  # (k, j, i) of bright voxels, subsampled
    errors, before = [], []
    for k, j, i in body:
        point = fixed.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        errors.append(np.linalg.norm(np.subtract(found.TransformPoint(point), truth.GetInverse().TransformPoint(point))))
        before.append(np.linalg.norm(np.subtract(point, truth.GetInverse().TransformPoint(point))))
    after, initial = float(np.percentile(errors, 95)), float(np.percentile(before, 95))
    assert after < min(10.0, initial / 3), f"95th percentile error {after:.2f} mm (identity: {initial:.2f} mm)"


def test_full_size_pipeline_recovers_a_known_deformation():
    """A whole-abdomen-sized pair (192x160x256 at 2 mm) with a known affine + smooth deformation, default settings
    (no weights): the voxel budget puts the working grid at 3.9 mm, the affine runs at ~8 mm, the 8 mm scale stops on
    its plateau, and the recovered field still matches the truth to within about one 2 mm voxel in the body."""
    import numpy as np
    import SimpleITK as sitk

    from SHMoAReg import register
    from SHMoAReg.synthetic import displacement_of, phantom, smooth_deformation

    image, labels = phantom((192, 160, 256), (2.0, 2.0, 2.0), seed=2)
    bending = smooth_deformation(image, 9.0, mesh_size=3, seed=5)
    shift = sitk.TranslationTransform(3, (6.0, -4.0, 5.0))
    truth = sitk.CompositeTransform([shift, bending])  # fixed -> moving: the shift after the bending
    background = float(np.min(sitk.GetArrayViewFromImage(image)))
    fixed = sitk.Resample(image, image, truth, sitk.sitkLinear, background)
    fixed_labels = sitk.Resample(labels, image, truth, sitk.sitkNearestNeighbor, 0)
    result = register(fixed, image, None, weights="none", preset="same-modality", fixed_labels=fixed_labels,
                      moving_labels=labels, seed=0)
    report = result.report
    # the voxel budget spent on the body and 24 mm around it (the whole field of view would get 4.0 mm)
    assert report["working_grid"]["spacing_mm"] == 3.9
    coarse, fine = report["instance_optimisation"]
    assert coarse["iterations"] < coarse["planned"]  # stopped on its plateau
    check = sitk.Resample(fixed_labels, [96, 80, 128], sitk.Transform(), sitk.sitkNearestNeighbor, image.GetOrigin(),
                          (4.0, 4.0, 4.0), image.GetDirection())  # the errors on every 2nd voxel
    error = np.linalg.norm(displacement_of(result.transform, check) - displacement_of(truth, check), axis=-1)
    body = sitk.GetArrayViewFromImage(check) > 0
    before = np.linalg.norm(displacement_of(truth, check), axis=-1)[body]
    assert float(np.median(error[body])) < 1.5 < 5.0 < float(np.median(before))  # measured 0.84 mm, before 8.3 mm
    assert float(np.percentile(error[body], 90)) < 2.5  # measured 1.43 mm
    assert report["metrics"]["dice_mean"] > 0.8
    assert report["metrics"]["folding_fraction"] < 1e-3


@pytest.mark.parametrize("total, expected", [(150, [135, 15]), (60, [45, 15]), (40, [30, 10]), (8, [6, 2]), (0, [0, 0])])
def test_iterations_go_to_the_coarse_scale_but_the_finest_keeps_enough(total, expected):
    from SHMoAReg.optimise.instance_optimisation import InstanceOptimisationConfig, scale_iterations

    assert scale_iterations(InstanceOptimisationConfig(iterations=total)) == expected


@pytest.mark.parametrize("total, expected", [(25, [10, 15]), (40, [25, 15]), (10, [0, 10]), (0, [0, 0])])
def test_after_a_network_the_finest_scale_keeps_all_its_iterations(total, expected):
    """From a network's field the coarse alignment is done: the finest scale gets instance optimisation alone's 15
    (or all, when fewer are asked for), the coarse scale the rest."""
    from SHMoAReg.optimise.instance_optimisation import InstanceOptimisationConfig, scale_iterations

    assert scale_iterations(InstanceOptimisationConfig(iterations=total, finest_share_cap=1.0)) == expected
