"""Test-time mirroring (SHMoAReg.network.flip_ensemble): the field mapped back with the right signs."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from SHMoAReg.network import FlipEnsemble, NetworkOutput
from SHMoAReg.network.flip_ensemble import flip_sets


class ImageGradient(nn.Module):
    """A mirror-equivariant stand-in: the displacement is the moving image's gradient (channel a along axis a)."""

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> NetworkOutput:
        return NetworkOutput(torch.stack(torch.gradient(moving[:, 0], dim=(1, 2, 3)), dim=1))


class Constant(nn.Module):
    """Not equivariant: the same vector everywhere, whatever the images."""

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> NetworkOutput:
        field = torch.empty((1, 3, *fixed.shape[2:]))
        field[:, 0], field[:, 1], field[:, 2] = 1.0, 2.0, 4.0
        return NetworkOutput(field, velocity=None)


def test_flip_sets():
    assert flip_sets(1) == [()] and flip_sets(2) == [(), (2,)] and flip_sets(4) == [(), (0,), (1,), (2,)]
    assert sorted(flip_sets(8)) == sorted([(), (0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)])
    with pytest.raises(ValueError, match="one of 1, 2, 4, 8"):
        flip_sets(3)


@pytest.mark.parametrize("count", [2, 4, 8])
def test_an_equivariant_network_gives_the_same_field_mirrored_or_not(count):
    moving = torch.rand((1, 1, 9, 8, 7), generator=torch.Generator().manual_seed(0))
    single = ImageGradient()(moving, moving).displacement
    ensemble = FlipEnsemble(ImageGradient(), count)(moving, moving).displacement
    assert torch.allclose(ensemble, single, atol=1e-6)


def test_mirrored_fields_are_mapped_back_with_their_components_negated():
    """Constant (1, 2, 4): under each mirroring the mapped-back field has -c_a along the mirrored axes, so with the
    4 mirrorings {(), (0,), (1,), (2,)} every component averages to c_a (1 + 1 + 1 - 1) / 4 = c_a / 2; with all 8,
    every component is negated in half of them: 0."""
    image = torch.zeros((1, 1, 6, 5, 4))
    four = FlipEnsemble(Constant(), 4)(image, image).displacement
    assert torch.allclose(four[0, :, 0, 0, 0], torch.tensor([0.5, 1.0, 2.0]))
    assert torch.allclose(FlipEnsemble(Constant(), 8)(image, image).displacement, torch.zeros_like(four))
    assert torch.equal(FlipEnsemble(Constant(), 1)(image, image).displacement, Constant()(image, image).displacement)
