"""The per-voxel, per-direction gate of the SHMoE decoder."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["DirectionalGate"]


class DirectionalGate(nn.Module):
    """Softmax over ``E`` experts, predicted per voxel and **separately per direction**.

    Input features ``(B, C, D, H, W)``; output gates ``(B, 3, E, D, H, W)`` where
    dimension 1 is the displacement direction (channel order of
    :mod:`SHMoAReg.conventions`: z, y, x) and the gates sum to 1 over dimension 2.
    Initialised to uniform gates (zero logits).
    """

    def __init__(self, channels: int, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.logits = nn.Conv3d(channels, 3 * num_experts, kernel_size=3, padding=1)
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        b, _, d, h, w = features.shape
        logits = self.logits(features).view(b, 3, self.num_experts, d, h, w)
        return logits.softmax(dim=2)
