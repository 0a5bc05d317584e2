"""Mixture of Attention heads (MoA): every attention head is an expert.

Follows Zhang et al. 2022 ("Mixture of Attention Heads"), as used in the SHMoAReg
encoder (arXiv 2509.20073): each head ``e`` has its own query projection ``W_q^e``
and output projection ``W_o^e``; key and value projections are shared by all
heads. A linear router scores the heads for every token and keeps the top-k; the
token's output is the gate-weighted sum of its k selected heads' outputs
(gates = the router's softmax renormalised over the selected heads; every other
head has gate exactly 0). All heads are computed densely and masked, which is
simplest and fast for the small head counts used here.

Auxiliary losses (returned, to be added to the training loss):

* ``balance_loss = E * sum_e P_e**2`` with ``P_e`` the router probability of head
  ``e`` averaged over tokens. It equals ``1 + CV(P)**2`` (Shazeer et al. 2017's
  importance loss), is differentiable, is >= 1 and equals 1 exactly when routing
  is uniform (by Cauchy-Schwarz) - unlike the Switch loss ``E * sum f_e P_e``,
  whose minimum is not at uniform routing for top-k > 1.
* ``z_loss = mean(logsumexp(logits)**2)`` (router z-loss, ST-MoE) keeps logits small.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["RoutingStats", "MixtureOfAttentionHeads", "top_k_gates", "balance_loss"]


@dataclass
class RoutingStats:
    """What one MoA layer's router did for one forward pass.

    selection_frequency: (E,) fraction of tokens that selected each head (sums to k).
    mean_probability: (E,) router probability per head averaged over tokens (sums to 1).
    balance_loss, z_loss: scalar auxiliary losses (with gradient).
    """

    selection_frequency: torch.Tensor
    mean_probability: torch.Tensor
    balance_loss: torch.Tensor
    z_loss: torch.Tensor


def top_k_gates(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gates ``(..., E)`` with exactly ``k`` non-zero entries per token, summing to 1.

    Returns ``(gates, probabilities)`` where probabilities is the full softmax.
    """
    probabilities = logits.softmax(dim=-1)
    values, indices = probabilities.topk(k, dim=-1)
    values = values / values.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    gates = torch.zeros_like(probabilities).scatter(-1, indices, values)
    return gates, probabilities


def balance_loss(probabilities: torch.Tensor) -> torch.Tensor:
    """``E * sum_e mean_prob_e**2``: 1 for uniform routing, up to E when collapsed."""
    mean_probability = probabilities.reshape(-1, probabilities.shape[-1]).mean(dim=0)
    return probabilities.shape[-1] * (mean_probability**2).sum()


class MixtureOfAttentionHeads(nn.Module):
    """Top-k routed attention heads with shared keys/values.

    Args:
        dim: token channels C.
        num_heads: number of head experts E.
        top_k: heads used per token (1 <= k <= E).
        head_dim: channels per head (default C // 2, at least 8).

    Input ``(N_windows, T, C)`` tokens; output the same shape plus :class:`RoutingStats`.
    """

    def __init__(self, dim: int, num_heads: int = 8, top_k: int = 2, head_dim: int | None = None) -> None:
        super().__init__()
        if not 1 <= top_k <= num_heads:
            raise ValueError(f"top_k must be in [1, num_heads={num_heads}], got {top_k}")
        self.num_heads = num_heads
        self.top_k = top_k
        self.head_dim = head_dim or max(8, dim // 2)
        self.router = nn.Linear(dim, num_heads, bias=False)
        self.query = nn.Linear(dim, num_heads * self.head_dim)
        self.key_value = nn.Linear(dim, 2 * self.head_dim)
        self.output = nn.Parameter(torch.randn(num_heads, self.head_dim, dim) * self.head_dim**-0.5)
        self.output_bias = nn.Parameter(torch.zeros(dim))
        nn.init.normal_(self.router.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, RoutingStats]:
        n, t, _ = tokens.shape
        logits = self.router(tokens)
        gates, probabilities = top_k_gates(logits, self.top_k)
        query = self.query(tokens).view(n, t, self.num_heads, self.head_dim).transpose(1, 2)
        key, value = self.key_value(tokens).chunk(2, dim=-1)
        key = key.unsqueeze(1).expand(n, self.num_heads, t, self.head_dim)
        value = value.unsqueeze(1).expand(n, self.num_heads, t, self.head_dim)
        heads = F.scaled_dot_product_attention(query, key, value)  # (n, E, t, head_dim)
        mixed = torch.einsum("neth,ehc,nte->ntc", heads, self.output, gates) + self.output_bias
        stats = RoutingStats(
            selection_frequency=(gates > 0).float().reshape(-1, self.num_heads).mean(dim=0).detach(),
            mean_probability=probabilities.reshape(-1, self.num_heads).mean(dim=0).detach(),
            balance_loss=balance_loss(probabilities),
            z_loss=torch.logsumexp(logits, dim=-1).pow(2).mean(),
        )
        return mixed, stats
