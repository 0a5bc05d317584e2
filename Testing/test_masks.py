"""Exclusion masks (``register --fixed-mask/--moving-mask``): masked voxels leave the similarity term.

* Exactly: the image content under a mask has no influence on the optimised field,
  and the similarity's gradient is zero there (the field follows the regulariser).
* On a synthetic pair with a known smooth deformation and a lesion present in only one
  image: with the mask the field around the lesion matches the known field (as well as
  a run without any lesion does); without the mask it does not.
"""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import SHMoAReg
from SHMoAReg.cli import main
from SHMoAReg.errors import InputError
from SHMoAReg.optimise.instance_optimisation import InstanceOptimisationConfig, optimise_field
from SHMoAReg.optimise.losses import Similarity, exclusion_weight, similarity_features, similarity_loss
from SHMoAReg.synthetic import deform, displacement_of, phantom, smooth_deformation


def _pair(seed: int = 0, size=(20, 18, 16)) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool3d(torch.rand((1, 1, *size), generator=generator), 3, 1, 1)
    moving = torch.roll(base, shifts=1, dims=3)
    return base, moving


def _ball(size, centre, radius) -> torch.Tensor:
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in size), indexing="ij")
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 < radius**2
    return inside.float()[None, None]


@pytest.mark.parametrize("similarity", ["lncc", "mind"])
@pytest.mark.parametrize("which", ["fixed", "moving"])
def test_content_under_a_mask_has_no_influence(similarity, which):
    fixed, moving = _pair()
    mask = _ball(fixed.shape[2:], (8, 9, 8), 3.5)
    config = InstanceOptimisationConfig(iterations=6, similarity=Similarity(similarity), scales=(2, 1),
                                        iteration_share=(0.5, 0.5))
    changed_fixed = torch.where(mask > 0, 5.0 * torch.ones_like(fixed), fixed) if which == "fixed" else fixed
    changed_moving = torch.where(mask > 0, 5.0 * torch.ones_like(moving), moving) if which == "moving" else moving
    masks = {f"{which}_mask": mask}
    original = optimise_field(fixed, moving, config, **masks)
    changed = optimise_field(changed_fixed, changed_moving, config, **masks)
    assert torch.equal(original, changed), "the masked content changed the field"
    assert not torch.equal(optimise_field(fixed, moving, config), optimise_field(changed_fixed, changed_moving, config))


@pytest.mark.parametrize("similarity", ["lncc", "mind"])
def test_similarity_gradient_is_zero_under_the_mask(similarity):
    fixed, moving = _pair(1)
    excluded = _ball(fixed.shape[2:], (8, 9, 8), 4.0)
    weight = exclusion_weight(excluded, 0)
    from SHMoAReg.optimise.warp import warp_image

    displacement = (0.3 * torch.randn((1, 3, *fixed.shape[2:]), generator=torch.Generator().manual_seed(2))
                    ).requires_grad_(True)
    f, m = similarity_features(fixed, similarity), similarity_features(moving, similarity)
    similarity_loss(f, warp_image(m, displacement), similarity, weight).backward()
    gradient = displacement.grad.abs().sum(dim=1, keepdim=True)
    assert torch.all(gradient[weight == 0] == 0)
    assert gradient[weight == 1].max() > 0


def test_weighted_lncc_equals_monai_without_a_mask():
    """Away from the borders (where MONAI zero-pads its windows) the weighted map is MONAI's LNCC."""
    from monai.losses import LocalNormalizedCrossCorrelationLoss

    from SHMoAReg.optimise.losses import weighted_lncc_map

    fixed, moving = _pair(3)
    ours = weighted_lncc_map(fixed, moving, torch.ones_like(fixed))
    monai = LocalNormalizedCrossCorrelationLoss(3, kernel_size=7, kernel_type="rectangular", reduction="none")(moving, fixed)
    assert (ours - monai)[..., 3:-3, 3:-3, 3:-3].abs().max() < 1e-3  # float32 rounding


# -- the synthetic lesion ----------------------------------------------------------------------
LESION_RADIUS_MM, MASK_MARGIN_MM = 9.0, 1.5


@pytest.fixture(scope="module")
def lesion_case():
    """A phantom, a known smooth deformation, and a bright lesion (400 HU) in the liver of the fixed image only."""
    image, _ = phantom((36, 32, 28), (3.0, 3.0, 3.0), seed=0)
    truth = smooth_deformation(image, 5.0, seed=3)
    fixed = deform(image, truth)
    array = sitk.GetArrayFromImage(fixed)
    centre = np.array([0.55, 0.45, 0.325]) * (np.array(array.shape) - 1) * 3.0  # (z, y, x) mm from the origin: liver
    zz, yy, xx = np.meshgrid(*(np.arange(n) * 3.0 for n in array.shape), indexing="ij")
    distance = np.sqrt((zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2)
    with_lesion = np.where(distance < LESION_RADIUS_MM, 400.0, array).astype(np.float32)
    fixed_lesion = sitk.GetImageFromArray(with_lesion)
    fixed_lesion.CopyInformation(fixed)
    mask = sitk.GetImageFromArray((distance < LESION_RADIUS_MM + MASK_MARGIN_MM).astype(np.uint8))
    mask.CopyInformation(fixed)
    return image, fixed, fixed_lesion, mask, displacement_of(truth, fixed), distance


def _field_error(result, truth) -> np.ndarray:
    return np.linalg.norm(sitk.GetArrayFromImage(result.displacement) - truth, axis=-1)


def test_lesion_in_one_image_masked_vs_unmasked(lesion_case):
    image, fixed, fixed_lesion, mask, truth, distance = lesion_case
    body = sitk.GetArrayFromImage(fixed) > -500
    outside = distance >= LESION_RADIUS_MM + MASK_MARGIN_MM
    near = outside & (distance < 2 * LESION_RADIUS_MM + MASK_MARGIN_MM) & body  # the lesion's surroundings
    settings = dict(iterations=40, affine=False, spacing=3.0)
    errors = {
        "no lesion": _field_error(SHMoAReg.register(fixed, image, **settings), truth),
        "unmasked": _field_error(SHMoAReg.register(fixed_lesion, image, **settings), truth),
        "masked": _field_error(SHMoAReg.register(fixed_lesion, image, fixed_mask=mask, **settings), truth),
    }
    near_error = {name: float(e[near].mean()) for name, e in errors.items()}
    body_error = {name: float(e[outside & body].mean()) for name, e in errors.items()}
    print(f"mean field error around the lesion (mm): {near_error}; outside it in the body: {body_error}")
    # with the mask the surroundings are registered as well as without any lesion ...
    assert near_error["masked"] < near_error["no lesion"] + 0.15
    assert body_error["masked"] < body_error["no lesion"] + 0.05
    # ... without it the lesion drags them along
    assert near_error["unmasked"] > 1.5 * near_error["masked"]


def test_cli_masks(lesion_case, tmp_path, capsys):
    image, _, fixed_lesion, mask, _, _ = lesion_case
    for name, item in [("fixed", fixed_lesion), ("moving", image), ("mask", mask)]:
        sitk.WriteImage(item, str(tmp_path / f"{name}.nii.gz"))
    base = ["register", "--fixed", str(tmp_path / "fixed.nii.gz"), "--moving", str(tmp_path / "moving.nii.gz"),
            "--iterations", "2", "--no-affine", "--spacing", "3", "--device", "cpu"]
    assert main(base + ["-o", str(tmp_path / "out"), "--fixed-mask", str(tmp_path / "mask.nii.gz")]) == 0
    assert '"fixed_excluded_fraction"' in (tmp_path / "out" / "report.json").read_text()
    # a mask on another grid is refused before anything is written
    sitk.WriteImage(sitk.Image([5, 5, 5], sitk.sitkUInt8) + 1, str(tmp_path / "small.nii.gz"))
    assert main(base + ["-o", str(tmp_path / "out2"), "--moving-mask", str(tmp_path / "small.nii.gz")]) == 2
    assert "moving mask" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_a_mask_over_everything_is_refused(lesion_case):
    image, fixed, _, _, _, _ = lesion_case
    everything = sitk.Cast(fixed * 0 + 1, sitk.sitkUInt8)
    with pytest.raises(InputError, match="whole image"):
        SHMoAReg.register(fixed, image, None, iterations=2, affine=False, spacing=3.0, fixed_mask=everything)
