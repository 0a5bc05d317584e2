"""``register``: the whole registration of one pair, in physical space, as a composition of named stages.

read -> plan -> start (affine) -> working pair -> network -> instance optimisation -> outputs ->
metrics -> (inverse) -> report -> write; each stage is a function of :mod:`.stages`, timed
under its name in ``report["timings_s"]`` (``total``: all of them; ``write``: writing the output folder
afterwards, which ``total`` leaves out). Conventions: :mod:`SHMoAReg.conventions`.

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
import os
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import SimpleITK as sitk
import torch

from .devices import resolve_device
from ..evaluate.experts import utilisation
from .memory import out_of_memory_as_error
from ..io.outputs import OutputFolder
from .progress import Progress
from . import stages
from .report import build_report
from .result import RegistrationResult

__all__ = ["register"]

ImageLike = str | os.PathLike | sitk.Image


class StageClock:
    """Wall time of each named stage (``with clock("affine"): ...``) and of the whole run."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._start = time.perf_counter()

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        stamp = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - stamp

    def finish(self) -> dict[str, float]:
        self.timings["total"] = time.perf_counter() - self._start
        return self.timings


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
             network_passes: int | None = None, network_flips: int | None = None,
             progress: Callable[[str, float, str], None] | None = None,
             cancel: Callable[[], bool] | None = None) -> RegistrationResult:
    """Register ``moving`` to ``fixed``; write the outputs to ``output_dir`` when given.

    Images and label maps are paths (any SimpleITK format or a DICOM folder) or
    SimpleITK images; landmarks are files or ``(N, 3)`` LPS-mm arrays. ``weights``: ``"auto"`` (default)
    uses the preset's shipped weights when they exist, ``None`` or ``"none"`` runs instance optimisation
    alone, else a shipped name or a ``.pt`` file. The network works on the grid its weights were trained
    at; instance optimisation refines on the preset's (or ``spacing``) grid. ``iterations`` of instance
    optimisation default to the preset's: ``network_iterations`` after the network, else ``iterations``
    (0 = network only). ``network_passes``: the network is applied up to this many times (default: the preset's),
    each pass registering the moving image warped so far and kept only when it improves the similarity;
    ``network_flips`` (1, 2, 4 or 8; default the preset's: 1 before instance optimisation, 4 where the network's
    field is the result, ``iterations=0``) averages each pass over mirrored copies of the pair.
    ``fixed_mask`` / ``moving_mask`` (on their image's grid; non-zero = excluded from the
    similarity) need iterations > 0. ``inverse`` adds ``inverse_transform`` (moving -> fixed;
    exact from the velocity when ``diffeomorphic``, else fixed-point iteration).
    Raises :class:`InputError` for unusable inputs (before anything is written) and
    :class:`RegistrationCancelled` when ``cancel()`` turns true; outputs are written
    all at once at the end, so a failed or cancelled run leaves ``output_dir`` as it was.
    """
    clock = StageClock()
    report_progress = progress if isinstance(progress, Progress) else Progress(progress)
    cancelled = cancel or (lambda: False)
    stages.check_options(preset, iterations, spacing, network_passes, network_flips)
    folder = OutputFolder(output_dir, overwrite) if output_dir is not None else None
    torch_device = resolve_device(device)
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)

    with clock("read"):
        report_progress("read", 0.0, "reading images")
        inputs = stages.read_inputs(fixed, moving, fixed_labels=fixed_labels, moving_labels=moving_labels,
                                    fixed_mask=fixed_mask, moving_mask=moving_mask, fixed_series=fixed_series,
                                    moving_series=moving_series)
        plan = stages.plan_run(inputs, preset=preset, weights=weights, iterations=iterations, affine=affine,
                               spacing=spacing, similarity=similarity, diffeomorphic=diffeomorphic,
                               device=torch_device, progress=report_progress, network_passes=network_passes,
                               network_flips=network_flips)
        stages.read_landmark_pair(inputs, fixed_landmarks, moving_landmarks)
    with clock("affine"):
        start = stages.choose_start(inputs, plan, seed=seed, progress=report_progress, cancelled=cancelled) \
            if affine else stages.Start()
    with clock("resample"):
        pair = stages.working_pair(inputs, plan, start, report_progress)
    stages.check_cancel(cancelled)
    with clock("network"):
        network = stages.run_network(inputs, plan, start, report_progress)
    network_output = network.output if network is not None else None
    with clock("optimise"):
        deformation = stages.optimise(inputs, plan, start, pair, network_output, label_weight=label_weight,
                                      diffeomorphic=diffeomorphic, progress=report_progress, cancelled=cancelled)
    stages.check_cancel(cancelled)
    with clock("outputs"):
        outputs = stages.make_outputs(inputs, plan, start, deformation, network, report_progress)
    stages.check_cancel(cancelled)
    with clock("metrics"):
        metrics = stages.measure(inputs, outputs, report_progress)
    inversion = None
    with clock("inverse"):
        if inverse:
            inversion = stages.invert(inputs, outputs, deformation, report_progress)
            stages.check_cancel(cancelled)
    timings = clock.finish()

    options = {"affine": affine, "diffeomorphic": diffeomorphic, "label_weight": label_weight, "seed": seed,
               "weights_requested": None if weights is None else str(weights), "device_requested": device,
               "fixed_mask": fixed_mask, "moving_mask": moving_mask}
    report = build_report(plan, start, pair, deformation, metrics, timings, options, inversion,
                          velocity_written=outputs.velocity is not None, network=network)
    result = RegistrationResult(
        outputs.transform, outputs.warped, outputs.displacement, outputs.jacobian, report, outputs.warped_labels,
        outputs.expert_maps,
        utilisation(network_output, plan.model.config.kernel_sizes) if outputs.expert_maps else None,
        velocity=outputs.velocity, inverse_transform=inversion.transform if inversion is not None else None)
    if folder is not None:
        stages.check_cancel(cancelled)
        result.output_dir = folder.write(result, l2r_displacement, workers=torch.get_num_threads())
    writing = f", then {report['timings_s']['write']:.1f} s to write the results" if folder is not None else ""
    report_progress("done", 1.0, f"finished in {timings['total']:.1f} s{writing}")
    return result
