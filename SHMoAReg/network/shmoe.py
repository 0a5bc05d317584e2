"""Spatial Heterogeneous Mixture of Experts (SHMoE) displacement head, and its plain ablation."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from .gate import DirectionalGate

__all__ = ["SpatialHeterogeneousMoE", "PlainFlowHead"]


def _flow_conv(channels: int, kernel_size: int) -> nn.Conv3d:
    conv = nn.Conv3d(channels, 3, kernel_size, padding=kernel_size // 2)
    nn.init.normal_(conv.weight, std=1e-5)  # start near zero displacement (VoxelMorph's choice)
    nn.init.zeros_(conv.bias)
    return conv


class SpatialHeterogeneousMoE(nn.Module):
    """Experts with different receptive fields predict a displacement; a gate mixes them per direction.

    Expert ``e`` is a convolution with kernel ``kernel_sizes[e]`` mapping features
    ``(B, C, D, H, W)`` to a displacement ``(B, 3, D, H, W)`` (voxels, channel =
    tensor axis). The :class:`DirectionalGate` gives ``g (B, 3, E, D, H, W)`` and
    the output for direction ``c`` is ``sum_e g[:, c, e] * expert_e[:, c]``.

    Returns ``(displacement, gates)``.
    """

    def __init__(self, channels: int, kernel_sizes: Sequence[int] = (3, 5, 7)) -> None:
        super().__init__()
        if not kernel_sizes or any(k < 1 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"kernel_sizes must be odd positive integers, got {tuple(kernel_sizes)}")
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.experts = nn.ModuleList(_flow_conv(channels, k) for k in self.kernel_sizes)
        self.gate = DirectionalGate(channels, len(self.kernel_sizes))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        predictions = torch.stack([expert(features) for expert in self.experts], dim=2)  # (B, 3, E, ...)
        gates = self.gate(features)
        return (gates * predictions).sum(dim=2), gates


class PlainFlowHead(nn.Module):
    """A single 3x3x3 convolution predicting the displacement (the ablation's "no SHMoE" switch)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = _flow_conv(channels, 3)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.conv(features), None
