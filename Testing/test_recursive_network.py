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


class Sequence(nn.Module):
    """A stand-in network that returns ``fields[k]`` at its k-th call (the last one from then on)."""

    def __init__(self, fields: list[torch.Tensor]) -> None:
        super().__init__()
        self.fields, self.calls = fields, 0

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> NetworkOutput:
        self.calls += 1
        return NetworkOutput(self.fields[min(self.calls, len(self.fields)) - 1].clone())


def _shift(shape, voxels: float) -> torch.Tensor:
    field = torch.zeros((1, 3, *shape))
    field[:, 0] = voxels
    return field


def _with_fold(field: torch.Tensor) -> torch.Tensor:
    """``field`` with a ramp of slope -2 along axis 0 in an interior 4x8x8 block: 192 voxels with det J <= 0."""
    folded = field.clone()
    folded[:, 0, 10:14, 8:16, 8:16] += -2.0 * torch.arange(4.0)[:, None, None]
    return folded


def test_a_pass_that_folds_is_refused_even_when_it_improves_the_similarity():
    """Two 1-voxel passes reach the 2-voxel answer; the second also folds 0.5 % of the voxels, so it is refused
    (and kept when the folding limit is lifted, so it is the folding that refused it)."""
    moving = _smooth_volume()
    shape = moving.shape[2:]
    fixed = warp_image(moving, _shift(shape, 2.0))
    fields = [_shift(shape, 1.0), _with_fold(_shift(shape, 1.0))]
    result = recursive_prediction(Sequence(fields), fixed, moving, passes=3, similarity="lncc")
    assert result.passes == 1 and result.refused == "folding"
    assert result.folding[0] == 0.0 and 0.004 < result.folding[1] < 0.007  # 192 of 35,840 voxels
    assert result.losses[2] < 0.99 * result.losses[1]  # the refused pass did improve the similarity
    assert torch.equal(result.output.displacement, fields[0])
    lifted = recursive_prediction(Sequence(fields), fixed, moving, passes=3, similarity="lncc", max_folding=1.0)
    assert lifted.passes == 2 and lifted.refused == "similarity"
    assert lifted.describe()["folding_percent"][1] == pytest.approx(100 * result.folding[1], abs=1e-3)


def test_a_pass_may_keep_the_folding_it_was_given():
    """A first pass that already folds above the limit does not stop a further pass that folds no more."""
    moving = _smooth_volume()
    shape = moving.shape[2:]
    fixed = warp_image(moving, _shift(shape, 2.0))
    fields = [_with_fold(_shift(shape, 1.0)), _shift(shape, 1.0)]
    result = recursive_prediction(Sequence(fields), fixed, moving, passes=2, similarity="lncc")
    assert result.folding[0] > 0.004 and result.folding[1] <= result.folding[0]
    assert result.passes == 2 and result.refused is None
