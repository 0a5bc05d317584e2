"""SHMoAReg: encoder with Mixture of Attention heads, decoder with per-direction mixtures of experts.

Fixed and moving images enter as a two-channel volume ``(B, 2, D, H, W)`` (channel 0
fixed, channel 1 moving) so every encoder feature sees both. The encoder is a
convolutional stem followed, at the coarse levels listed in
``transformer_levels``, by windowed transformer stages whose attention is MoA
(:mod:`.moa`). The decoder goes back up with skip connections; at each level in
``flow_levels`` an SHMoE head (:mod:`.shmoe`) predicts a residual displacement.
Multi-resolution displacements are **summed**: ``u_l = resize(u_{l+1}) + r_l``
(residual refinement), then resized to the input grid. With ``diffeomorphic``
the result is a stationary velocity field integrated by scaling and squaring.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..optimise.warp import integrate_velocity, resize_displacement
from .moa import RoutingStats
from .shmoe import PlainFlowHead, SpatialHeterogeneousMoE
from .transformer import WindowTransformerBlock

__all__ = ["NetworkConfig", "NetworkOutput", "SHMoARegNet"]


@dataclass
class NetworkConfig:
    """Constructor arguments of :class:`SHMoARegNet`; saved with every checkpoint.

    channels[l] is the feature width at level l (resolution 1/2**l).
    """

    channels: tuple[int, ...] = (8, 16, 32, 64)
    transformer_levels: tuple[int, ...] = (2, 3)
    blocks_per_stage: int = 2
    window: int = 4
    num_heads: int = 8
    top_k: int = 2
    use_moa: bool = True
    use_shmoe: bool = True
    kernel_sizes: tuple[int, ...] = (3, 5, 7)
    flow_levels: tuple[int, ...] = (3, 2, 1)
    diffeomorphic: bool = False
    integration_steps: int = 7

    def __post_init__(self) -> None:
        levels = len(self.channels)
        for name in ("transformer_levels", "flow_levels"):
            bad = [l for l in getattr(self, name) if not 0 <= l < levels]
            if bad:
                raise ValueError(f"{name} must lie in 0..{levels - 1}, got {bad}")
        if not self.flow_levels:
            raise ValueError("flow_levels must name at least one decoder level")
        self.channels = tuple(self.channels)
        self.transformer_levels = tuple(self.transformer_levels)
        self.kernel_sizes = tuple(self.kernel_sizes)
        self.flow_levels = tuple(sorted(self.flow_levels, reverse=True))

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class NetworkOutput:
    """displacement: (B, 3, D, H, W) voxels of the input grid, fixed->moving pull-back.

    velocity: the stationary velocity field when diffeomorphic, else None.
    gates: per SHMoE level (coarse to fine), (B, 3, E, d, h, w) expert weights per direction.
    gate_levels: the decoder level of each entry of ``gates``.
    routing: per MoA layer, the router's :class:`RoutingStats`.
    """

    displacement: torch.Tensor
    velocity: torch.Tensor | None = None
    gates: list[torch.Tensor] = field(default_factory=list)
    gate_levels: list[int] = field(default_factory=list)
    routing: list[RoutingStats] = field(default_factory=list)

    @property
    def balance_loss(self) -> torch.Tensor:
        """Mean MoA balance loss minus its minimum (0 for uniform routing; 0 without MoA)."""
        if not self.routing:
            return self.displacement.new_zeros(())
        return torch.stack([r.balance_loss - 1.0 for r in self.routing]).mean()

    @property
    def gate_balance_loss(self) -> torch.Tensor:
        """SHMoE load balance: ``E * sum_e p_e^2 - 1`` of each direction's mean gate ``p`` over the batch and the
        voxels, averaged over directions and levels. 0 when every expert carries the same share on average
        (voxels may still specialise), ``E - 1`` when one expert takes everything; 0 without SHMoE."""
        if not self.gates:
            return self.displacement.new_zeros(())
        terms = []
        for gate in self.gates:
            share = gate.float().mean(dim=(0, 3, 4, 5))  # (3, E)
            terms.append(share.shape[1] * share.square().sum(dim=1) - 1.0)
        return torch.cat(terms).mean()

    @property
    def z_loss(self) -> torch.Tensor:
        if not self.routing:
            return self.displacement.new_zeros(())
        return torch.stack([r.z_loss for r in self.routing]).mean()


def _conv_block(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1),
        nn.InstanceNorm3d(out_channels, affine=True),
        nn.LeakyReLU(0.2),
    )


class SHMoARegNet(nn.Module):
    """The SHMoAReg registration network. ``forward(fixed, moving)`` -> :class:`NetworkOutput`.

    fixed, moving: ``(B, 1, D, H, W)`` normalised intensities on the same grid
    (any size; padded internally (edge replication) to a multiple of ``2**(levels-1)``,
    at least twice that, and cropped back).
    """

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        self.config = config or NetworkConfig()
        c = self.config
        levels = len(c.channels)
        self.stem = nn.ModuleList(
            _conv_block(2 if l == 0 else c.channels[l - 1], c.channels[l], stride=1 if l == 0 else 2)
            for l in range(levels)
        )
        self.stages = nn.ModuleDict({
            str(l): nn.ModuleList(
                WindowTransformerBlock(c.channels[l], c.window, c.use_moa, c.num_heads, c.top_k, shift=b % 2 == 1)
                for b in range(c.blocks_per_stage))
            for l in c.transformer_levels
        })
        finest = min(c.flow_levels)
        self.decoder = nn.ModuleDict({
            str(l): _conv_block(c.channels[l + 1] + c.channels[l], c.channels[l]) for l in range(finest, levels - 1)
        })
        self.heads = nn.ModuleDict({
            str(l): SpatialHeterogeneousMoE(c.channels[l], c.kernel_sizes) if c.use_shmoe else PlainFlowHead(c.channels[l])
            for l in c.flow_levels
        })

    def forward(self, fixed: torch.Tensor, moving: torch.Tensor) -> NetworkOutput:
        if fixed.shape != moving.shape or fixed.ndim != 5 or fixed.shape[1] != 1:
            raise ValueError(f"fixed and moving must both be (B, 1, D, H, W); got {tuple(fixed.shape)} and {tuple(moving.shape)}")
        size = fixed.shape[2:]
        multiple = 2 ** (len(self.config.channels) - 1)
        pad = [max(-(-s // multiple), 2) * multiple - s for s in size]  # >= 2 voxels at the coarsest level
        x = F.pad(torch.cat([fixed, moving], dim=1), (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
        skips, routing = self._encode(x)
        flow, gates, gate_levels = self._decode(skips, size)
        velocity = None
        if self.config.diffeomorphic:
            velocity, flow = flow, integrate_velocity(flow, self.config.integration_steps)
        return NetworkOutput(flow, velocity, gates, gate_levels, routing)

    def _encode(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[RoutingStats]]:
        skips, routing = [], []
        for level, block in enumerate(self.stem):
            x = block(x)
            for stage in (self.stages[str(level)] if str(level) in self.stages else []):
                x, stats = stage(x)
                if stats is not None:
                    routing.append(stats)
            skips.append(x)
        return skips, routing

    def _decode(self, skips: list[torch.Tensor], size: torch.Size) -> tuple[torch.Tensor, list, list]:
        levels = len(skips)
        features = skips[-1]
        flow, gates, gate_levels = None, [], []
        for level in range(levels - 1, min(self.config.flow_levels) - 1, -1):
            if level < levels - 1:
                up = F.interpolate(features, size=skips[level].shape[2:], mode="trilinear", align_corners=False)
                features = self.decoder[str(level)](torch.cat([up, skips[level]], dim=1))
            if str(level) in self.heads:
                residual, gate = self.heads[str(level)](features)
                flow = residual if flow is None else resize_displacement(flow, residual.shape[2:]) + residual
                if gate is not None:
                    crop = [-(-s // 2**level) for s in size]
                    gates.append(gate[..., : crop[0], : crop[1], : crop[2]])
                    gate_levels.append(level)
        padded = [s * 2 ** min(self.config.flow_levels) for s in flow.shape[2:]]
        flow = resize_displacement(flow, padded)
        return flow[:, :, : size[0], : size[1], : size[2]].contiguous(), gates, gate_levels
