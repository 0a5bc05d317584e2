"""The speed-ups of the similarity and the warp compute what MONAI computes (values and gradients)."""
import pytest
import torch
from monai.losses import LocalNormalizedCrossCorrelationLoss

from SHMoAReg.optimise.losses import box_sum, lncc_loss


def _pair(seed: int, shape=(1, 1, 21, 18, 25)):
    generator = torch.Generator().manual_seed(seed)
    fixed = torch.rand(shape, generator=generator)
    moving = (0.6 * fixed + 0.4 * torch.rand(shape, generator=generator)).requires_grad_(True)
    return fixed, moving


@pytest.mark.parametrize("kernel", [3, 7])
def test_lncc_equals_monai_in_value_and_gradient(kernel):
    fixed, moving = _pair(kernel)
    monai = LocalNormalizedCrossCorrelationLoss(3, kernel_size=kernel, kernel_type="rectangular")
    ours = lncc_loss(fixed, moving, kernel)
    theirs = monai(moving, fixed)
    (ours_grad,) = torch.autograd.grad(ours, moving)
    (their_grad,) = torch.autograd.grad(theirs, moving)
    assert abs(float(ours) - float(theirs)) < 1e-6
    assert float((ours_grad - their_grad).abs().max()) < 1e-5 * float(their_grad.abs().max())


def test_box_sum_is_the_zero_padded_window_sum_and_its_gradient_the_adjoint():
    volume = torch.rand((2, 3, 9, 8, 10), dtype=torch.float64, requires_grad=True)
    padded = torch.nn.functional.pad(volume.detach(), [2] * 6)
    expected = padded.unfold(2, 5, 1).unfold(3, 5, 1).unfold(4, 5, 1).sum(dim=(-1, -2, -3))
    assert torch.allclose(box_sum(volume, 5), expected)
    assert torch.autograd.gradcheck(lambda v: box_sum(v, 3), (volume[:1, :1, :5, :4, :6].detach().requires_grad_(True),))


def test_lncc_stays_exact_in_uniform_regions():
    """Uniform patches far along each axis: the local variances are differences of large sums there."""
    fixed = torch.full((1, 1, 60, 50, 70), 0.5)
    fixed[..., :20] = torch.rand((1, 1, 60, 50, 20), generator=torch.Generator().manual_seed(0))
    warped = fixed.clone()
    warped[..., 40:] = 0.7
    exact = LocalNormalizedCrossCorrelationLoss(3, kernel_size=7, kernel_type="rectangular")(warped.double(),
                                                                                           fixed.double())
    assert abs(float(lncc_loss(fixed, warped)) - float(exact)) < 1e-5


def _monai_quietly(build, **kwargs):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(**kwargs)


def test_warp_equals_monai_in_value_and_gradient():
    from monai.networks.blocks import Warp

    from SHMoAReg.optimise.warp import warp_image

    generator = torch.Generator().manual_seed(4)
    image = torch.rand((2, 2, 13, 11, 9), generator=generator)
    displacement = (1.5 * torch.randn((2, 3, 13, 11, 9), generator=generator)).requires_grad_(True)
    theirs = _monai_quietly(Warp, mode="bilinear", padding_mode="border")(image, displacement)
    ours = warp_image(image, displacement)
    assert float((ours - theirs).abs().max()) < 1e-5
    (their_grad,) = torch.autograd.grad(theirs.square().sum(), displacement)
    (our_grad,) = torch.autograd.grad(ours.square().sum(), displacement)
    # identical except where a sample sits on a kink (a voxel face or the border) to within rounding
    differing = (our_grad - their_grad).abs() > 1e-4 * float(their_grad.abs().max())
    assert float(differing.float().mean()) < 1e-3


def test_integrate_velocity_equals_monai():
    from monai.networks.blocks import DVF2DDF

    from SHMoAReg.optimise.warp import integrate_velocity

    velocity = 2.0 * torch.randn((1, 3, 12, 10, 14), generator=torch.Generator().manual_seed(5))
    theirs = _monai_quietly(DVF2DDF, num_steps=7, mode="bilinear", padding_mode="border")(velocity)
    assert float((integrate_velocity(velocity, 7) - theirs).abs().max()) < 1e-4


def test_warp_rejects_a_displacement_of_another_shape():
    from SHMoAReg.optimise.warp import warp_image

    with pytest.raises(ValueError, match="displacement must be"):
        warp_image(torch.zeros((1, 1, 4, 5, 6)), torch.zeros((1, 3, 4, 5, 5)))


def test_lncc_with_the_fixed_windows_kept_is_the_same_loss():
    from SHMoAReg.optimise.losses import lncc_fixed_windows

    fixed, moving = _pair(9)
    windows = lncc_fixed_windows(fixed)
    kept = lncc_loss(fixed, moving, fixed_windows=windows)
    (kept_grad,) = torch.autograd.grad(kept, moving)
    fresh = lncc_loss(fixed, moving)
    (fresh_grad,) = torch.autograd.grad(fresh, moving)
    assert float(kept) == float(fresh)
    assert torch.equal(kept_grad, fresh_grad)


def test_adam_is_torchs_adam_with_its_schedule_bit_for_bit():
    """Our Adam (which spares the 1.6 s import of torch._dynamo that torch.optim costs) against torch.optim.Adam +
    LambdaLR, on a loss with uneven curvature, 30 steps."""
    import math

    from SHMoAReg.optimise.adam import Adam

    start = torch.randn((2, 3, 4, 5), generator=torch.Generator().manual_seed(6))
    scale = torch.linspace(0.1, 10.0, start.numel()).reshape(start.shape)

    def factor(step: int) -> float:
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * step / 30))

    ours, theirs = start.clone().requires_grad_(True), start.clone().requires_grad_(True)
    optimiser = Adam(ours, eps=1e-3)
    reference = torch.optim.Adam([theirs], lr=0.3, eps=1e-3)
    schedule = torch.optim.lr_scheduler.LambdaLR(reference, factor)
    for step in range(30):
        optimiser.zero_grad()
        (scale * ours.square()).sum().backward()
        optimiser.step(0.3 * factor(step))
        reference.zero_grad(set_to_none=True)
        (scale * theirs.square()).sum().backward()
        reference.step()
        schedule.step()
    assert torch.equal(ours.detach(), theirs.detach())
