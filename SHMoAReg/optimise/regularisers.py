"""Regularisers of a displacement field: diffusion and bending energy (smoothness), and a folding penalty.

The same definitions as MONAI's ``DiffusionLoss(normalize=False)`` and
``BendingEnergyLoss(normalize=False)`` (monai/losses/deform.py, MONAI 1.6), written
with tuple indexing: MONAI indexes tensors with *lists* of slices, which PyTorch
reports with a UserWarning ("Using a non-tuple sequence for multidimensional
indexing is deprecated") on every call. ``Testing/test_regularisers.py`` checks
that both agree with MONAI's to 1e-6 and warn about nothing.

A displacement is ``(B, C, *spatial)`` with ``C = len(spatial)`` (SHMoAReg: ``(B, 3, D, H, W)`` in
voxels of the working grid, channel c along tensor spatial axis c; see :mod:`SHMoAReg.conventions`).
Derivatives are per voxel (no division by the spacing, no normalisation by the size), evaluated on the
interior voxels ``[1:-1]`` of every spatial axis, so every spatial size must be > 2. Both losses are the
mean over batch, channels and interior voxels.
"""
from __future__ import annotations

import torch

__all__ = ["central_difference", "second_difference", "diffusion_loss", "bending_energy_loss",
           "determinant_3x3", "jacobian_determinant", "folding_loss"]

_ALL = slice(None)
_INNER = slice(1, -1)
_PLUS = slice(2, None)  # x[i + 1] for the interior voxels i
_MINUS = slice(None, -2)  # x[i - 1]


def _index(ndim: int, shifts: dict[int, slice]) -> tuple[slice, ...]:
    """Batch and channel axes whole; spatial axis ``d`` sliced by ``shifts[d]``, the others to the interior."""
    return tuple(_ALL if d < 2 else shifts.get(d, _INNER) for d in range(ndim))


def central_difference(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``(x[i+1] - x[i-1]) / 2`` along tensor axis ``dim`` (>= 2), every spatial axis cut to ``[1:-1]``
    (MONAI's ``spatial_gradient``). ``(B, C, n1, ...) -> (B, C, n1 - 2, ...)``."""
    return (x[_index(x.ndim, {dim: _PLUS})] - x[_index(x.ndim, {dim: _MINUS})]) / 2.0


def second_difference(x: torch.Tensor, dim_1: int, dim_2: int) -> torch.Tensor:
    """Second derivative along axes ``dim_1``, ``dim_2`` (>= 2) on the interior voxels (MONAI's
    ``spatial_gradient_squared``): ``x[i+1] - 2 x[i] + x[i-1]`` when the axes are equal, else the compact
    4-point mixed stencil ``(x[+1,+1] - x[+1,-1] - x[-1,+1] + x[-1,-1]) / 4``."""
    if dim_1 == dim_2:
        return x[_index(x.ndim, {dim_1: _PLUS})] - 2 * x[_index(x.ndim, {})] + x[_index(x.ndim, {dim_1: _MINUS})]
    return (x[_index(x.ndim, {dim_1: _PLUS, dim_2: _PLUS})]
            - x[_index(x.ndim, {dim_1: _PLUS, dim_2: _MINUS})]
            - x[_index(x.ndim, {dim_1: _MINUS, dim_2: _PLUS})]
            + x[_index(x.ndim, {dim_1: _MINUS, dim_2: _MINUS})]) / 4.0


def _check(displacement: torch.Tensor) -> None:
    """The checks of MONAI's losses, as ValueError naming the expected and actual shape."""
    if displacement.ndim not in (3, 4, 5):
        raise ValueError(f"expected a (B, C, *spatial) displacement with 1-3 spatial axes, got shape "
                         f"{tuple(displacement.shape)}")
    if any(n <= 2 for n in displacement.shape[2:]):
        raise ValueError(f"every spatial size must be > 2, got {tuple(displacement.shape[2:])}")
    if displacement.shape[1] != displacement.ndim - 2:
        raise ValueError(f"expected {displacement.ndim - 2} channels (one per spatial axis), got "
                         f"{displacement.shape[1]} in shape {tuple(displacement.shape)}")


def diffusion_loss(displacement: torch.Tensor) -> torch.Tensor:
    """Mean over batch, channels and interior voxels of ``sum_d (du/dx_d)^2`` (central differences,
    voxel units): MONAI's ``DiffusionLoss(normalize=False)``. Returns a 0-d tensor."""
    _check(displacement)
    total = None
    for dim in range(2, displacement.ndim):
        term = central_difference(displacement, dim) ** 2
        total = term if total is None else total + term
    return torch.mean(total)


def bending_energy_loss(displacement: torch.Tensor) -> torch.Tensor:
    """Mean over batch, channels and interior voxels of ``sum_d (d2u/dx_d^2)^2 + 2 sum_{d<e} (d2u/dx_d dx_e)^2``
    (compact stencils, voxel units): MONAI's ``BendingEnergyLoss(normalize=False)``. Returns a 0-d
    floating-point tensor (also for an integer field)."""
    _check(displacement)
    energy = torch.tensor(0.0, device=displacement.device)
    for dim_1 in range(2, displacement.ndim):
        energy = energy + second_difference(displacement, dim_1, dim_1) ** 2
        for dim_2 in range(dim_1 + 1, displacement.ndim):
            energy = energy + 2 * second_difference(displacement, dim_1, dim_2) ** 2
    return torch.mean(energy)


def jacobian_determinant(displacement: torch.Tensor) -> torch.Tensor:
    """``det(I + du/dx)`` of a voxel displacement ``(B, 3, D, H, W)`` (channel c along tensor axis 2 + c), central
    differences on the interior voxels: ``(B, D - 2, H - 2, W - 2)``. The same determinant as
    :func:`SHMoAReg.evaluate.metrics.jacobian_determinant` on a unit-spacing grid (``Testing/test_regularisers.py``),
    differentiable."""
    _check(displacement)
    if displacement.shape[1] != 3:
        raise ValueError(f"expected a 3D displacement (B, 3, D, H, W), got shape {tuple(displacement.shape)}")
    # gradient[..., c, d] = d u_c / d x_d, (B, D - 2, H - 2, W - 2, 3, 3)
    gradient = torch.stack([central_difference(displacement, 2 + d) for d in range(3)], dim=-1).movedim(1, -2)
    return determinant_3x3(gradient + torch.eye(3, dtype=gradient.dtype, device=gradient.device))


def determinant_3x3(m):
    """``det`` of every 3x3 matrix of ``m (..., 3, 3)``, a numpy array or a torch tensor (cofactor expansion along the
    first row: ~3x faster than a batched ``det`` on ~1M voxels, and differentiable)."""
    return (m[..., 0, 0] * (m[..., 1, 1] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 1])
            - m[..., 0, 1] * (m[..., 1, 0] * m[..., 2, 2] - m[..., 1, 2] * m[..., 2, 0])
            + m[..., 0, 2] * (m[..., 1, 0] * m[..., 2, 1] - m[..., 1, 1] * m[..., 2, 0]))


def folding_loss(displacement: torch.Tensor, margin: float = 0.1) -> torch.Tensor:
    """Mean over batch and interior voxels of ``relu(margin - det J)``: zero where the map keeps at least
    ``margin`` of a voxel's volume, growing linearly as it approaches and passes folding (``det J <= 0``).
    Smoothness penalises every gradient; this penalises only the few voxels where the map (nearly) folds.
    Returns a 0-d tensor."""
    return torch.relu(margin - jacobian_determinant(displacement.float())).mean()
