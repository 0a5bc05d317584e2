"""``register``: the whole registration of one pair, in physical space.

read -> (affine pre-alignment) -> working grid -> normalise -> (network) ->
(instance optimisation) -> compose with the affine -> resample to the fixed grid
-> metrics -> outputs. Conventions: :mod:`SHMoAReg.conventions`.

Exclusion masks (``fixed_mask``, ``moving_mask``: non-zero = leave out of the
similarity, e.g. a lesion present in one image only) act on instance optimisation.
A diffeomorphic run also writes its stationary velocity (``velocity.nii.gz``), from
which ``inverse`` / ``shmoareg invert`` get the exact inverse. Runs are reproducible:
``seed`` fixes every random choice, and PyTorch's deterministic algorithms are used
where it has them, so two CPU runs with the same inputs, seed, thread count and
library versions write identical files (``report.json`` differs only in timings and
memory; HDF5 ``.h5`` files carry object timestamps).
"""
from __future__ import annotations

import functools
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

from . import __version__
from .affine import affine_prealign
from .conventions import mm_to_voxel, voxel_to_mm
from .devices import resolve_device
from .errors import InputError, RegistrationCancelled
from .evaluation import check_same_grid, field_metrics, label_metrics, landmark_metrics, warp_labels
from .experts import dominant_expert_maps, utilisation
from .field_transform import compose, displacement_transform, field_image, transform_to_displacement
from .grid import image_to_tensor, resample, working_grid
from .grid_rules import working_spacing
from .image_io import check_image, read_image, read_labels, as_label_map
from .instance_optimisation import InstanceOptimisationConfig, optimise_field
from .labels import one_hot
from .landmarks import read_landmarks
from .losses import Similarity, similarity_features, similarity_loss
from .memory import out_of_memory_as_error, peak_host_rss_mb
from .metrics import dice_per_label, jacobian_determinant, summarize
from .preset_choice import AUTO, resolve_preset
from .start_choice import centre_of_mass_translation, choose_start, compare_with_start
from .normalize import normalize
from .outputs import OutputFolder
from .presets import get_preset
from .progress import Progress
from .validation import check_run
from .warp import DEFAULT_INTEGRATION_STEPS, integrate_velocity, warp_image
from .toolkit.invert import invert_transform
from .weights import load_weights

__all__ = ["register", "RegistrationResult"]

ImageLike = str | os.PathLike | sitk.Image


@dataclass
class RegistrationResult:
    """transform maps fixed-space points to moving-space points (LPS mm); see :mod:`SHMoAReg.conventions`."""

    transform: sitk.Transform
    warped: sitk.Image
    displacement: sitk.Image
    jacobian: sitk.Image
    report: dict
    warped_labels: sitk.Image | None = None
    expert_maps: dict[str, sitk.Image] = field(default_factory=dict)
    utilisation: dict | None = None
    output_dir: Path | None = None
    velocity: sitk.Image | None = None  # diffeomorphic runs: stationary velocity, LPS mm on the working grid
    inverse_transform: sitk.Transform | None = None  # with inverse=True: maps moving-space points to fixed space


def _image(value: ImageLike, name: str, series: str | None = None) -> sitk.Image:
    if isinstance(value, sitk.Image):
        check_image(value, name)
        return sitk.Cast(value, sitk.sitkFloat32)
    return read_image(value, name, series)


def _labels(value: ImageLike | None, image: sitk.Image, name: str) -> sitk.Image | None:
    if value is None:
        return None
    labels = as_label_map(value, name) if isinstance(value, sitk.Image) else read_labels(value, name)
    check_same_grid(labels, image, name)
    return labels


def _one_hot(labels: sitk.Image | None, grid: sitk.Image, transform: sitk.Transform | None, values: list[int],
             device: torch.device) -> torch.Tensor | None:
    """``(1, L+1, D, H, W)`` one-hot of ``labels o transform`` on ``grid`` (channel 0 = everything else)."""
    if labels is None or not values:
        return None
    array = torch.from_numpy(sitk.GetArrayFromImage(warp_labels(labels, grid, transform)).astype(np.int64)).to(device)
    lookup = torch.zeros(max(int(array.max()), max(values)) + 1, dtype=torch.long, device=device)
    lookup[torch.tensor(values, device=device)] = torch.arange(1, len(values) + 1, device=device)
    return one_hot(lookup[array][None], len(values))


def _deterministic(function: Callable) -> Callable:
    """Run ``function`` with PyTorch's deterministic algorithms where it has them (cuDNN, CUDA scatter and
    index ops) and restore the previous settings afterwards. CPU runs are bit-identical anyway; on CUDA
    some kernels (e.g. grid_sample's backward) have no deterministic version, so results agree only
    within a tolerance there. Without CUDA the switch is skipped: it changes nothing on the CPU and
    costs about a second per run (it imports ``torch._inductor``)."""
    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        if not torch.cuda.is_available():
            return function(*args, **kwargs)
        previous = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
                    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*does not have a deterministic implementation.*")
                return function(*args, **kwargs)
        finally:
            torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = previous[2], previous[3]
    return wrapper


def _network_spacing(weights_info, fallback: float) -> float:
    """The network's grid: the spacing its weights were trained at (its receptive field is calibrated in
    voxels of that size); weights that do not say run on the working grid."""
    trained = (weights_info.metadata or {}).get("spacing_mm")
    return fallback if trained is None else float(trained)


def _weights_choice(weights: str | os.PathLike | None, settings) -> str | os.PathLike | None:
    """``"auto"``: the preset's shipped weights if they exist, else None; ``"none"``: None; else as given."""
    if weights is None or str(weights).strip().lower() == "none":
        return None
    if str(weights) == "auto":
        from .weights import available_weights

        return settings.weights if settings.weights and settings.weights in available_weights() else None
    return weights


def _normalised_pair(fixed: sitk.Image, moving: sitk.Image, grid: sitk.Image, affine_tf: sitk.Transform | None,
                     background: float, settings, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Fixed and affinely pre-aligned moving image on ``grid``, normalised as the preset says: 2 x ``(1, 1, D, H, W)``."""
    fixed_t = normalize(image_to_tensor(resample(fixed, grid), device), settings.modality, settings.window)
    moving_t = image_to_tensor(resample(moving, grid, affine_tf, default=background), device)
    return fixed_t, normalize(moving_t, settings.modality, settings.window)


def _run_network(model, fixed: sitk.Image, moving: sitk.Image, grid: sitk.Image, affine_tf: sitk.Transform | None,
                 background: float, settings, device: torch.device, diffeomorphic: bool):
    """The network's prediction on its own ``grid`` (displacement / velocity in voxels of that grid)."""
    fixed_t, moving_t = _normalised_pair(fixed, moving, grid, affine_tf, background, settings, device)
    model.config.diffeomorphic = diffeomorphic  # a copy per loaded model: load_weights builds a new one each time
    with torch.no_grad():
        return model(fixed_t, moving_t)


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


@out_of_memory_as_error
@_deterministic
def register(fixed: ImageLike, moving: ImageLike, output_dir: str | os.PathLike | None = None, *,
             fixed_labels: ImageLike | None = None, moving_labels: ImageLike | None = None,
             fixed_landmarks: str | os.PathLike | np.ndarray | None = None,
             moving_landmarks: str | os.PathLike | np.ndarray | None = None,
             weights: str | os.PathLike | None = "auto", iterations: int | None = None, affine: bool = True,
             diffeomorphic: bool = False, device: str = "auto", preset: str = "auto",
             spacing: float | None = None, similarity: str | None = None, label_weight: float = 0.0,
             seed: int = 0, overwrite: bool = False, l2r_displacement: bool = False,
             fixed_series: str | None = None, moving_series: str | None = None,
             fixed_mask: ImageLike | None = None, moving_mask: ImageLike | None = None, inverse: bool = False,
             progress: Callable[[str, float, str], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed``; write the outputs to ``output_dir`` when given.

    Images and label maps are paths (any SimpleITK format or a DICOM folder) or
    SimpleITK images; landmarks are files or ``(N, 3)`` LPS-mm arrays. ``weights``: ``"auto"`` (default)
    uses the preset's shipped weights when they exist, ``None`` or ``"none"`` runs instance optimisation
    alone, else a shipped name or a ``.pt`` file. The network works on the grid its weights were trained
    at; instance optimisation refines on the preset's (or ``spacing``) grid. ``iterations`` of instance
    optimisation default to the preset's: ``network_iterations`` after the network, else ``iterations``
    (0 = network only).
    ``fixed_mask`` / ``moving_mask`` (on their image's grid; non-zero = excluded from the
    similarity) need iterations > 0. ``inverse`` adds ``inverse_transform`` (moving -> fixed;
    exact from the velocity when ``diffeomorphic``, else fixed-point iteration).
    Raises :class:`InputError` for unusable inputs (before anything is written) and
    :class:`RegistrationCancelled` when ``cancel()`` turns true; outputs are written
    all at once at the end, so a failed or cancelled run leaves ``output_dir`` as it was.
    """
    timings: dict[str, float] = {}
    report_progress = progress if isinstance(progress, Progress) else Progress(progress)
    cancelled = cancel or (lambda: False)
    if preset != AUTO:
        get_preset(preset)  # an unknown name is an input error before anything is read
    requested_weights = None if weights is None else str(weights)
    if iterations is not None and iterations < 0:
        raise InputError(f"iterations must be >= 0, got {iterations}")
    if spacing is not None and not (math.isfinite(spacing) and spacing > 0):
        raise InputError(f"--spacing must be a positive number of mm, got {spacing}")
    folder = OutputFolder(output_dir, overwrite) if output_dir is not None else None
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)

    start = time.perf_counter()
    report_progress("read", 0.0, "reading images")
    fixed_image = _image(fixed, "fixed image", fixed_series)
    moving_image = _image(moving, "moving image", moving_series)
    fixed_lab = _labels(fixed_labels, fixed_image, "fixed labels")
    moving_lab = _labels(moving_labels, moving_image, "moving labels")
    fixed_mask_image = _labels(fixed_mask, fixed_image, "fixed mask")
    moving_mask_image = _labels(moving_mask, moving_image, "moving mask")
    preset, preset_reason = resolve_preset(preset, fixed_image, moving_image)
    settings = get_preset(preset)
    if preset_reason:
        report_progress("read", 0.0, f"preset {preset}: {preset_reason}")
    weights = _weights_choice(weights, settings)
    if weights is None and iterations == 0 and not affine:
        raise InputError("nothing to do: no weights, --iterations 0 and --no-affine; give weights, some iterations "
                         "or the affine stage")
    model, weights_info = None, None
    if weights is not None:
        report_progress("read", 0.0, f"loading weights {weights}")
        model, weights_info = load_weights(weights, torch_device, preset=preset)
    steps = iterations if iterations is not None else (
        settings.network_iterations if model is not None else settings.iterations)
    if (fixed_mask_image is not None or moving_mask_image is not None) and steps == 0:
        raise InputError("masks act on instance optimisation: give --iterations > 0 with --fixed-mask/--moving-mask")
    fixed_points = _points(fixed_landmarks)
    moving_points = _points(moving_landmarks)
    if (fixed_points is None) != (moving_points is None):
        raise InputError("landmarks need both --fixed-landmarks and --moving-landmarks")
    if fixed_points is not None and fixed_points.shape != moving_points.shape:
        raise InputError(f"fixed and moving landmark files hold {len(fixed_points)} and {len(moving_points)} points; "
                         f"they must correspond one to one")
    work_spacing = working_spacing(spacing, settings.spacing, min(fixed_image.GetSpacing()))
    network_grid = working_grid(fixed_image, _network_spacing(weights_info, work_spacing)) if model else None
    optimisation_grid = working_grid(fixed_image, work_spacing)
    grid = optimisation_grid if steps > 0 or model is None else network_grid
    work_spacing = grid.GetSpacing()[0]
    check_run(fixed_image, moving_image, grid, torch_device, network=weights is not None, affine=affine)
    timings["read"] = time.perf_counter() - start

    stamp = time.perf_counter()
    background = float(np.percentile(sitk.GetArrayViewFromImage(moving_image), 0.5))
    similarity_kind = Similarity(similarity or settings.similarity)
    start_choice = None
    affine_tf = None
    if affine:
        report_progress("affine", 0.0, "affine pre-alignment")
        candidates = {"identity": None, "centre of mass": centre_of_mass_translation(fixed_image, moving_image),
                      "affine": affine_prealign(fixed_image, moving_image, progress=report_progress.stage("affine"),
                                                cancelled=cancelled, seed=seed)}
        chosen, affine_tf, losses = choose_start(  # on the same grid whatever runs next, so one pair, one choice
            fixed_image, moving_image, optimisation_grid, candidates,
            functools.partial(normalize, modality=settings.modality, window=settings.window), background,
            similarity_kind, device=torch_device)
        start_choice = {"kept": chosen, "similarity_loss": {k: round(v, 6) for k, v in losses.items()},
                        "criterion": "-global NCC" if similarity_kind is Similarity.LNCC else similarity_kind.value,
                        "grid_spacing_mm": optimisation_grid.GetSpacing()[0]}
        report_progress("affine", 1.0, f"start: {chosen} (similarity loss " +
                        ", ".join(f"{k} {v:.4f}" for k, v in losses.items()) + ")")
    timings["affine"] = time.perf_counter() - stamp

    stamp = time.perf_counter()
    report_progress("resample", 0.0, f"working grid {grid.GetSize()} at {work_spacing:g} mm")
    fixed_t, moving_t = _normalised_pair(fixed_image, moving_image, grid, affine_tf, background, settings, torch_device)
    fixed_mask_t = _mask_tensor(fixed_mask_image, grid, None, torch_device, "fixed mask")
    moving_mask_t = _mask_tensor(moving_mask_image, grid, affine_tf, torch_device, "moving mask")
    timings["resample"] = time.perf_counter() - stamp
    _check_cancel(cancelled)

    stamp = time.perf_counter()
    network_output, initial = None, None
    if model is not None:
        report_progress("network", 0.0, f"network on {network_grid.GetSize()} at {network_grid.GetSpacing()[0]:g} mm")
        network_output = _run_network(model, fixed_image, moving_image, network_grid, affine_tf, background, settings,
                                      torch_device, diffeomorphic)
        initial = network_output.velocity if diffeomorphic else network_output.displacement
        initial = field_to_grid(initial, network_grid, grid)
    timings["network"] = time.perf_counter() - stamp

    stamp = time.perf_counter()
    config = InstanceOptimisationConfig(
        iterations=steps, learning_rate=settings.learning_rate,
        similarity=similarity_kind, smoothness_weight=settings.smoothness_weight,
        label_weight=label_weight, diffeomorphic=diffeomorphic)
    if steps > 0:
        use_labels = label_weight > 0
        values = (sorted(set(np.unique(sitk.GetArrayViewFromImage(fixed_lab)).tolist()) - {0})
                  if use_labels and fixed_lab is not None else [])
        field_t = optimise_field(
            fixed_t, moving_t, config, initial=initial,
            fixed_labels=_one_hot(fixed_lab, grid, None, values, torch_device) if use_labels else None,
            moving_labels=_one_hot(moving_lab, grid, affine_tf, values, torch_device) if use_labels else None,
            progress=report_progress.stage("optimise"), cancelled=cancelled, fixed_mask=fixed_mask_t,
            moving_mask=moving_mask_t)
        integration_steps = DEFAULT_INTEGRATION_STEPS
        velocity_t = field_t if diffeomorphic else None
        with torch.no_grad():
            displacement = integrate_velocity(field_t, integration_steps) if diffeomorphic else field_t
    elif network_output is not None:
        integration_steps = model.config.integration_steps
        velocity_t = network_output.velocity if diffeomorphic else None
        displacement = network_output.displacement
    else:  # affine only
        integration_steps, velocity_t = DEFAULT_INTEGRATION_STEPS, None
        displacement = torch.zeros((1, 3, *fixed_t.shape[2:]), device=torch_device)
    deformable_check = None
    if steps > 0 or network_output is not None:  # a deformable stage ran: did it help?
        deformable_check = _check_deformable(fixed_t, moving_t, displacement, similarity_kind, fixed_lab, moving_lab,
                                             fixed_image, affine_tf, grid)
    if deformable_check is not None and deformable_check["kept"] == "start":
        report_progress("optimise", 1.0, f"warning: {deformable_check['reason']}")
        displacement, velocity_t = torch.zeros_like(displacement), None
    timings["optimise"] = time.perf_counter() - stamp
    _check_cancel(cancelled)

    stamp = time.perf_counter()
    report_progress("outputs", 0.0, "resampling onto the fixed grid")
    displacement_voxels = displacement[0].detach().to("cpu", torch.float64).numpy()
    transform = compose(affine_tf, displacement_transform(voxel_to_mm(displacement_voxels, grid), grid))
    warped = resample(moving_image, fixed_image, transform, default=background)
    warped_lab = warp_labels(moving_lab, fixed_image, transform) if moving_lab is not None else None
    displacement_fixed = transform_to_displacement(transform, fixed_image, sitk.sitkVectorFloat32)
    total_on_grid = sitk.GetArrayFromImage(transform_to_displacement(transform, grid))
    determinant = jacobian_determinant(total_on_grid, grid)
    jacobian_grid = sitk.GetImageFromArray(determinant.astype(np.float32))
    jacobian_grid.CopyInformation(grid)
    jacobian = resample(jacobian_grid, fixed_image, None, sitk.sitkLinear, 1.0, sitk.sitkFloat32)
    velocity_image = _velocity_image(velocity_t, grid, integration_steps)
    maps = {}
    if network_output is not None and network_output.gates:
        maps = {k: resample(v, fixed_image, None, sitk.sitkNearestNeighbor, 0) for k, v in
                dominant_expert_maps(network_output, network_grid).items()}
    timings["outputs"] = time.perf_counter() - stamp
    _check_cancel(cancelled)

    stamp = time.perf_counter()
    report_progress("metrics", 0.0, "computing metrics")
    metrics = field_metrics(determinant)
    if fixed_lab is not None and moving_lab is not None:
        metrics.update(label_metrics(fixed_lab, warped_lab, warp_labels(moving_lab, fixed_image, None)))
    if fixed_points is not None:
        metrics.update(landmark_metrics(transform, fixed_points, moving_points))
    timings["metrics"] = time.perf_counter() - stamp

    stamp = time.perf_counter()
    inversion = None
    if inverse:
        report_progress("inverse", 0.0, "inverting the transform")
        inversion = invert_transform(transform, reference=moving_image, velocity=velocity_image,
                                     integration_steps=integration_steps)
        _check_cancel(cancelled)
    timings["inverse"] = time.perf_counter() - stamp
    timings["total"] = time.perf_counter() - start

    report = {
        "engine_version": __version__, "metrics": metrics, "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "device": str(torch_device), "peak_memory_mb": _peak_memory_mb(torch_device),
        "weights": None if weights_info is None else {"name": weights_info.name, "sha256": weights_info.sha256,
                                                      "path": weights_info.path, "preset": weights_info.preset},
        "preset": {"name": preset, "chosen_automatically": preset_reason is not None, "reason": preset_reason},
        "start": start_choice, "deformable_check": deformable_check,
        "working_grid": {"size": list(grid.GetSize()), "spacing_mm": work_spacing},
        "network_grid": None if network_grid is None else {"size": list(network_grid.GetSize()),
                                                           "spacing_mm": network_grid.GetSpacing()[0]},
        "parameters": {"preset": preset, "iterations": steps, "affine": affine, "diffeomorphic": diffeomorphic,
                       "similarity": config.similarity.value, "smoothness_weight": config.smoothness_weight,
                       "learning_rate": config.learning_rate, "label_weight": label_weight, "seed": seed,
                       "weights": None if weights is None else str(weights), "weights_requested": requested_weights,
                       "device_requested": device},
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "simpleitk": sitk.Version_VersionString(), "threads": torch.get_num_threads()},
        "conventions": "transform.h5 maps fixed-space LPS mm points to moving space (ITK resampling direction)",
    }
    report["parameters"]["masks"] = {"fixed": _describe(fixed_mask), "moving": _describe(moving_mask),
                                     "fixed_excluded_fraction": _fraction(fixed_mask_t),
                                     "moving_excluded_fraction": _fraction(moving_mask_t)}
    if velocity_image is not None:
        report["velocity"] = {"file": "velocity.nii.gz", "integration_steps": integration_steps,
                              "content": "stationary velocity v, LPS mm on the working grid; the deformable part "
                                         "of transform.h5 is exp(v) (scaling and squaring)"}
    if inversion is not None:
        report["inverse"] = {"file": "inverse_transform.h5", "maps": "moving-space LPS mm points to fixed space",
                             "method": inversion.method, "iterations": inversion.iterations,
                             "residual_mm": inversion.residual_mm}
    result = RegistrationResult(transform, warped, displacement_fixed, jacobian, report, warped_lab, maps,
                                utilisation(network_output, model.config.kernel_sizes) if maps else None,
                                velocity=velocity_image,
                                inverse_transform=inversion.transform if inversion is not None else None)
    if folder is not None:
        _check_cancel(cancelled)
        result.output_dir = folder.write(result, l2r_displacement)
    report_progress("done", 1.0, f"finished in {timings['total']:.1f} s")
    return result


def _check_deformable(fixed_t: torch.Tensor, moving_t: torch.Tensor, displacement: torch.Tensor,
                      similarity_kind: Similarity, fixed_lab: sitk.Image | None, moving_lab: sitk.Image | None,
                      fixed_image: sitk.Image, start_tf: sitk.Transform | None, grid: sitk.Image) -> dict:
    """Is the deformable result (``displacement``, voxels of ``grid``, after the start transform) better than
    the start alone? Similarity loss on the working grid, and mean Dice on the fixed grid when labels exist
    (:func:`SHMoAReg.start_choice.compare_with_start`)."""
    with torch.no_grad():
        fixed_features = similarity_features(fixed_t, similarity_kind)
        before = float(similarity_loss(fixed_features, similarity_features(moving_t, similarity_kind), similarity_kind))
        warped = warp_image(moving_t, displacement.to(moving_t.dtype))
        after = float(similarity_loss(fixed_features, similarity_features(warped, similarity_kind), similarity_kind))
    dice_before = dice_after = None
    if fixed_lab is not None and moving_lab is not None:
        deformable = compose(start_tf, displacement_transform(
            voxel_to_mm(displacement[0].detach().to("cpu", torch.float64).numpy(), grid), grid))
        dice_before = summarize(dice_per_label(fixed_lab, warp_labels(moving_lab, fixed_image, start_tf)))
        dice_after = summarize(dice_per_label(fixed_lab, warp_labels(moving_lab, fixed_image, deformable)))
    return compare_with_start(before, after, dice_before, dice_after)


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


def _fraction(mask: torch.Tensor | None) -> float | None:
    return None if mask is None else round(float((mask > 0).float().mean()), 6)


def _describe(value) -> str | None:
    return None if value is None else ("image" if isinstance(value, sitk.Image) else str(value))


def _velocity_image(velocity: torch.Tensor | None, grid: sitk.Image, steps: int) -> sitk.Image | None:
    """The stationary velocity as an LPS-mm vector image on the working grid (float32), or None."""
    if velocity is None:
        return None
    image = field_image(voxel_to_mm(velocity[0].detach().to("cpu", torch.float64).numpy(), grid), grid,
                        sitk.sitkVectorFloat32)
    image.SetMetaData("ITK_FileNotes", f"SHMoAReg velocity v, LPS mm; transform = exp(v), {steps} squarings")
    return image


def _points(value) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        if value.ndim != 2 or value.shape[1] != 3:
            raise InputError(f"landmarks must be an (N, 3) array, got shape {value.shape}")
        return value.astype(float)
    return read_landmarks(value)


def _check_cancel(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise RegistrationCancelled("registration cancelled; nothing was written")


def _peak_memory_mb(device: torch.device) -> dict:
    rss = peak_host_rss_mb()
    peak = {"host_rss_mb": None if rss is None else round(rss, 1)}
    if device.type == "cuda":
        peak["gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak
