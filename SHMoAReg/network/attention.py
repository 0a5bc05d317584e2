"""Ordinary multi-head self-attention on window tokens (the ablation's "no MoA" switch)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MultiHeadAttention"]


class MultiHeadAttention(nn.Module):
    """Standard multi-head attention: every head has its own Q, K, V; outputs concatenated.

    Input/output ``(N_windows, T, C)``; ``C`` must be divisible by ``num_heads``.
    """

    def __init__(self, dim: int, num_heads: int = 4) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.output = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, None]:
        n, t, c = tokens.shape
        qkv = self.qkv(tokens).view(n, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        heads = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.output(heads.transpose(1, 2).reshape(n, t, c)), None
