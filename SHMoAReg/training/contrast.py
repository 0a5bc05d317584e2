"""Contrast priors: per-label intensities that imitate one real imaging contrast (torch only).

SynthMorph-style synthesis gives every label its own random intensity, so a network learns
to align *any* contrast - but early in a CPU-sized training run it has not yet learned to
ignore boundaries that real images do not show (left and right white matter, the
cortical parcels, thalamus against white matter). A contrast prior renders the label maps
the way one modality shows them instead: labels of the same tissue share one intensity,
tissues keep their usual order, and each draw jitters every tissue's intensity and the
overall contrast so the network does not learn one exact look.

``t1-brain``: a skull-stripped T1-weighted brain (FreeSurfer label ids), white matter
brightest, deep grey matter between, cortex darker, CSF darkest; everything outside the
brain is 0. The relative intensities are textbook T1 (MPRAGE-like) contrast, not measured
on any image we validate on.
"""
from __future__ import annotations

import torch

__all__ = ["PRIORS", "draw_lookup"]

_T1_BRAIN_TISSUES: dict[str, tuple[float, tuple[int, ...]]] = {  # tissue: (intensity relative to white matter, ids)
    "white matter": (1.0, (2, 41, 251, 252, 253, 254, 255)),
    "cerebellar white matter": (0.95, (7, 46)),
    "brainstem and ventral DC": (0.86, (16, 28, 60, 85)),
    "pallidum": (0.88, (13, 52)),
    "thalamus": (0.83, (10, 49)),
    "putamen": (0.74, (12, 51)),
    "caudate and accumbens": (0.70, (11, 50, 26, 58)),
    "white-matter hypointensities": (0.75, (77,)),
    "cerebellar cortex": (0.66, (8, 47)),
    "hippocampus and amygdala": (0.62, (17, 53, 18, 54)),
    "cortex": (0.60, (3, 42, *range(1000, 1036), *range(2000, 2036))),
    "vessels and choroid plexus": (0.50, (30, 62, 31, 63, 80)),
    "CSF": (0.12, (4, 5, 14, 15, 24, 43, 44, 72)),
}

PRIORS = {"t1-brain": _T1_BRAIN_TISSUES}


def draw_lookup(name: str, label_values: list[int], generator: torch.Generator,
                tissue_jitter: float = 0.08) -> torch.Tensor:
    """Intensities ``(L,)`` for labels ``label_values`` (the original ids of classes 1..L) under prior ``name``.

    Each tissue's intensity is multiplied by ``exp(tissue_jitter * N(0, 1))`` (shared by its labels), then all
    are raised to one random gamma in [0.75, 1.33] (overall contrast). Labels the prior does not know get a
    uniform random intensity in [0.1, 1]."""
    if name not in PRIORS:
        raise ValueError(f"unknown contrast prior {name!r}; known: {', '.join(PRIORS)}")
    tissues = PRIORS[name]
    jitter = torch.exp(tissue_jitter * torch.randn(len(tissues), generator=generator))
    of_label = {}
    for (value, ids), factor in zip(tissues.values(), jitter.tolist()):
        for label in ids:
            of_label[label] = value * factor
    unknown = 0.1 + 0.9 * torch.rand(len(label_values), generator=generator)
    lookup = torch.tensor([of_label.get(int(v), float(u)) for v, u in zip(label_values, unknown.tolist())])
    gamma = float(torch.exp(torch.empty(()).uniform_(-0.29, 0.29, generator=generator)))
    return lookup.clamp(0.0, 1.5).pow(gamma)
