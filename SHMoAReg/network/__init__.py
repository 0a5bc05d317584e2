"""The SHMoAReg network and its building blocks (one idea per module)."""
from .attention import MultiHeadAttention
from .flip_ensemble import FlipEnsemble
from .gate import DirectionalGate
from .moa import MixtureOfAttentionHeads, RoutingStats, balance_loss, top_k_gates
from .shmoareg_net import NetworkConfig, NetworkOutput, SHMoARegNet
from .recursive import RecursiveOutput, recursive_prediction
from .shmoe import PlainFlowHead, SpatialHeterogeneousMoE
from .transformer import WindowTransformerBlock

__all__ = [
    "DirectionalGate", "FlipEnsemble", "MixtureOfAttentionHeads", "MultiHeadAttention", "NetworkConfig", "NetworkOutput",
    "PlainFlowHead", "RecursiveOutput", "RoutingStats", "SHMoARegNet", "SpatialHeterogeneousMoE", "WindowTransformerBlock",
    "balance_loss", "recursive_prediction", "top_k_gates",
]
