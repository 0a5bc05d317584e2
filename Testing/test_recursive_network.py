"""The network applied recursively (SHMoAReg.network.recursive): composition direction and the similarity gate."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from SHMoAReg.network import NetworkOutput, recursive_prediction
from SHMoAReg.optimise.warp import compose_displacements
from SHMoAReg.optimise.warp import warp_image


class ConstantShift(nn.Module):
    """A stand-in network that predicts ``shift`` voxels along array axis 0 everywhere, whatever its inputs."""

    def __init__(self, shift: float, velocity: bool = False) -> None:
        super().__init__()
        self.shift, self.velocity, self.calls = shift, velocity, 0

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> NetworkOutput:
        self.calls += 1
        field = torch.zeros((1, 3, *fixed.shape[2:]))
        field[:, 0] = self.shift
        return NetworkOutput(field, velocity=field.clone() if self.velocity else None)


def _smooth_volume(shape=(40, 32, 28), seed=0, passes=3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    volume = torch.rand((1, 1, *shape), generator=generator)
    for _ in range(passes):
        volume = F.avg_pool3d(volume, 3, stride=1, padding=1, count_include_pad=False)
    return (volume - volume.min()) / (volume.max() - volume.min())


def test_passes_compose_until_the_similarity_stops_improving():
    """The fixed image is the moving one pulled back by 2 voxels: one 1-voxel pass improves, a second reaches the
    answer, a third (3 voxels) would be worse and is refused, so exactly 2 voxels come back."""
    moving = _smooth_volume()
    truth = torch.zeros((1, 3, *moving.shape[2:]))
    truth[:, 0] = 2.0
    fixed = warp_image(moving, truth)
    model = ConstantShift(1.0)
    result = recursive_prediction(model, fixed, moving, passes=5, similarity="lncc")
    assert result.passes == 2 and model.calls == 3
    assert result.losses[0] > result.losses[1] > result.losses[2] < result.losses[3]
    interior = result.output.displacement[:, :, 4:-4]  # away from the border, where the pull-back is exact
    assert torch.allclose(interior, truth[:, :, 4:-4], atol=1e-5)
    assert result.describe()["passes"] == 2


def test_one_pass_and_velocities_return_the_network_output_unchanged():
    moving = _smooth_volume()
    fixed = warp_image(moving, torch.full((1, 3, *moving.shape[2:]), 0.0).index_fill_(1, torch.tensor([0]), 2.0))
    for model, passes in ((ConstantShift(1.0), 1), (ConstantShift(1.0, velocity=True), 4)):
        result = recursive_prediction(model, fixed, moving, passes=passes, similarity="lncc")
        assert result.passes == 1 and model.calls == 1 and result.losses == []
        assert torch.equal(result.output.displacement[:, 0], torch.ones_like(result.output.displacement[:, 0]))
    with pytest.raises(ValueError, match="passes"):
        recursive_prediction(ConstantShift(1.0), fixed, moving, passes=0, similarity="lncc")


def test_composition_equals_warping_twice():
    """warp(moving, compose(first, then)) == warp(warp(moving, first), then) for smooth fields (interior voxels)."""
    moving = _smooth_volume(seed=1, passes=10)
    generator = torch.Generator().manual_seed(2)
    first = F.interpolate(3 * torch.randn((1, 3, 5, 4, 4), generator=generator), size=moving.shape[2:],
                          mode="trilinear", align_corners=False)
    then = F.interpolate(2 * torch.randn((1, 3, 5, 4, 4), generator=generator), size=moving.shape[2:],
                         mode="trilinear", align_corners=False)
    once = warp_image(moving, compose_displacements(first, then))
    twice = warp_image(warp_image(moving, first), then)
    inside = (slice(None), slice(None), slice(6, -6), slice(6, -6), slice(6, -6))
    # interpolating twice blurs a little more than once: a small difference, against what the warps change
    error = (once - twice)[inside].abs().mean()
    assert error < 0.1 * (moving - twice)[inside].abs().mean()
    wrong_order = warp_image(moving, compose_displacements(then, first))
    assert (wrong_order - twice)[inside].abs().mean() > 5 * error
