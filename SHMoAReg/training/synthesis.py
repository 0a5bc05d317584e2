"""SynthMorph-style label-to-image synthesis and random spatial transforms (torch + numpy only).

A subject is a label map ``(D, H, W)`` with values 0..L (from :mod:`.dataset`) and
maybe a normalised image. A training pair is made by

1. adding random *background shapes*: smooth noise quantised into a few extra
   classes (L+1 ...) where the label map is 0, so the unlabelled body has texture;
2. sampling a patch of ``shape`` voxels around the subject's labelled centre under
   a random affine (rotation, scale, translation) and a smooth random displacement
   (a coarse Gaussian field upsampled trilinearly) - independently for fixed and moving;
3. drawing one random intensity per class (shared by fixed and moving: the presets
   are mono-modal) - or, in a share of samples, the intensities of one real contrast
   (:mod:`.contrast`) -, then per image a Gaussian blur, a smooth multiplicative bias
   field and Gaussian noise, and rescaling to [0, 1] (the range of the presets'
   normalisation).

Intra-subject pairs (same subject, two transforms) have exact correspondence, also
in the background shapes; inter-subject pairs have anatomical correspondence only.
Image-only subjects (a real image, no label map) make intra-subject pairs only: the image itself is
sampled under the two transforms, each patch with its own blur, bias field and noise.
All randomness comes from one ``torch.Generator`` so a (seed, index) pair always
gives the same sample (needed for exact resume and for DDP sharding).
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..optimise.losses import gaussian_blur
from .contrast import draw_lookup

__all__ = ["SynthesisConfig", "TensorData", "load_tensors", "voxel_mesh", "random_affine", "sampling_coordinates", "make_pair",
           "teacher_pair_coordinates", "validation_pairs", "known_pairs"]


@dataclass
class SynthesisConfig:
    """Ranges of the random draws; voxels are voxels of the training grid."""

    shape: tuple[int, int, int] = (48, 48, 48)
    rotation_deg: float = 10.0
    scale: float = 0.1
    translation_vox: float = 4.0
    displacement_vox: float = 4.0  # largest smooth displacement of one image (each of the pair)
    deformation_grid: int = 5
    background_classes: int = 6
    blur_sigma: tuple[float, float] = (0.3, 1.0)
    bias: float = 0.3
    noise: tuple[float, float] = (0.0, 0.05)
    intra_subject: float = 0.5  # probability that fixed and moving come from the same subject
    image_only_share: float = 0.0  # share of the samples drawn from the image-only subjects (when there are any)
    real_image: float = 0.5  # probability of using a subject's real image when it has one
    plain_background: float = 0.0  # probability that the background shapes take the background's intensity
    known_displacement_vox: float = 0.0  # > 0: intra-subject pairs get a known displacement up to this (see make_pair)
    known_rotation_deg: float = 5.0  # ... composed with a small random rotation and scaling about the centre
    known_scale: float = 0.05
    contrast_prior: str = ""  # a name from .contrast.PRIORS: render labels with that modality's tissue contrast ...
    contrast_prior_prob: float = 0.0  # ... in this share of samples (background and background shapes then 0)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


IMAGE_ONLY_FOREGROUND = 0.05
"""Normalised intensity above which an image-only subject's voxel is foreground (its crop, its centre)."""


class TensorData:
    """The preprocessed subjects of one split: ``labels[i] (D, H, W) long``, ``images[i]`` or None. The first
    ``labelled`` subjects have label maps; the rest are image-only (their labels are all 0)."""

    def __init__(self, labels: list[torch.Tensor], images: list[torch.Tensor | None], meta: dict,
                 labelled: int | None = None) -> None:
        self.labels, self.images, self.meta = labels, images, meta
        self.num_labels = len(meta["label_values"])
        self.labelled = len(labels) if labelled is None else labelled

    def image_only(self, index: int) -> bool:
        return index >= self.labelled

    def __len__(self) -> int:
        return len(self.labels)


def load_tensors(path, split: str) -> TensorData:
    """Read one split (``training`` or ``validation``) of a :func:`.dataset.preprocess` file."""
    with np.load(path) as data:
        meta = json.loads(bytes(data["meta"]).decode())
        count = meta["n_training" if split == "training" else "n_validation"]
        labels = [torch.from_numpy(data[f"{split}_{i}_labels"].astype(np.int64)) for i in range(count)]
        images = [torch.from_numpy(data[f"{split}_{i}_image"].astype(np.float32)) if f"{split}_{i}_image" in data
                  else None for i in range(count)]
        if split == "training":
            for i in range(meta.get("n_images", 0)):
                images.append(torch.from_numpy(data[f"images_{i}_image"].astype(np.float32)))
                labels.append(torch.zeros(images[-1].shape, dtype=torch.int64))
    return TensorData(labels, images, meta, labelled=count)


def _uniform(generator: torch.Generator, low: float, high: float, size=()) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def _smooth_noise(shape, grid: int, generator: torch.Generator, channels: int = 1) -> torch.Tensor:
    coarse = torch.randn((1, channels, grid, grid, grid), generator=generator)
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0]


def voxel_mesh(shape, start: float = 0.0) -> torch.Tensor:
    """``(D, H, W, 3)`` voxel coordinates (z, y, x) of a ``shape`` grid, the first voxel at ``start``."""
    axes = [torch.arange(n, dtype=torch.float32) + start for n in shape]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def _centred_mesh(shape) -> torch.Tensor:
    """``(D, H, W, 3)`` voxel coordinates (z, y, x) relative to the centre of a ``shape`` patch."""
    return voxel_mesh(shape) - (torch.tensor(shape, dtype=torch.float32) - 1) / 2


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    matrix = torch.eye(3)
    for axis, angle in enumerate(angles.tolist()):
        c, s = math.cos(angle), math.sin(angle)
        i, j = [a for a in range(3) if a != axis]
        r = torch.eye(3)
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        matrix = matrix @ r
    return matrix


def random_affine(config: SynthesisConfig, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A random ``matrix (3, 3)`` (rotation times scaling) and ``shift (3,)`` (voxels) within ``config``'s ranges."""
    angles = _uniform(generator, -1, 1, (3,)) * math.radians(config.rotation_deg)
    scales = 1 + _uniform(generator, -1, 1, (3,)) * config.scale
    matrix = _rotation(angles) @ torch.diag(scales)
    return matrix, _uniform(generator, -1, 1, (3,)) * config.translation_vox


def sampling_coordinates(shape, centre: torch.Tensor, config: SynthesisConfig, generator: torch.Generator,
                         random: bool = True) -> torch.Tensor:
    """``(D, H, W, 3)`` subject voxel coordinates (z, y, x) that each patch voxel samples."""
    mesh = _centred_mesh(shape)
    if not random:
        return mesh + centre
    matrix, shift = random_affine(config, generator)
    field = _smooth_noise(shape, config.deformation_grid, generator, 3).permute(1, 2, 3, 0)
    peak = _longest(field)
    field = field * (_uniform(generator, 0, 1).item() * config.displacement_vox / peak)
    return mesh @ matrix.T + shift + centre + field


def _longest(vectors: torch.Tensor) -> torch.Tensor:
    """Length of the longest vector in ``vectors (..., 3)`` (at least 1e-6). Summing the squared components beats
    ``norm(dim=-1)``, whose CPU reduction over a strided last axis is about 10x slower on permuted fields."""
    squared = vectors[..., 0].square() + vectors[..., 1].square() + vectors[..., 2].square()
    return squared.amax().sqrt().clamp_min(1e-6)


def _sample(volume: torch.Tensor, coordinates: torch.Tensor, mode: str, padding: str = "zeros") -> torch.Tensor:
    """Sample ``volume (C, D, H, W)`` at voxel ``coordinates (d, h, w, 3)`` -> ``(C, d, h, w)``; zeros outside
    (``padding="border"``: the nearest edge value)."""
    size = torch.tensor(volume.shape[1:], dtype=torch.float32)
    grid = (2 * coordinates / (size - 1) - 1).flip(-1)[None]  # grid_sample wants (x, y, z) in [-1, 1]
    return F.grid_sample(volume[None].float(), grid, mode=mode, padding_mode=padding, align_corners=True)[0]


def _with_background_shapes(labels: torch.Tensor, num_labels: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    if classes <= 0:
        return labels
    noise = _smooth_noise(labels.shape, 6, generator)[0]
    edges = torch.quantile(noise.flatten()[:: max(1, noise.numel() // 20000)], torch.linspace(0, 1, classes + 1)[1:-1])
    shapes = torch.bucketize(noise, edges) + num_labels + 1
    return torch.where(labels > 0, labels, shapes)


def _render(classes: torch.Tensor, lookup: torch.Tensor, config: SynthesisConfig, generator: torch.Generator) -> torch.Tensor:
    """Image ``(1, D, H, W)`` in [0, 1] from a class map via per-class intensities, blur, bias field, noise."""
    return _degrade(lookup[classes][None], config, generator)


def _degrade(image: torch.Tensor, config: SynthesisConfig, generator: torch.Generator) -> torch.Tensor:
    """``image (1, D, H, W)`` (rendered, or a real image's patch) with a random blur, smooth multiplicative bias field
    and Gaussian noise, rescaled to [0, 1]."""
    image = gaussian_blur(image[None], _uniform(generator, *config.blur_sigma).item())[0]
    image = image * torch.exp(config.bias * _smooth_noise(image.shape[1:], 4, generator))
    image = image + _uniform(generator, *config.noise).item() * torch.randn(image.shape, generator=generator)
    low, high = image.min(), image.max()
    return ((image - low) / (high - low).clamp_min(1e-6)).clamp(0, 1)


def known_displacement(shape, config: SynthesisConfig, generator: torch.Generator) -> torch.Tensor:
    """A random smooth displacement ``w (3, D, H, W)`` in patch voxels (channel = axis z, y, x): a small rotation
    and scaling about the patch centre plus a smooth field, scaled so that its largest vector is at most
    ``config.known_displacement_vox``."""
    mesh = _centred_mesh(shape)
    angles = _uniform(generator, -1, 1, (3,)) * math.radians(config.known_rotation_deg)
    matrix = _rotation(angles) @ torch.diag(1 + _uniform(generator, -1, 1, (3,)) * config.known_scale)
    linear = mesh @ (matrix - torch.eye(3)).T
    smooth = _smooth_noise(shape, config.deformation_grid, generator, 3).permute(1, 2, 3, 0)
    smooth = smooth / _longest(smooth) * _uniform(generator, 0.2, 1).item()
    field = linear + smooth * config.known_displacement_vox
    peak = _longest(field)
    limit = _uniform(generator, 0.1, 1).item() * config.known_displacement_vox
    return (field * min(1.0, limit / float(peak))).permute(3, 0, 1, 2).contiguous()


def displaced_coordinates(coordinates: torch.Tensor, displacement: torch.Tensor, margin: int) -> torch.Tensor:
    """``coordinates (D+2m, H+2m, W+2m, 3)`` (a sampling map with ``margin`` m voxels around the patch) read at
    ``x + displacement(x)`` for every patch voxel x -> ``(D, H, W, 3)``."""
    target = voxel_mesh(displacement.shape[1:], margin) + displacement.permute(1, 2, 3, 0)
    size = torch.tensor(coordinates.shape[:3], dtype=torch.float32)
    grid = (2 * target / (size - 1) - 1).flip(-1)[None]
    return F.grid_sample(coordinates.permute(3, 0, 1, 2)[None], grid, mode="bilinear", padding_mode="border",
                         align_corners=True)[0].permute(1, 2, 3, 0)


def _centre(labels: torch.Tensor) -> torch.Tensor:
    return torch.nonzero(labels > 0).float().mean(dim=0)


def _subject_centre(data: TensorData, index: int) -> torch.Tensor:
    """Voxel (z, y, x) centre of subject ``index``'s labels, or of its image's foreground if it is image-only."""
    return _centre(data.images[index] > IMAGE_ONLY_FOREGROUND if data.image_only(index) else data.labels[index])


def _inside(coordinates: torch.Tensor, shape) -> torch.Tensor:
    """``(D, H, W)`` float: 1 where voxel ``coordinates (D, H, W, 3)`` lie inside a volume of ``shape``."""
    upper = torch.tensor(shape, dtype=torch.float32) - 1
    return ((coordinates >= 0) & (coordinates <= upper)).all(dim=-1).float()


def teacher_pair_coordinates(data: TensorData, fixed_index: int, moving_index: int, teacher: torch.Tensor,
                             config: SynthesisConfig, generator: torch.Generator):
    """Sampling maps of an inter-subject pair whose answer a teacher field gives (:mod:`.teacher`).

    The fixed patch is sampled as usual (random affine and smooth field, ``S``); the moving patch under a random affine
    only, ``T(x) = M x + s + c_B``, so that it can be inverted exactly. The teacher maps subject A's voxels to subject
    B's (``phi(y) = y + teacher(y)``), so ``fixed(x)`` corresponds to ``moving(x + u(x))`` with
    ``x + u(x) = T^-1(phi(S(x)))``. Returns the fixed and moving maps ``(D, H, W, 3)``, ``u (3, D, H, W)`` in patch
    voxels and the mask ``(D, H, W)`` of patch voxels whose ``S(x)`` lies on the teacher's grid (elsewhere it is
    extrapolated)."""
    fixed_coordinates = sampling_coordinates(config.shape, _subject_centre(data, fixed_index), config, generator)
    matrix, shift = random_affine(config, generator)
    mesh = _centred_mesh(config.shape)
    offset = shift + _subject_centre(data, moving_index)
    moving_coordinates = mesh @ matrix.T + offset
    corresponding = fixed_coordinates + _sample(teacher, fixed_coordinates, "bilinear", "border").permute(1, 2, 3, 0)
    target = (corresponding - offset) @ torch.linalg.inv(matrix).T
    displacement = (target - mesh).permute(3, 0, 1, 2).contiguous()
    return fixed_coordinates, moving_coordinates, displacement, _inside(fixed_coordinates, teacher.shape[1:])


def make_pair(data: TensorData, fixed_index: int, moving_index: int, config: SynthesisConfig,
              generator: torch.Generator, random: bool = True,
              teachers: dict[tuple[int, int], torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """One synthetic pair: ``fixed``, ``moving`` ``(1, D, H, W)`` in [0, 1], ``fixed_labels``,
    ``moving_labels`` ``(D, H, W)`` long in 0..L (L = ``data.num_labels``), ``displacement (3, D, H, W)``,
    ``known`` (0 or 1) and ``known_mask (D, H, W)`` (where ``displacement`` is the answer).

    With ``config.known_displacement_vox > 0`` an intra-subject pair is made so that its answer is known
    exactly: the moving patch is sampled as usual and the fixed patch samples the same subject at
    ``x + w(x)`` (:func:`known_displacement`), so ``fixed(x) = moving(x + w(x))`` and ``w`` is the displacement
    the network should predict (``known`` = 1, mask everywhere). An inter-subject pair that ``teachers`` has a
    field for gets the teacher's answer (:func:`teacher_pair_coordinates`; ``known`` = 1, mask where the teacher
    is defined). Otherwise ``displacement`` is zero and ``known`` 0."""
    total = data.num_labels + 1 + config.background_classes
    lookup = torch.rand(total, generator=generator)
    lookup[0] = 0.0 if random and torch.rand((), generator=generator) < 0.5 else lookup[0]
    if random and torch.rand((), generator=generator).item() < config.plain_background:
        lookup[data.num_labels + 1:] = lookup[0]  # label maps on an untextured background (as in label-only data)
    if random and config.contrast_prior and torch.rand((), generator=generator).item() < config.contrast_prior_prob:
        lookup = torch.zeros_like(lookup)  # e.g. a skull-stripped T1: nothing outside the labels
        lookup[1:data.num_labels + 1] = draw_lookup(config.contrast_prior, data.meta["label_values"], generator)
    shapes = {}
    out = {}
    image_only = data.image_only(fixed_index) or data.image_only(moving_index)
    if image_only and fixed_index != moving_index:
        raise ValueError(f"image-only subjects make intra-subject pairs only, got ({fixed_index}, {moving_index})")
    use_real = data.images[fixed_index] is not None and data.images[moving_index] is not None and \
        torch.rand((), generator=generator).item() < config.real_image
    use_real = use_real or image_only
    teacher = (teachers or {}).get((fixed_index, moving_index)) if random and fixed_index != moving_index else None
    w, mask, coordinates_of = torch.zeros((3, *config.shape)), torch.zeros(config.shape), None
    if teacher is not None:
        fixed_coordinates, moving_coordinates, w, mask = teacher_pair_coordinates(
            data, fixed_index, moving_index, teacher, config, generator)
        coordinates_of = {"moving": moving_coordinates, "fixed": fixed_coordinates}
    elif random and fixed_index == moving_index and config.known_displacement_vox > 0:
        # moving sampled as usual; fixed(x) = moving(x + w(x)) with w known exactly
        w, mask = known_displacement(config.shape, config, generator), torch.ones(config.shape)
        margin = int(math.ceil(float(w.abs().max()))) + 2
        wide = sampling_coordinates([n + 2 * margin for n in config.shape], _subject_centre(data, moving_index),
                                    config, generator, random)
        inner = tuple(slice(margin, margin + n) for n in config.shape)
        coordinates_of = {"moving": wide[inner], "fixed": displaced_coordinates(wide, w, margin)}
    out["displacement"], out["known_mask"] = w, mask
    out["known"] = torch.tensor(0.0 if coordinates_of is None else 1.0)
    for role, index in (("moving", moving_index), ("fixed", fixed_index)):
        labels = data.labels[index]
        if index not in shapes:
            shapes[index] = _with_background_shapes(labels, data.num_labels, config.background_classes, generator)
        coordinates = coordinates_of[role] if coordinates_of else \
            sampling_coordinates(config.shape, _subject_centre(data, index), config, generator, random)
        classes = _sample(shapes[index][None].float(), coordinates, "nearest")[0].long()
        out[f"{role}_labels"] = torch.where(classes <= data.num_labels, classes, torch.zeros_like(classes))
        if use_real:
            out[role] = _sample(data.images[index][None], coordinates, "bilinear")
            if image_only and random:
                out[role] = _degrade(out[role], config, generator)
        else:
            out[role] = _render(classes, lookup, config, generator)
    return out


def validation_pairs(data: TensorData, config: SynthesisConfig, count: int, seed: int,
                     pairs: list[tuple[int, int]] | None = None) -> dict[str, torch.Tensor]:
    """A fixed set of inter-subject validation pairs, stacked: images ``(N, 1, D, H, W)``, labels ``(N, D, H, W)``.

    The patches are centred on each subject's labels (a translation pre-alignment)
    with no further random transform; intensities are synthesised unless the
    subjects have real images.
    """
    n = data.labelled  # image-only subjects have no labels to score
    if n < 2 and not pairs:
        raise ValueError(f"validation needs at least 2 labelled subjects for inter-subject pairs, got {n}")
    candidates = pairs or [(a, b) for a in range(n) for b in range(n) if a != b]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(candidates), generator=generator).tolist()[:count]
    chosen = [candidates[i] for i in order]
    fixed_config = SynthesisConfig(**{**asdict(config), "real_image": 1.0})
    samples = [make_pair(data, a, b, fixed_config, generator, random=False) for a, b in chosen]
    stacked = {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
    stacked["pairs"] = torch.tensor(chosen)
    return stacked


def known_pairs(data: TensorData, config: SynthesisConfig, count: int, seed: int) -> dict[str, torch.Tensor]:
    """``count`` intra-subject pairs of ``data``'s subjects (in turn) whose displacement is known exactly
    (``config.known_displacement_vox`` > 0, see :func:`make_pair`), stacked like :func:`validation_pairs`: a
    score of how well a network recovers a deformation on subjects it never saw, independent of label noise."""
    if config.known_displacement_vox <= 0:
        raise ValueError("known_pairs needs config.known_displacement_vox > 0")
    generator = torch.Generator().manual_seed(seed)
    samples = [make_pair(data, i % data.labelled, i % data.labelled, config, generator) for i in range(count)]
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}
