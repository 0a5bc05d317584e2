"""One network applied recursively at inference: each pass registers the moving image warped by the field so far.

Pass ``k + 1`` sees ``moving o (id + u_k)`` and predicts a residual ``r``; the fields compose as pull-backs,

    u_{k+1}(x) = r(x) + u_k(x + r(x)),

so the moving image is always warped once, from the original, by the composed field (no resampling blur builds up).
This is the shared-weight cascade of Zhao et al., "Recursive Cascaded Networks for Unsupervised Medical Image
Registration" (ICCV 2019), applied to a network trained for one pass. A pass is kept only when it lowers the
similarity loss (the run's similarity, on the network grid) by at least ``min_gain`` of its value: a network that
cannot improve its own result stops after its first pass, and the field it returns never scores worse than the
last one kept. A further pass is also refused when the composed field folds (``det J <= 0``, on the network grid)
more than ``MAX_FOLDING`` of the voxels and more than the field kept so far: a pass must not buy similarity with
folding (``register`` sets this limit when the network's field is its result, ``--iterations 0``; instance
optimisation after the network removes the folds of the field it starts from, so there it lifts the limit).
Diffeomorphic networks predict a velocity, which does not compose this way: they run one pass.

Measured on the 4 held-out abdominal pairs at native size (docs/training.md), the weights shipped since 6 Dec alone:
Dice 0.396 with one pass, 0.460 with up to three, 0.440 with up to three under the folding limit (one pair keeps its
first pass, which folds 0.153 %, where three passes folded 0.275 %).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from ..evaluate.metrics import jacobian_scores
from ..optimise.loss_names import Similarity
from ..optimise.losses import similarity_features, similarity_loss
from ..optimise.warp import compose_displacements, warp_image
from .shmoareg_net import NetworkOutput

__all__ = ["RecursiveOutput", "recursive_prediction", "MIN_GAIN", "MAX_FOLDING"]

MIN_GAIN = 0.01
"""A further pass must lower the similarity loss by at least this fraction of its value to be kept."""

MAX_FOLDING = 0.001
"""A further pass may fold at most this fraction of the network grid's voxels, or no more than the field before it."""


@dataclass
class RecursiveOutput:
    """``output``: the network's output with the composed ``displacement`` (voxels of the network grid, fixed ->
    moving pull-back); gates and routing are those of the first pass. ``losses``: the similarity loss of the
    unregistered pair, then after each pass computed (the last one may have been refused). ``folding``: the share of
    folded voxels of the first pass's field, then of each further field the similarity accepted. ``passes``: how
    many passes the displacement holds. ``refused``: why the pass after the last kept one was refused
    (``"similarity"`` or ``"folding"``), None when none was."""

    output: NetworkOutput
    passes: int
    losses: list[float] = field(default_factory=list)
    folding: list[float] = field(default_factory=list)
    refused: str | None = None

    def describe(self) -> dict:
        return {"passes": self.passes, "similarity_loss": [round(v, 6) for v in self.losses],
                "folding_percent": [round(100 * v, 4) for v in self.folding], "refused": self.refused}


def _folding(displacement: torch.Tensor) -> float:
    """Share of voxels with ``det J <= 0`` of a displacement ``(1, 3, D, H, W)`` in voxels."""
    return jacobian_scores(displacement[0].detach().float().cpu().numpy())[1]


def recursive_prediction(model: nn.Module, fixed: torch.Tensor, moving: torch.Tensor, passes: int,
                         similarity: Similarity | str, min_gain: float = MIN_GAIN,
                         max_folding: float = MAX_FOLDING) -> RecursiveOutput:
    """Up to ``passes`` applications of ``model`` (see the module docstring) without gradients.

    fixed, moving: ``(1, 1, D, H, W)`` normalised images on the network's grid.
    """
    if passes < 1:
        raise ValueError(f"passes must be >= 1, got {passes}")
    with torch.no_grad():
        first = model(fixed, moving)
        if passes == 1 or first.velocity is not None:
            return RecursiveOutput(first, 1)
        fixed_features = similarity_features(fixed, similarity)

        def loss(image: torch.Tensor) -> float:
            return float(similarity_loss(fixed_features, similarity_features(image, similarity), similarity))

        displacement = first.displacement
        warped = warp_image(moving, displacement)  # warped once per kept field: scored, then the next pass's input
        kept_folding = _folding(displacement)
        losses, folding = [loss(moving), loss(warped)], [kept_folding]
        kept, refused = 1, None
        for _ in range(passes - 1):
            candidate = compose_displacements(displacement, model(fixed, warped).displacement)
            candidate_warped = warp_image(moving, candidate)
            losses.append(loss(candidate_warped))
            if losses[-1] > losses[-2] - min_gain * abs(losses[-2]):
                refused = "similarity"
                break
            folding.append(_folding(candidate))
            if folding[-1] > max(max_folding, kept_folding):
                refused = "folding"
                break
            displacement, warped, kept, kept_folding = candidate, candidate_warped, kept + 1, folding[-1]
        return RecursiveOutput(dataclasses.replace(first, displacement=displacement), kept, losses, folding, refused)
