"""The regularisers against independent finite differences.

MONAI's ``spatial_gradient`` indexes tensors with a list of slices, which PyTorch has deprecated
("will be interpreted as a tensor index"); if that behaviour ever changes, these checks fail instead
of the registrations silently changing.
"""
from __future__ import annotations

import torch

from SHMoAReg.optimise.losses import smoothness_loss


def _central(u: torch.Tensor, axis: int) -> torch.Tensor:
    """Central difference along spatial ``axis`` (0..2), on the voxels inside the border."""
    forward = u.narrow(axis + 2, 2, u.shape[axis + 2] - 2)
    backward = u.narrow(axis + 2, 0, u.shape[axis + 2] - 2)
    difference = (forward - backward) / 2.0
    for other in range(3):
        if other != axis:
            difference = difference.narrow(other + 2, 1, u.shape[other + 2] - 2)
    return difference


def test_diffusion_matches_central_differences():
    torch.manual_seed(0)
    u = torch.nn.functional.avg_pool3d(torch.randn(2, 3, 14, 12, 10), 3, stride=1, padding=1)
    expected = sum(_central(u, axis).square() for axis in range(3)).mean()
    assert torch.allclose(smoothness_loss(u, "diffusion"), expected, rtol=1e-5, atol=1e-8)


def test_linear_field_diffusion_value_and_zero_bending():
    z, y, x = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in (9, 8, 7)), indexing="ij")
    u = torch.stack([0.3 * z, -0.2 * x, torch.zeros_like(z)])[None]  # du0/dz = 0.3, du1/dx = -0.2
    assert torch.isclose(smoothness_loss(u, "diffusion"), torch.tensor((0.3**2 + 0.2**2) / 3), rtol=1e-5)
    assert float(smoothness_loss(u, "bending")) < 1e-10
    quadratic = torch.stack([0.05 * z**2, torch.zeros_like(z), torch.zeros_like(z)])[None]
    assert float(smoothness_loss(quadratic, "bending")) > 1e-4


def test_warping_shows_no_third_party_warning():
    """MONAI's 'Using PyTorch native grid_sample' note must not reach a user's screen (CLI, API, Slicer, workers)."""
    import importlib
    import warnings

    import SHMoAReg.optimise.warp as warp

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(warp)
        warp.integrate_velocity(torch.zeros(1, 3, 4, 4, 4), 2)
    assert not [w for w in caught if "monai" in str(w.message).lower()], [str(w.message) for w in caught]
