"""SHMoAReg.optimise.regularisers equals MONAI's DiffusionLoss / BendingEnergyLoss (normalize=False) without warnings;
its Jacobian determinant equals the evaluation's, and the folding penalty sees folding and only folding."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from monai.losses import BendingEnergyLoss, DiffusionLoss

from SHMoAReg.conventions import voxel_to_mm
from SHMoAReg.evaluate.metrics import jacobian_determinant as evaluated_determinant
from SHMoAReg.optimise.regularisers import bending_energy_loss, diffusion_loss, folding_loss, jacobian_determinant

SHAPES = [(2, 3, 6, 7, 8), (1, 2, 5, 9), (3, 1, 11)]  # 3-D, 2-D and 1-D fields: (B, C = spatial dims, *spatial)


def _monai(loss, field: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI's list-of-slices indexing warns; that is why ours exists
        return loss(normalize=False)(field)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_to_monai_and_silent(shape, dtype):
    field = torch.randn(shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype) * 2.0
    expected_diffusion = _monai(DiffusionLoss, field)
    expected_bending = _monai(BendingEnergyLoss, field)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diffusion = diffusion_loss(field)
        bending = bending_energy_loss(field)
    assert diffusion.dtype == expected_diffusion.dtype and bending.dtype == expected_bending.dtype
    assert diffusion.ndim == 0 and bending.ndim == 0
    assert torch.allclose(diffusion, expected_diffusion, rtol=0, atol=1e-6)
    assert torch.allclose(bending, expected_bending, rtol=0, atol=1e-6)


def test_gradients_silent_and_equal_to_monai():
    field = torch.randn((1, 3, 5, 6, 7), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    ours, theirs = field.clone().requires_grad_(True), field.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (diffusion_loss(ours) + bending_energy_loss(ours)).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (DiffusionLoss(normalize=False)(theirs) + BendingEnergyLoss(normalize=False)(theirs)).backward()
    assert torch.allclose(ours.grad, theirs.grad, rtol=0, atol=1e-10)


def test_linear_field_has_no_bending_and_known_diffusion():
    d, h, w = torch.meshgrid(torch.arange(5.0), torch.arange(6.0), torch.arange(7.0), indexing="ij")
    field = torch.stack([0.3 * d, 0.2 * h, torch.zeros_like(w)])[None]  # du0/dd = 0.3, du1/dh = 0.2
    assert float(bending_energy_loss(field)) == pytest.approx(0.0, abs=1e-12)
    assert float(diffusion_loss(field)) == pytest.approx((0.3**2 + 0.2**2) / 3, rel=1e-6)


@pytest.mark.parametrize("shape", [(1, 3, 2, 5, 5), (1, 2, 5, 5, 5), (3, 5, 5), (1, 1, 1, 3, 3, 3, 3)])
def test_bad_shapes_raise_value_error(shape):
    with pytest.raises(ValueError):
        diffusion_loss(torch.zeros(shape))
    with pytest.raises(ValueError):
        bending_energy_loss(torch.zeros(shape))


def _folding_field(amplitude: float) -> torch.Tensor:
    """A smooth random field ``(1, 3, 12, 14, 16)`` in voxels; ``amplitude`` 3 folds a few per cent of the voxels."""
    generator = torch.Generator().manual_seed(3)
    coarse = torch.randn(1, 3, 3, 4, 4, generator=generator, dtype=torch.float64)
    return amplitude * torch.nn.functional.interpolate(coarse, size=(12, 14, 16), mode="trilinear", align_corners=True)


def test_jacobian_determinant_equals_the_evaluations():
    """The training penalty's determinant is the one the reports' SDlogJ and folding are computed from (channel c
    along tensor axis c, voxel units), on the interior voxels where both use central differences."""
    u = _folding_field(3.0)
    grid = sitk.Image([16, 14, 12], sitk.sitkUInt8)  # unit spacing, identity direction, as jacobian_scores uses
    expected = evaluated_determinant(voxel_to_mm(u[0].numpy(), grid), grid)[1:-1, 1:-1, 1:-1]
    ours = jacobian_determinant(u)[0].numpy()
    assert (expected <= 0).any() and (expected > 0).any()  # the field folds somewhere, not everywhere
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


def test_folding_loss_is_zero_without_folding_and_pulls_folded_voxels_back():
    shift = torch.full((1, 3, 8, 8, 8), 2.5, dtype=torch.float64)  # a translation: det J = 1 everywhere
    assert folding_loss(shift).item() == 0.0
    assert folding_loss(_folding_field(0.2)).item() == 0.0  # a gentle smooth field keeps det J > 0.1
    u = _folding_field(3.0).requires_grad_(True)
    loss = folding_loss(u)
    assert loss.item() > 0
    loss.backward()
    step = (u - 1.0 * u.grad / u.grad.abs().max()).detach()  # one gradient step against the penalty
    assert folding_loss(step).item() < loss.item()
    assert (jacobian_determinant(step) <= 0).sum() < (jacobian_determinant(u.detach()) <= 0).sum()
