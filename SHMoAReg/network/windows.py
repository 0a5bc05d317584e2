"""Partition a 3-D feature map into non-overlapping cubic windows of tokens and back.

Windowed (local) attention keeps the cost of attention linear in the number of
voxels: a ``(B, C, D, H, W)`` map is padded to a multiple of the window size ``w``
and cut into ``B * nD * nH * nW`` windows of ``w**3`` tokens each.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["window_partition", "window_merge"]


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Cut ``(B, C, D, H, W)`` into ``(B * n_windows, window**3, C)`` tokens.

    Returns the tokens and the padded shape ``(B, C, Dp, Hp, Wp)`` needed by :func:`window_merge`.
    """
    if x.ndim != 5:
        raise ValueError(f"expected a (B, C, D, H, W) tensor, got shape {tuple(x.shape)}")
    b, c, d, h, w = x.shape
    pad = [(-s) % window for s in (d, h, w)]
    x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]))
    dp, hp, wp = d + pad[0], h + pad[1], w + pad[2]
    x = x.view(b, c, dp // window, window, hp // window, window, wp // window, window)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(-1, window**3, c)
    return x, (b, c, dp, hp, wp)


def window_merge(tokens: torch.Tensor, window: int, padded_shape: tuple[int, ...], size: tuple[int, int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`; crops the padding back to ``size = (D, H, W)``."""
    b, c, dp, hp, wp = padded_shape
    x = tokens.view(b, dp // window, hp // window, wp // window, window, window, window, c)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, c, dp, hp, wp)
    d, h, w = size
    return x[:, :, :d, :h, :w].contiguous()
