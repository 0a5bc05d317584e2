"""Expert utilisation: the maps and fractions that make the MoE decisions inspectable.

For each SHMoE decoder layer and each displacement direction (z, y, x; see
:mod:`SHMoAReg.conventions`) the *dominant expert* map holds, per voxel, the index
of the expert (kernel size) with the largest gate. ``utilisation`` summarises, per
layer and direction, how often each expert dominates and its mean gate, and per
MoA layer the head-selection frequencies.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..conventions import AXIS_NAMES
from ..preprocess.grid import coarse_grid
from ..network import NetworkOutput

__all__ = ["dominant_expert_maps", "utilisation"]


def dominant_expert_maps(output: NetworkOutput, grid: sitk.Image) -> dict[str, sitk.Image]:
    """``{"layer{L}_{z|y|x}": uint8 image}`` on each layer's own grid (physically placed over ``grid``)."""
    maps = {}
    for gates, level in zip(output.gates, output.gate_levels):
        dominant = gates[0].argmax(dim=1).to("cpu").numpy().astype(np.uint8)  # (3, d, h, w)
        layer_grid = coarse_grid(grid, 2**level, dominant.shape[1:])
        for direction, name in enumerate(AXIS_NAMES):
            image = sitk.GetImageFromArray(dominant[direction])
            image.CopyInformation(layer_grid)
            maps[f"layer{level}_{name}"] = image
    return maps


def utilisation(output: NetworkOutput, kernel_sizes: tuple[int, ...]) -> dict:
    shmoe = []
    for gates, level in zip(output.gates, output.gate_levels):
        g = gates[0].detach().to("cpu").float().numpy()  # (3, E, d, h, w)
        dominant = g.argmax(axis=1)
        per_direction = {}
        for direction, name in enumerate(AXIS_NAMES):
            per_direction[name] = {
                "dominant_fraction": [float(np.mean(dominant[direction] == e)) for e in range(g.shape[1])],
                "mean_gate": [float(g[direction, e].mean()) for e in range(g.shape[1])],
            }
        shmoe.append({"layer": f"layer{level}", "resolution": f"1/{2**level}", "kernel_sizes": list(kernel_sizes),
                      "directions": per_direction})
    moa = [{"layer": i, "selection_frequency": r.selection_frequency.tolist(),
            "mean_router_probability": r.mean_probability.tolist()} for i, r in enumerate(output.routing)]
    return {"shmoe": shmoe, "moa": moa, "direction_names": list(AXIS_NAMES),
            "direction_note": "direction z/y/x = displacement along the fixed image's index axis k/j/i"}
