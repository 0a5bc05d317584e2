"""Label maps as tensors: the one-hot encoding shared by training, instance optimisation and evaluation."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["one_hot"]


def one_hot(labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """One-hot label maps: ``labels (B, D, H, W)`` long with values 0..``num_labels`` -> ``(B, L+1, D, H, W)`` float.

    Channel 0 is the background (everything unlabelled), channel ``l`` label ``l``.
    """
    if labels.ndim != 4:
        raise ValueError(f"labels must be (B, D, H, W), got shape {tuple(labels.shape)}")
    return F.one_hot(labels, num_labels + 1).permute(0, 4, 1, 2, 3).float()
