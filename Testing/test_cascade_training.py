"""Cascade training steps (training/cascade.py): which steps, what the second pass sees, where the gradient flows,
(the command-line run is in test_training.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from SHMoAReg.network.shmoareg_net import NetworkOutput
from SHMoAReg.optimise.warp import warp_image
from SHMoAReg.training.cascade import cascade_output, is_cascade_step


def test_cascade_steps_are_the_share_asked_and_spread_evenly() -> None:
    for share, expected in ((0.0, 0), (0.25, 25), (0.5, 50), (1.0, 100)):
        steps = [is_cascade_step(step, share) for step in range(100)]
        assert sum(steps) == expected
    half = [is_cascade_step(step, 0.5) for step in range(6)]
    assert half == [False, True, False, True, False, True]
    with pytest.raises(ValueError, match="cascade share"):
        is_cascade_step(0, 1.5)


class _Shift(nn.Module):
    """Predicts the same learnable displacement everywhere and records what it was given."""

    def __init__(self, shift: tuple[float, float, float]) -> None:
        super().__init__()
        self.shift = nn.Parameter(torch.tensor(shift))
        self.inputs: list[torch.Tensor] = []

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> NetworkOutput:
        self.inputs.append(moving.detach().clone())
        field = self.shift.view(1, 3, 1, 1, 1).expand(fixed.shape[0], 3, *fixed.shape[2:])
        return NetworkOutput(displacement=field)


def test_second_pass_sees_the_moving_image_warped_by_the_first_and_the_fields_compose() -> None:
    torch.manual_seed(0)
    fixed, moving = torch.rand(1, 1, 12, 12, 12), torch.rand(1, 1, 12, 12, 12)
    net = _Shift((1.0, 0.0, -1.0))
    output = cascade_output(net, fixed, moving)
    assert len(net.inputs) == 2 and torch.equal(net.inputs[0], moving)
    first = torch.tensor([1.0, 0.0, -1.0]).view(1, 3, 1, 1, 1).expand(1, 3, 12, 12, 12)
    assert torch.allclose(net.inputs[1], warp_image(moving, first))
    # constant fields compose by adding (away from the border, where the first field is sampled inside the grid)
    centre = output.displacement[0, :, 3:9, 3:9, 3:9]
    assert torch.allclose(centre, torch.tensor([2.0, 0.0, -2.0]).view(3, 1, 1, 1).expand_as(centre))


def test_gradient_flows_through_the_second_pass_only() -> None:
    net = _Shift((0.5, 0.5, 0.5))
    output = cascade_output(net, torch.rand(1, 1, 8, 8, 8), torch.rand(1, 1, 8, 8, 8))
    output.displacement[0, 0, 4, 4, 4].backward()
    # u = r + u1 o (id + r) with u1 detached and constant: du/dr = 1 (2 if the first pass were trained too)
    assert net.shift.grad.tolist() == pytest.approx([1.0, 0.0, 0.0])



def test_validation_reports_the_dice_of_recursive_passes() -> None:
    from SHMoAReg.training.scores import validate

    grid = torch.stack(torch.meshgrid(*[torch.arange(24.0)] * 3, indexing="ij"))
    labels = (((grid - 11.5) ** 2).sum(0) < 36).long()  # a ball of radius 6 voxels
    torch.manual_seed(0)
    image = torch.nn.functional.avg_pool3d(torch.rand(1, 1, 24, 24, 24), 3, 1, 1)[0, 0]  # texture the LNCC can see
    shifted = lambda t: torch.roll(t, shifts=(2, 2, 2), dims=(-3, -2, -1))  # moving(x) = fixed(x - 2)
    pairs = {"fixed": image[None, None], "moving": shifted(image)[None, None],
             "fixed_labels": labels[None], "moving_labels": shifted(labels)[None]}
    model = _Shift((1.0, 1.0, 1.0))  # half the way each pass
    one = validate(model, pairs, 2, torch.device("cpu"))
    two = validate(model, pairs, 2, torch.device("cpu"), passes=2)
    assert "val_dice_passes" not in one and two["val_dice"] == pytest.approx(one["val_dice"])
    assert one["val_dice_before"] < one["val_dice"] < 0.95 and two["val_dice_passes"] > 0.99
