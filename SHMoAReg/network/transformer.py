"""A windowed transformer block whose attention is MoA or ordinary multi-head attention."""
from __future__ import annotations

import torch
import torch.nn as nn

from .attention import MultiHeadAttention
from .moa import MixtureOfAttentionHeads, RoutingStats
from .windows import window_merge, window_partition

__all__ = ["WindowTransformerBlock"]


class WindowTransformerBlock(nn.Module):
    """Pre-norm transformer block on ``(B, C, D, H, W)`` feature maps.

    ``x + DWConv(x)`` (convolutional position encoding), then windowed attention
    and an MLP, each with a residual. ``shift=True`` rolls the map by half a
    window first (Swin-style) so that consecutive blocks exchange information
    across window borders.

    Args:
        dim: channels C.
        window: window edge in voxels.
        use_moa: Mixture of Attention heads (True) or ordinary multi-head attention.
        num_heads, top_k: heads (experts) and heads per token for MoA; plain
            attention uses ``num_heads`` heads, all of them for every token.
    """

    def __init__(self, dim: int, window: int = 4, use_moa: bool = True, num_heads: int = 8, top_k: int = 2,
                 shift: bool = False, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.window = window
        self.shift = window // 2 if shift else 0
        self.position = nn.Conv3d(dim, dim, 3, padding=1, groups=dim)
        self.norm1 = nn.LayerNorm(dim)
        self.attention = (MixtureOfAttentionHeads(dim, num_heads, top_k) if use_moa
                          else MultiHeadAttention(dim, _divisor_at_most(dim, num_heads)))
        self.norm2 = nn.LayerNorm(dim)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, RoutingStats | None]:
        x = x + self.position(x)
        size = tuple(x.shape[2:])
        shifted = torch.roll(x, (-self.shift,) * 3, dims=(2, 3, 4)) if self.shift else x
        tokens, padded = window_partition(shifted, self.window)
        attended, stats = self.attention(self.norm1(tokens))
        tokens = tokens + attended
        tokens = tokens + self.mlp(self.norm2(tokens))
        out = window_merge(tokens, self.window, padded, size)
        if self.shift:
            out = torch.roll(out, (self.shift,) * 3, dims=(2, 3, 4))
        return out, stats


def _divisor_at_most(dim: int, heads: int) -> int:
    while dim % heads:
        heads -= 1
    return heads
