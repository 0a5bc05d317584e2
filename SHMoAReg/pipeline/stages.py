"""The stages of one registration, in the order :func:`SHMoAReg.pipeline.register` runs them.

read (:func:`read_inputs`) -> plan (:func:`plan_run`: preset, weights, grids) -> start
(:func:`choose_start`: identity / centre of mass / affine) -> working pair (:func:`working_pair`:
resample and normalise) -> network (:func:`run_network`) -> instance optimisation
(:func:`optimise`, with the check that the deformable stage helped) -> outputs
(:func:`make_outputs`: compose with the start, resample onto the fixed grid, Jacobian) ->
metrics (:func:`measure`) -> inverse (:func:`invert`). Each stage takes what the earlier ones
produced (small dataclasses) and returns its own; none reads options it was not given.
Conventions: :mod:`SHMoAReg.conventions`.

The work of each stage lives in the folder of its step: read in :mod:`SHMoAReg.io`; plan, start and
working pair in :mod:`SHMoAReg.preprocess`; network in :mod:`SHMoAReg.network`; instance optimisation
in :mod:`SHMoAReg.optimise`; outputs in :mod:`SHMoAReg.transforms`; metrics in :mod:`SHMoAReg.evaluate`;
inverse in :mod:`SHMoAReg.toolkit`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from ..preprocess.affine import affine_prealign
from ..conventions import mm_to_voxel, voxel_to_mm
from ..errors import InputError, RegistrationCancelled
from ..evaluate.evaluation import check_same_grid, field_metrics, label_metrics, landmark_metrics, warp_labels
from ..evaluate.experts import dominant_expert_maps
from ..transforms.field_transform import compose, displacement_transform, field_image, transform_to_displacement
from ..preprocess.content_box import (MARGIN_VOXELS, OPTIMISATION_MARGIN_MM, Box, box_grid, content_box, crop,
                                      margin_voxels, uncrop)
from ..preprocess.grid import image_to_tensor, resample, working_grid
from ..preprocess.grid_rules import MIN_WORKING_VOXELS, working_spacing
from ..io.image_io import as_label_map, check_image, read_image, read_labels
from ..optimise.instance_optimisation import InstanceOptimisationConfig, optimise_field
from ..labels import one_hot
from ..io.landmarks import read_landmarks
from ..optimise.losses import Similarity, similarity_features, similarity_loss
from ..evaluate.metrics import dice_per_label, jacobian_determinant, summarize
from ..preprocess.normalize import normalize
from ..preprocess.preset_choice import AUTO, resolve_preset
from ..preprocess.presets import Preset, get_preset
from ..preprocess.start_choice import centre_of_mass_translation, choose_start as choose_best_start, compare_with_start
from ..toolkit.invert import invert_transform
from ..io.validation import check_run
from ..optimise.warp import DEFAULT_INTEGRATION_STEPS, integrate_velocity, warp_image
from ..weights import load_weights
from ..network.flip_ensemble import FLIP_COUNTS, FlipEnsemble
from ..network.recursive import MAX_FOLDING, RecursiveOutput, recursive_prediction
from ..network.shmoareg_net import NetworkOutput

__all__ = ["Inputs", "Plan", "Start", "WorkingPair", "NetworkRun", "Deformation", "Outputs", "check_options",
           "read_inputs", "plan_run", "choose_start", "working_pair", "run_network", "field_to_grid", "optimise", "make_outputs",
           "measure", "invert", "check_cancel", "read_landmark_pair"]

Progress = Callable[[str, float, str], None]  # a SHMoAReg.pipeline.progress.Progress: also has .stage(name)


# ---------------------------------------------------------------------------------------------------- read

@dataclass
class Inputs:
    """The pair as read and checked: images (float32), label maps and exclusion masks on their image's grid,
    landmarks as ``(N, 3)`` LPS-mm arrays."""

    fixed: sitk.Image
    moving: sitk.Image
    fixed_labels: sitk.Image | None = None
    moving_labels: sitk.Image | None = None
    fixed_mask: sitk.Image | None = None
    moving_mask: sitk.Image | None = None
    fixed_points: np.ndarray | None = None
    moving_points: np.ndarray | None = None


def check_options(preset: str, iterations: int | None, spacing: float | None,
                  network_passes: int | None = None, network_flips: int | None = None) -> None:
    """Options that are wrong whatever the images: an :class:`InputError` before anything is read."""
    if preset != AUTO:
        get_preset(preset)
    if iterations is not None and iterations < 0:
        raise InputError(f"iterations must be >= 0, got {iterations}")
    if spacing is not None and not (math.isfinite(spacing) and spacing > 0):
        raise InputError(f"--spacing must be a positive number of mm, got {spacing}")
    if network_passes is not None and network_passes < 1:
        raise InputError(f"--network-passes must be >= 1, got {network_passes}")
    if network_flips is not None and network_flips not in FLIP_COUNTS:
        raise InputError(f"--network-flips must be one of {', '.join(map(str, FLIP_COUNTS))}, got {network_flips}")


def _image(value, name: str, series: str | None = None) -> sitk.Image:
    if isinstance(value, sitk.Image):
        check_image(value, name)
        return sitk.Cast(value, sitk.sitkFloat32)
    return read_image(value, name, series)


def _labels(value, image: sitk.Image, name: str) -> sitk.Image | None:
    if value is None:
        return None
    labels = as_label_map(value, name) if isinstance(value, sitk.Image) else read_labels(value, name)
    check_same_grid(labels, image, name)
    return labels


def _points(value) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.ndim != 2 or value.shape[1] != 3:
            raise InputError(f"landmarks must be an (N, 3) array, got shape {value.shape}")
        return value.astype(float)
    return read_landmarks(value)


def read_inputs(fixed, moving, *, fixed_labels=None, moving_labels=None, fixed_mask=None, moving_mask=None,
                fixed_series: str | None = None, moving_series: str | None = None) -> Inputs:
    """Read and check the images, label maps and masks (landmarks come with :func:`read_landmark_pair`)."""
    fixed_image = _image(fixed, "fixed image", fixed_series)
    moving_image = _image(moving, "moving image", moving_series)
    return Inputs(fixed_image, moving_image,
                  _labels(fixed_labels, fixed_image, "fixed labels"), _labels(moving_labels, moving_image, "moving labels"),
                  _labels(fixed_mask, fixed_image, "fixed mask"), _labels(moving_mask, moving_image, "moving mask"))


def read_landmark_pair(inputs: Inputs, fixed_landmarks, moving_landmarks) -> None:
    """Add corresponding landmarks (files or arrays) to ``inputs``; both or neither, same count."""
    fixed_points, moving_points = _points(fixed_landmarks), _points(moving_landmarks)
    if (fixed_points is None) != (moving_points is None):
        raise InputError("landmarks need both --fixed-landmarks and --moving-landmarks")
    if fixed_points is not None and fixed_points.shape != moving_points.shape:
        raise InputError(f"fixed and moving landmark files hold {len(fixed_points)} and {len(moving_points)} points; "
                         f"they must correspond one to one")
    inputs.fixed_points, inputs.moving_points = fixed_points, moving_points


# ---------------------------------------------------------------------------------------------------- plan

@dataclass
class Plan:
    """What will run, decided from the options and the images before any computation."""

    preset: str
    preset_reason: str | None  # why, when chosen automatically
    settings: Preset
    weights: str | None  # what was asked for, resolved ("auto" -> a shipped name or None)
    model: torch.nn.Module | None
    weights_info: object | None
    iterations: int  # instance-optimisation iterations (0: network or start only)
    network_passes: int  # at most this many applications of the network (SHMoAReg.network.recursive)
    network_flips: int  # each one averaged over this many mirrorings (SHMoAReg.network.flip_ensemble)
    grid: sitk.Image  # the grid the deformable field lives on (working_pair may make it finer: WorkingPair.grid)
    optimisation_grid: sitk.Image
    network_grid: sitk.Image | None
    similarity: Similarity
    background: float  # the moving image's 0.5th percentile: the value outside it
    device: torch.device
    fixed_background: float = 0.0  # the fixed image's 0.5th percentile: the value outside it
    # instance optimisation's voxel budget goes to the pair's content (working_pair): no --spacing was asked for
    content_spacing: bool = False


def _weights_choice(weights, settings: Preset):
    """``"auto"``: the preset's shipped weights if they exist, else None; ``"none"``: None; else as given."""
    if weights is None or str(weights).strip().lower() == "none":
        return None
    if str(weights) == "auto":
        from ..weights import available_weights

        return settings.weights if settings.weights and settings.weights in available_weights() else None
    return weights


def _network_spacing(weights_info, fallback: float) -> float:
    """The network's grid: the spacing its weights were trained at (its receptive field is calibrated in
    voxels of that size); weights that do not say run on the working grid."""
    trained = (getattr(weights_info, "metadata", None) or {}).get("spacing_mm")
    return fallback if trained is None else float(trained)


def plan_run(inputs: Inputs, *, preset: str, weights, iterations: int | None, affine: bool, spacing: float | None,
             similarity: str | None, diffeomorphic: bool, device: torch.device, progress: Progress,
             network_passes: int | None = None, network_flips: int | None = None) -> Plan:
    """Preset (chosen from the images for ``"auto"``), weights, iteration count and grids; checks that the run
    fits the machine (:func:`SHMoAReg.io.validation.check_run`)."""
    preset, reason = resolve_preset(preset, inputs.fixed, inputs.moving)
    settings = get_preset(preset)
    if reason:
        progress("read", 0.0, f"preset {preset}: {reason}")
    weights = _weights_choice(weights, settings)
    if weights is None and iterations == 0 and not affine:
        raise InputError("nothing to do: no weights, --iterations 0 and --no-affine; give weights, some iterations "
                         "or the affine stage")
    model, weights_info = None, None
    if weights is not None:
        progress("read", 0.0, f"loading weights {weights}")
        model, weights_info = load_weights(weights, device, preset=preset, diffeomorphic=diffeomorphic)
    steps = iterations if iterations is not None else (
        settings.network_iterations if model is not None else settings.iterations)
    if (inputs.fixed_mask is not None or inputs.moving_mask is not None) and steps == 0:
        raise InputError("masks act on instance optimisation: give --iterations > 0 with --fixed-mask/--moving-mask")
    work_spacing = working_spacing(spacing, settings.spacing, min(inputs.fixed.GetSpacing()), inputs.fixed.GetSize(),
                                   inputs.fixed.GetSpacing(), settings.max_working_voxels)
    network_grid = working_grid(inputs.fixed, _network_spacing(weights_info, work_spacing)) if model else None
    optimisation_grid = working_grid(inputs.fixed, work_spacing)
    grid = optimisation_grid if steps > 0 or model is None else network_grid
    check_run(inputs.fixed, inputs.moving, grid, device, network=weights is not None, affine=affine)
    background, fixed_background = (float(np.percentile(sitk.GetArrayViewFromImage(image), 0.5))
                                    for image in (inputs.moving, inputs.fixed))
    passes = 1 if diffeomorphic else (network_passes or settings.network_passes)  # velocities do not compose
    flips = network_flips or (settings.network_flips_alone if steps == 0 else settings.network_flips)
    return Plan(preset, reason, settings, None if weights is None else str(weights), model, weights_info, steps,
                passes, flips, grid, optimisation_grid, network_grid, Similarity(similarity or settings.similarity),
                background, device, fixed_background, content_spacing=spacing is None and steps > 0)


# ---------------------------------------------------------------------------------------------------- start

@dataclass
class Start:
    """The transform the deformable stages start from (None: identity) and how it was chosen."""

    transform: sitk.Transform | None = None
    choice: dict | None = None


def _normaliser(settings: Preset) -> Callable[[torch.Tensor], torch.Tensor]:
    return functools.partial(normalize, modality=settings.modality, window=settings.window)


def choose_start(inputs: Inputs, plan: Plan, *, seed: int, progress, cancelled: Callable[[], bool]) -> Start:
    """Identity, centre-of-mass translation or affine pre-alignment, whichever aligns best on a coarse copy of the
    optimisation grid (the same grid whatever runs next, so one pair gets one choice)."""
    progress("affine", 0.0, "affine pre-alignment")
    candidates = {"identity": None,
                  "centre of mass": centre_of_mass_translation(inputs.fixed, inputs.moving),
                  "affine": affine_prealign(inputs.fixed, inputs.moving, progress=progress.stage("affine"),
                                            cancelled=cancelled, seed=seed)}
    chosen, transform, losses = choose_best_start(inputs.fixed, inputs.moving, plan.optimisation_grid, candidates,
                                                  _normaliser(plan.settings), plan.background, plan.similarity,
                                                  device=plan.device)
    progress("affine", 1.0, f"start: {chosen} (similarity loss " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + ")")
    return Start(transform, {"kept": chosen, "similarity_loss": {k: round(v, 6) for k, v in losses.items()},
                             "criterion": "-global NCC" if plan.similarity is Similarity.LNCC else plan.similarity.value,
                             "grid_spacing_mm": plan.optimisation_grid.GetSpacing()[0]})


# ---------------------------------------------------------------------------------------------------- working pair

@dataclass
class WorkingPair:
    """The grid the deformable field lives on (``grid``: the whole fixed image, ``(D, H, W)`` = ``size``) and, on
    ``box``, the part of it around the pair's content that instance optimisation works on, the fixed and the
    start-aligned moving image, normalised, ``(1, 1, d, h, w)`` each, and the exclusion masks ``(1, 1, d, h, w)``
    (> 0 = excluded) or None."""

    grid: sitk.Image
    fixed: torch.Tensor
    moving: torch.Tensor
    box: Box
    fixed_mask: torch.Tensor | None = None
    moving_mask: torch.Tensor | None = None

    @property
    def size(self) -> tuple[int, int, int]:
        return tuple(reversed(self.grid.GetSize()))

    def describe(self) -> dict:
        """The grid's size and spacing, and the box as ``index`` / ``size`` of it (SimpleITK order i, j, k)."""
        return {"size": list(self.grid.GetSize()), "spacing_mm": self.grid.GetSpacing()[0], "box": _describe_box(self.box)}


def _describe_box(box: Box) -> dict:
    return {"index": [piece.start for piece in reversed(box)], "size": [piece.stop - piece.start for piece in reversed(box)]}


def _normalised_pair(inputs: Inputs, plan: Plan, grid: sitk.Image, start: Start) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed and start-aligned moving image on ``grid``, normalised as the preset says: 2 x ``(1, 1, D, H, W)``.
    Outside its image each is its background (``plan.fixed_background``, ``plan.background``): the grid's last voxels
    may lie up to one voxel beyond the fixed image's last ones (:func:`working_grid`), and 0 there would be water in
    a CT, which :func:`content_box` counts as content."""
    fixed_t = normalize(image_to_tensor(resample(inputs.fixed, grid, default=plan.fixed_background), plan.device),
                        plan.settings.modality, plan.settings.window)
    moving_t = image_to_tensor(resample(inputs.moving, grid, start.transform, default=plan.background), plan.device)
    return fixed_t, normalize(moving_t, plan.settings.modality, plan.settings.window)


def _mask_tensor(mask: sitk.Image | None, grid: sitk.Image, transform: sitk.Transform | None,
                 device: torch.device, name: str) -> torch.Tensor | None:
    """``(1, 1, D, H, W)`` exclusion mask on the working grid (> 0 = excluded; linear, so any overlap counts)."""
    if mask is None:
        return None
    binary = sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkFloat32)
    tensor = image_to_tensor(resample(binary, grid, transform, sitk.sitkLinear, 0.0), device)
    if bool((tensor > 0).all()):
        raise InputError(f"the {name} covers the whole image: nothing would be left for the similarity")
    return tensor


def _content_spacing(fixed: sitk.Image, settings: Preset, grid: sitk.Image, box: Box) -> float:
    """The spacing at which ``box`` of ``grid`` (the pair's content and its margin) gets the preset's voxel budget
    (:func:`SHMoAReg.preprocess.grid_rules.working_spacing` over the box's extent instead of the whole fixed
    image's), never coarser than ``grid``'s."""
    spacing = grid.GetSpacing()[0]
    extent = [math.ceil((piece.stop - piece.start - 1) * spacing / s - 1e-6) + 1  # in voxels of the fixed image,
              for piece, s in zip(reversed(box), fixed.GetSpacing())]              # whose axes are the grid's
    return min(spacing, working_spacing(None, settings.spacing, min(fixed.GetSpacing()), extent, fixed.GetSpacing(),
                                        settings.max_working_voxels))


def _optimisation_box(fixed_t: torch.Tensor, moving_t: torch.Tensor, grid: sitk.Image) -> Box:
    """The content box of the pair on ``grid`` + :data:`~SHMoAReg.preprocess.content_box.OPTIMISATION_MARGIN_MM`,
    at least :data:`~SHMoAReg.preprocess.grid_rules.MIN_WORKING_VOXELS` along every axis (as the grid itself)."""
    return content_box(fixed_t, moving_t, margin=margin_voxels(OPTIMISATION_MARGIN_MM, grid.GetSpacing()[0]),
                       min_size=MIN_WORKING_VOXELS)


def working_pair(inputs: Inputs, plan: Plan, start: Start, progress) -> WorkingPair:
    """The normalised pair and masks on the content box (:func:`content_box`: the content of both images +
    :data:`~SHMoAReg.preprocess.content_box.OPTIMISATION_MARGIN_MM`) of ``plan.grid``; with
    ``plan.content_spacing``, of a grid as fine as the preset's voxel budget allows over that box
    (:func:`_content_spacing`) rather than over the whole fixed image (a whole abdomen with its air and table is
    optimised as finely as the same abdomen cropped)."""
    grid = plan.grid
    progress("resample", 0.0, f"working grid {grid.GetSize()} at {grid.GetSpacing()[0]:g} mm")
    fixed_t, moving_t = _normalised_pair(inputs, plan, grid, start)
    box = _optimisation_box(fixed_t, moving_t, grid)
    finer = _content_spacing(inputs.fixed, plan.settings, grid, box) if plan.content_spacing else grid.GetSpacing()[0]
    if finer < grid.GetSpacing()[0]:
        grid = working_grid(inputs.fixed, finer)
        fixed_t, moving_t = _normalised_pair(inputs, plan, grid, start)
        box = _optimisation_box(fixed_t, moving_t, grid)
    masks = [_mask_tensor(inputs.fixed_mask, grid, None, plan.device, "fixed mask"),
             _mask_tensor(inputs.moving_mask, grid, start.transform, plan.device, "moving mask")]
    pair = WorkingPair(grid, crop(fixed_t, box), crop(moving_t, box), box,
                       *(None if mask is None else crop(mask, box) for mask in masks))
    progress("resample", 1.0, f"the pair's content: {tuple(pair.describe()['box']['size'])} of the working grid "
                              f"{grid.GetSize()} at {grid.GetSpacing()[0]:g} mm")
    return pair


# ---------------------------------------------------------------------------------------------------- network

def field_to_grid(field_t: torch.Tensor, source: sitk.Image, target: sitk.Image) -> torch.Tensor:
    """A voxel displacement (or velocity) ``(1, 3, d, h, w)`` on ``source`` resampled (linear, in LPS mm; nearest
    value outside ``source``) onto ``target``, in voxels of ``target``: ``(1, 3, D, H, W)``."""
    if source.GetSize() == target.GetSize() and np.allclose(source.GetSpacing(), target.GetSpacing()) and \
            np.allclose(source.GetOrigin(), target.GetOrigin()) and np.allclose(source.GetDirection(), target.GetDirection()):
        return field_t
    image = field_image(voxel_to_mm(field_t[0].detach().to("cpu", torch.float64).numpy(), source), source)
    on_target = sitk.GetArrayFromImage(resample(image, target, extrapolate=True))
    voxels = torch.from_numpy(mm_to_voxel(on_target, target)).to(field_t.device, field_t.dtype)
    return voxels[None].contiguous()


@dataclass
class NetworkRun:
    """The network stage. ``recursion``: what :func:`SHMoAReg.network.recursive_prediction` returned, its
    ``output.displacement`` (and velocity) continued from ``box`` to the whole ``plan.network_grid``
    (:func:`SHMoAReg.preprocess.content_box.uncrop`), its gates on ``box_grid``; ``box``: the part of the network
    grid the network ran on (:func:`SHMoAReg.preprocess.content_box.content_box`), ``box_grid`` that part as a
    grid."""

    recursion: RecursiveOutput
    box: Box
    box_grid: sitk.Image

    @property
    def output(self) -> NetworkOutput:
        """The network's output: the kept passes' displacement on the whole network grid, the first pass's gates."""
        return self.recursion.output

    def describe(self) -> dict:
        """The passes, and the box as ``index`` / ``size`` of the network grid (SimpleITK order i, j, k)."""
        return {**self.recursion.describe(), "box": _describe_box(self.box)}


def run_network(inputs: Inputs, plan: Plan, start: Start, progress) -> NetworkRun | None:
    """The network's prediction on the content box of its own grid, applied up to ``plan.network_passes`` times
    (:func:`SHMoAReg.network.recursive_prediction`; displacement / velocity in voxels of ``plan.network_grid``),
    or None without weights."""
    if plan.model is None:
        return None
    grid = plan.network_grid
    fixed_t, moving_t = _normalised_pair(inputs, plan, grid, start)
    box = content_box(fixed_t, moving_t)
    part = box_grid(grid, box)
    progress("network", 0.0, f"network on {part.GetSize()} of {grid.GetSize()} at {grid.GetSpacing()[0]:g} mm "
                             f"(the images' content + {MARGIN_VOXELS} voxels), up to {plan.network_passes} "
                             f"pass{'es' if plan.network_passes > 1 else ''}"
                             + (f", {plan.network_flips} mirrorings each" if plan.network_flips > 1 else ""))
    # the folding limit on further passes holds where the network's field is the result; instance optimisation
    # removes the folds of its starting field (docs/training.md), so before it the passes answer to similarity alone
    max_folding = MAX_FOLDING if plan.iterations == 0 else math.inf
    result = recursive_prediction(FlipEnsemble(plan.model, plan.network_flips), crop(fixed_t, box),
                                  crop(moving_t, box), plan.network_passes, plan.similarity, max_folding=max_folding)
    size, output = fixed_t.shape[2:], result.output
    result = dataclasses.replace(result, output=dataclasses.replace(
        output, displacement=uncrop(output.displacement, box, size),
        velocity=None if output.velocity is None else uncrop(output.velocity, box, size)))
    refused = (f"; pass {result.passes + 1} refused: it folded {100 * result.folding[-1]:.2f} % of the voxels"
               if result.refused == "folding" else "")
    progress("network", 1.0, f"network: {result.passes} pass{'es' if result.passes > 1 else ''} kept{refused}")
    return NetworkRun(result, box, part)


# ---------------------------------------------------------------------------------------------------- optimise

@dataclass
class Deformation:
    """The deformable part on ``grid`` (the working pair's): ``displacement (1, 3, D, H, W)`` in voxels, after the
    start transform;
    ``velocity`` for diffeomorphic runs; ``check``: whether it beat the start alone (None: no deformable stage).
    When the check compared label maps and kept the deformable result, ``transform`` (start composed with the
    displacement) and ``warped_labels`` (the moving labels under it, on the fixed grid) are what it computed, so
    the outputs reuse them instead of composing and warping again."""

    displacement: torch.Tensor
    velocity: torch.Tensor | None
    integration_steps: int
    config: InstanceOptimisationConfig
    grid: sitk.Image
    check: dict | None = None
    transform: sitk.Transform | None = None
    warped_labels: sitk.Image | None = None
    levels: list | None = None  # what instance optimisation did at each scale (SHMoAReg.optimise.instance_optimisation)


def _one_hot(labels: sitk.Image | None, grid: sitk.Image, transform: sitk.Transform | None, values: list[int],
             device: torch.device) -> torch.Tensor | None:
    """``(1, L+1, D, H, W)`` one-hot of ``labels o transform`` on ``grid`` (channel 0 = everything else)."""
    if labels is None or not values:
        return None
    array = torch.from_numpy(sitk.GetArrayFromImage(warp_labels(labels, grid, transform)).astype(np.int64)).to(device)
    lookup = torch.zeros(max(int(array.max()), max(values)) + 1, dtype=torch.long, device=device)
    lookup[torch.tensor(values, device=device)] = torch.arange(1, len(values) + 1, device=device)
    return one_hot(lookup[array][None], len(values))


def optimise(inputs: Inputs, plan: Plan, start: Start, pair: WorkingPair, network_output, *, label_weight: float,
             diffeomorphic: bool, progress, cancelled: Callable[[], bool]) -> Deformation:
    """Instance optimisation from the network's field (or zero), then the check that the deformable result beats
    the start alone; a result that does not is replaced by the start (zero field) with a warning."""
    # after the network (which did the coarse work) the finest scale keeps all its iterations
    after_network = {} if network_output is None else {"finest_share_cap": 1.0}
    config = InstanceOptimisationConfig(
        iterations=plan.iterations, learning_rate=plan.settings.learning_rate, similarity=plan.similarity,
        smoothness_weight=plan.settings.smoothness_weight, label_weight=label_weight, diffeomorphic=diffeomorphic,
        **after_network)
    if plan.iterations > 0:
        initial = None
        if network_output is not None:
            initial = crop(field_to_grid(network_output.velocity if diffeomorphic else network_output.displacement,
                                         plan.network_grid, pair.grid), pair.box)
        values = (sorted(set(np.unique(sitk.GetArrayViewFromImage(inputs.fixed_labels)).tolist()) - {0})
                  if label_weight > 0 and inputs.fixed_labels is not None else [])
        fixed_labels = moving_labels = None
        if label_weight > 0:
            fixed_labels, moving_labels = (
                None if one_hot_t is None else crop(one_hot_t, pair.box) for one_hot_t in (
                    _one_hot(inputs.fixed_labels, pair.grid, None, values, plan.device),
                    _one_hot(inputs.moving_labels, pair.grid, start.transform, values, plan.device)))
        levels: list = []
        # on the box, then continued over the rest of the grid by its face values (as the network's field)
        field_t = uncrop(optimise_field(
            pair.fixed, pair.moving, config, initial=initial, fixed_labels=fixed_labels, moving_labels=moving_labels,
            progress=progress.stage("optimise"), cancelled=cancelled, fixed_mask=pair.fixed_mask,
            moving_mask=pair.moving_mask, levels=levels), pair.box, pair.size)
        with torch.no_grad():
            displacement = integrate_velocity(field_t, DEFAULT_INTEGRATION_STEPS) if diffeomorphic else field_t
        deformation = Deformation(displacement, field_t if diffeomorphic else None, DEFAULT_INTEGRATION_STEPS, config,
                                  pair.grid, levels=levels)
    elif network_output is not None:
        deformation = Deformation(network_output.displacement, network_output.velocity if diffeomorphic else None,
                                  plan.model.config.integration_steps, config, pair.grid)
    else:  # the start alone
        return Deformation(torch.zeros((1, 3, *pair.size), device=plan.device), None, DEFAULT_INTEGRATION_STEPS, config,
                           pair.grid)
    deformation.check, transform, warped_labels = _check_deformable(inputs, plan, start, pair, deformation.displacement)
    if deformation.check["kept"] == "start":
        progress("optimise", 1.0, f"warning: {deformation.check['reason']}")
        deformation.displacement, deformation.velocity = torch.zeros_like(deformation.displacement), None
    else:
        deformation.transform, deformation.warped_labels = transform, warped_labels
    return deformation


def _total_transform(start: Start, displacement: torch.Tensor, grid: sitk.Image) -> sitk.Transform:
    """The start transform followed by ``displacement`` (voxels of ``grid``): fixed -> moving, LPS mm."""
    voxels = displacement[0].detach().to("cpu", torch.float64).numpy()
    return compose(start.transform, displacement_transform(voxel_to_mm(voxels, grid), grid))


def _check_deformable(inputs: Inputs, plan: Plan, start: Start, pair: WorkingPair, displacement: torch.Tensor):
    """Is the deformable result (``displacement``, voxels of ``pair.grid``, after the start transform) better than
    the start alone? Similarity loss on the working grid, and mean Dice on the fixed grid when labels exist
    (:func:`SHMoAReg.preprocess.start_choice.compare_with_start`). Returns the verdict, and with labels the deformable
    transform and the moving labels warped by it (else None, None)."""
    kind = plan.similarity
    with torch.no_grad():
        fixed_features = similarity_features(pair.fixed, kind)
        before = float(similarity_loss(fixed_features, similarity_features(pair.moving, kind), kind))
        warped = warp_image(pair.moving, crop(displacement, pair.box).to(pair.moving.dtype))
        after = float(similarity_loss(fixed_features, similarity_features(warped, kind), kind))
    dice_before = dice_after = deformable = warped_labels = None
    if inputs.fixed_labels is not None and inputs.moving_labels is not None:
        deformable = _total_transform(start, displacement, pair.grid)
        warped_labels = warp_labels(inputs.moving_labels, inputs.fixed, deformable)
        dice_before = summarize(dice_per_label(inputs.fixed_labels, warp_labels(inputs.moving_labels, inputs.fixed,
                                                                                start.transform)))
        dice_after = summarize(dice_per_label(inputs.fixed_labels, warped_labels))
    return compare_with_start(before, after, dice_before, dice_after), deformable, warped_labels


# ---------------------------------------------------------------------------------------------------- outputs

@dataclass
class Outputs:
    """Everything on the fixed grid: ``transform`` (fixed -> moving, LPS mm), the warped image and labels, the
    total displacement (vector image), the Jacobian determinant (``determinant`` on the working grid as an
    array, ``jacobian`` resampled onto the fixed grid), the velocity image and the dominant-expert maps."""

    transform: sitk.Transform
    warped: sitk.Image
    warped_labels: sitk.Image | None
    displacement: sitk.Image
    determinant: np.ndarray
    jacobian: sitk.Image
    velocity: sitk.Image | None
    expert_maps: dict


def _velocity_image(velocity: torch.Tensor | None, grid: sitk.Image, steps: int) -> sitk.Image | None:
    """The stationary velocity as an LPS-mm vector image on the working grid (float32), or None."""
    if velocity is None:
        return None
    image = field_image(voxel_to_mm(velocity[0].detach().to("cpu", torch.float64).numpy(), grid), grid,
                        sitk.sitkVectorFloat32)
    image.SetMetaData("ITK_FileNotes", f"SHMoAReg velocity v, LPS mm; transform = exp(v), {steps} squarings")
    return image


def _expert_maps(network: NetworkRun | None, fixed: sitk.Image) -> dict[str, sitk.Image]:
    """The dominant-expert maps on the fixed image's grid, cropped to the fixed voxels inside the box the network
    ran on (the whole fixed grid when the box is the whole network grid); none without gates."""
    if network is None or not network.output.gates:
        return {}
    inside = resample(_ones_like(network.box_grid), fixed, None, sitk.sitkNearestNeighbor, 0)
    found = ndimage.find_objects(sitk.GetArrayViewFromImage(inside))
    if not found or found[0] is None:
        return {}
    box = found[0]  # array order (k, j, i)
    maps = {}
    for name, image in dominant_expert_maps(network.output, network.box_grid).items():
        on_fixed = resample(image, fixed, None, sitk.sitkNearestNeighbor, 0)
        maps[name] = box_grid(on_fixed, box)
    return maps


def _ones_like(grid: sitk.Image) -> sitk.Image:
    ones = sitk.Image(grid.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(grid)
    return ones


def make_outputs(inputs: Inputs, plan: Plan, start: Start, deformation: Deformation, network: NetworkRun | None,
                 progress) -> Outputs:
    """Compose the start with the deformable field and resample everything onto the fixed image's grid."""
    progress("outputs", 0.0, "resampling onto the fixed grid")
    grid, fixed = deformation.grid, inputs.fixed
    transform = deformation.transform if deformation.transform is not None else \
        _total_transform(start, deformation.displacement, grid)
    warped = resample(inputs.moving, fixed, transform, default=plan.background)
    warped_labels = deformation.warped_labels
    if warped_labels is None and inputs.moving_labels is not None:
        warped_labels = warp_labels(inputs.moving_labels, fixed, transform)
    displacement_fixed = transform_to_displacement(transform, fixed, sitk.sitkVectorFloat32)
    determinant = jacobian_determinant(sitk.GetArrayFromImage(transform_to_displacement(transform, grid)), grid)
    jacobian_grid = sitk.GetImageFromArray(determinant.astype(np.float32))
    jacobian_grid.CopyInformation(grid)
    jacobian = resample(jacobian_grid, fixed, None, sitk.sitkLinear, 1.0, sitk.sitkFloat32)
    maps = _expert_maps(network, fixed)
    return Outputs(transform, warped, warped_labels, displacement_fixed, determinant, jacobian,
                   _velocity_image(deformation.velocity, grid, deformation.integration_steps), maps)


# ---------------------------------------------------------------------------------------------------- metrics, inverse

def measure(inputs: Inputs, outputs: Outputs, progress) -> dict:
    """Field regularity always; Dice/HD95 with both label maps; TRE with landmarks."""
    progress("metrics", 0.0, "computing metrics")
    metrics = field_metrics(outputs.determinant)
    if inputs.fixed_labels is not None and inputs.moving_labels is not None:
        metrics.update(label_metrics(inputs.fixed_labels, outputs.warped_labels,
                                     warp_labels(inputs.moving_labels, inputs.fixed, None)))
    if inputs.fixed_points is not None:
        metrics.update(landmark_metrics(outputs.transform, inputs.fixed_points, inputs.moving_points))
    return metrics


def invert(inputs: Inputs, outputs: Outputs, deformation: Deformation, progress):
    """The moving -> fixed transform (exact from the velocity when there is one, else fixed-point iteration)."""
    progress("inverse", 0.0, "inverting the transform")
    return invert_transform(outputs.transform, reference=inputs.moving, velocity=outputs.velocity,
                            integration_steps=deformation.integration_steps)


def check_cancel(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise RegistrationCancelled("registration cancelled; nothing was written")
