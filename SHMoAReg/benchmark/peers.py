"""One function per method: register a pair and return the fixed->moving displacement.

Every peer takes the fixed and moving image paths and :class:`PeerOptions`, and
returns ``u`` of ``T(x) = x + u(x)`` (the map from a fixed point to the moving
point, the ITK resampling direction of :mod:`SHMoAReg.conventions`) as a
SimpleITK vector image: 3 x float64, LPS millimetres, on the fixed image's grid,
affine part included. Labels are never given to a method; the runner warps and
scores the moving labels with the same code for every method.

Each library's own output is already in that convention: elastix/transformix's
deformation field and ANTs' composed forward warp are fixed->moving LPS-mm
fields, SimpleITK's demons field is the displacement of a
``DisplacementFieldTransform``, and ConvexAdam's field is in fixed voxels along
the array axes (``warped[p] = moving[p + u[p]]``), converted with
:func:`SHMoAReg.conventions.voxel_to_mm`.

Run as a script (``python peers.py JOB.json``), this file is the benchmark's
worker: the runner starts one process per method and pair so that time and peak
memory belong to that run alone. The worker imports only the method's own
libraries, then times the peer call (reading the inputs, registering and
computing the dense field).
"""
from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk

from SHMoAReg.transforms.field_transform import field_image, transform_to_displacement

__all__ = ["PeerOptions", "Peer", "PeerUnavailable", "PEERS", "METHODS", "shmoareg_weights"]


class PeerUnavailable(RuntimeError):
    """The method cannot run here (package not installed, no engine, no weights)."""


@dataclass(frozen=True)
class PeerOptions:
    """Settings shared by all methods; a peer ignores those it has no use for."""

    threads: int = 1
    seed: int = 0
    device: str = "cpu"  # auto | cpu | cuda: only the torch methods use it
    preset: str = "generic"  # SHMoAReg preset of the pair
    weights: str | None = None  # SHMoAReg weights for "shmoareg" (default: the preset's shipped weights)
    workdir: str = "."  # scratch folder of this run


@dataclass(frozen=True)
class Peer:
    """A method: ``prepare`` imports and checks what it needs (untimed), ``run`` registers (timed)."""

    name: str
    run: Callable[[Path, Path, PeerOptions], sitk.Image]
    prepare: Callable[[PeerOptions], None]
    description: str
    uses_torch: bool = False  # runs on options.device; the other methods run on the CPU


def _require(*modules: str) -> Callable[[PeerOptions], None]:
    def prepare(options: PeerOptions) -> None:
        for module in modules:
            try:
                importlib.import_module(module)
            except ImportError as error:
                raise PeerUnavailable(f"{module} is not installed ({error}); pip install -e .[bench]") from None
    return prepare


# --- elastix ---------------------------------------------------------------------------

def run_elastix(fixed: Path, moving: Path, options: PeerOptions) -> sitk.Image:
    """itk-elastix with its default "affine" then "bspline" parameter maps (Mattes MI, 4 levels, ASGD)."""
    import itk

    fixed_image = itk.imread(str(fixed), itk.F)
    moving_image = itk.imread(str(moving), itk.F)
    parameters = itk.ParameterObject.New()
    for name in ("affine", "bspline"):
        parameters.AddParameterMap(parameters.GetDefaultParameterMap(name))
    method = itk.ElastixRegistrationMethod.New(fixed_image, moving_image)
    method.SetParameterObject(parameters)
    method.SetLogToConsole(False)  # threads: ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS (SetNumberOfThreads crashes in 0.25.4)
    method.Update()
    # transformix evaluates u(x) = T(x) - x on the fixed grid (stored in the transform parameters)
    field = itk.transformix_deformation_field(moving_image, method.GetTransformParameterObject())
    grid = sitk.Image([int(n) for n in itk.size(field)], sitk.sitkUInt8)
    grid.SetOrigin(tuple(float(v) for v in field.GetOrigin()))
    grid.SetSpacing(tuple(float(v) for v in field.GetSpacing()))
    grid.SetDirection(tuple(float(v) for v in itk.array_from_matrix(field.GetDirection()).ravel()))
    return field_image(np.ascontiguousarray(itk.array_from_image(field), dtype=np.float64), grid)


def _prepare_elastix(options: PeerOptions) -> None:
    _require("itk")(options)
    import itk

    try:  # itk loads its modules lazily: load them now, outside the timed call
        itk.ElastixRegistrationMethod, itk.TransformixFilter, itk.ParameterObject, itk.imread
    except AttributeError as error:
        raise PeerUnavailable(f"itk-elastix is not installed ({error}); pip install -e .[bench]") from None


def _library_seed(seed: int) -> int:
    """``seed`` as a positive 31-bit seed for ITK-based peers, which read 0 as "seed from the wall clock"."""
    return seed % (2**31 - 1) + 1


# --- ANTs ------------------------------------------------------------------------------

def run_ants_syn(fixed: Path, moving: Path, options: PeerOptions) -> sitk.Image:
    """antspyx ``registration(type_of_transform="SyN")`` with its defaults (affine + SyN, Mattes MI)."""
    import ants

    # the seed only (set_ants_deterministic would force 1 thread); ANTs reads --random-seed 0 as "seed from the
    # clock", which made every run differ (held-out abdomen 0.530 / 0.533; tiny pair's field error 0.26-0.96x)
    ants.config._random_seed = _library_seed(options.seed)
    fixed_image = ants.image_read(str(fixed))
    moving_image = ants.image_read(str(moving))
    with tempfile.TemporaryDirectory(dir=options.workdir) as scratch:
        result = ants.registration(fixed_image, moving_image, type_of_transform="SyN",
                                   outprefix=os.path.join(scratch, "syn_"))
        # fwdtransforms [warp, affine] warp the moving image onto the fixed one: they map fixed -> moving
        composed = ants.apply_transforms(fixed_image, moving_image, result["fwdtransforms"],
                                         compose=os.path.join(scratch, "composed_"))
        if composed is None:
            raise RuntimeError("antsApplyTransforms did not write the composed displacement field")
        return sitk.ReadImage(composed, sitk.sitkVectorFloat64)


# --- SimpleITK affine + diffeomorphic demons ---------------------------------------------

def _smooth_and_shrink(image: sitk.Image, shrink: int, sigma_mm: float) -> sitk.Image:
    """Gaussian smoothing (sigma in mm) then resampling to ``1/shrink`` of the voxels."""
    smoothed = sitk.SmoothingRecursiveGaussian(image, sigma_mm) if sigma_mm > 0 else image
    size = [max(2, int(round(n / shrink))) for n in image.GetSize()]
    spacing = [(n - 1) * s / (m - 1) for n, s, m in zip(image.GetSize(), image.GetSpacing(), size)]
    return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), spacing,
                         image.GetDirection(), 0.0, image.GetPixelID())


def _sitk_affine(fixed: sitk.Image, moving: sitk.Image, seed: int) -> sitk.Transform:
    """Multi-resolution affine registration, Mattes MI, as in the SimpleITK registration examples."""
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.AffineTransform(3),
                                                sitk.CenteredTransformInitializerFilter.GEOMETRY)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=50)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.05, _library_seed(seed))
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=200,
                                         convergenceMinimumValue=1e-6, convergenceWindowSize=10)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([4, 2, 1])
    method.SetSmoothingSigmasPerLevel([2, 1, 0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    return method.Execute(fixed, moving)


def run_sitk_demons(fixed: Path, moving: Path, options: PeerOptions) -> sitk.Image:
    """SimpleITK affine (Mattes MI) then multi-resolution diffeomorphic demons on histogram-matched images.

    Follows the SimpleITK notebook "Demons Registration" (multiscale_demons): levels
    shrunk 4x and 2x with 8 / 4 mm smoothing, then full resolution; 50 iterations per
    level, displacement smoothing sigma 1.5. Demons needs both images on one grid, so
    the moving image is first resampled onto the fixed grid through the affine ``A``;
    the demons field ``d`` then gives ``T(x) = A(x + d(x))``.
    """
    fixed_image = sitk.ReadImage(str(fixed), sitk.sitkFloat32)
    moving_image = sitk.ReadImage(str(moving), sitk.sitkFloat32)
    affine = _sitk_affine(fixed_image, moving_image, options.seed)
    background = float(np.percentile(sitk.GetArrayViewFromImage(moving_image), 0.5))
    moving_affine = sitk.Resample(moving_image, fixed_image, affine, sitk.sitkLinear, background)
    matched = sitk.HistogramMatching(moving_affine, fixed_image, numberOfHistogramLevels=1024,
                                     numberOfMatchPoints=7, thresholdAtMeanIntensity=True)
    demons = sitk.DiffeomorphicDemonsRegistrationFilter()
    demons.SetNumberOfIterations(50)
    demons.SetSmoothDisplacementField(True)
    demons.SetStandardDeviations(1.5)
    levels = [(4, 8.0), (2, 4.0)]
    pyramid = [(_smooth_and_shrink(fixed_image, s, sigma), _smooth_and_shrink(matched, s, sigma)) for s, sigma in levels]
    pyramid.append((fixed_image, matched))
    field = sitk.Image(pyramid[0][0].GetSize(), sitk.sitkVectorFloat64)
    field.CopyInformation(pyramid[0][0])
    for level_fixed, level_moving in pyramid:
        field = sitk.Resample(field, level_fixed, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        field = demons.Execute(level_fixed, level_moving, field)
    transform = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))])
    return transform_to_displacement(transform, fixed_image)


# --- ConvexAdam --------------------------------------------------------------------------

def _torch_device(requested: str) -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def run_convexadam(fixed: Path, moving: Path, options: PeerOptions) -> sitk.Image:
    """ConvexAdam (pip ``convexadam``): MIND-SSC features, coupled convex optimisation, Adam; its defaults.

    ConvexAdam needs both images on one grid and has no affine stage, so the moving
    image is resampled onto the fixed grid by its header geometry first.
    """
    import torch
    from convexAdam.convex_adam_MIND import convex_adam_pt

    from SHMoAReg.conventions import voxel_to_mm

    torch.set_num_threads(options.threads)
    device = _torch_device(options.device)
    fixed_image = sitk.ReadImage(str(fixed), sitk.sitkFloat32)
    moving_image = sitk.ReadImage(str(moving), sitk.sitkFloat32)
    background = float(sitk.GetArrayViewFromImage(moving_image).min())
    moving_on_fixed = sitk.Resample(moving_image, fixed_image, sitk.Transform(), sitk.sitkLinear, background)
    voxels = convex_adam_pt(sitk.GetArrayFromImage(fixed_image), sitk.GetArrayFromImage(moving_on_fixed),
                            device=torch.device(device))  # (D, H, W, 3), channel c = array axis c
    return field_image(np.ascontiguousarray(voxel_to_mm(voxels.transpose(3, 0, 1, 2), fixed_image), dtype=np.float64),
                       fixed_image)


# --- SHMoAReg ----------------------------------------------------------------------------

def _prepare_shmoareg(options: PeerOptions) -> None:
    try:
        from SHMoAReg import register  # noqa: F401
        from SHMoAReg.pipeline import run  # noqa: F401  (imports torch and the engine outside the timed call)
    except ImportError as error:
        raise PeerUnavailable(f"engine not available: `from SHMoAReg import register` fails ({error})") from None


def shmoareg_weights(options: PeerOptions) -> str:
    """``options.weights``, else the shipped weights of the pair's preset; :class:`PeerUnavailable` when none."""
    from SHMoAReg.preprocess.presets import get_preset
    from SHMoAReg.weights import available_weights

    if options.weights:
        return options.weights
    name = get_preset(options.preset).weights
    if name is None or name not in available_weights():
        raise PeerUnavailable(f"no shipped SHMoAReg weights for preset {options.preset!r} "
                              f"(shipped: {', '.join(available_weights()) or 'none'}); give --weights")
    return name


def _prepare_shmoareg_weights(options: PeerOptions) -> None:
    _prepare_shmoareg(options)
    shmoareg_weights(options)


def _run_engine(fixed: Path, moving: Path, options: PeerOptions, weights: str | None,
                iterations: int | None = None) -> sitk.Image:
    from SHMoAReg import register

    result = register(str(fixed), str(moving), output_dir=None, weights=weights, device=options.device,
                      preset=options.preset, seed=options.seed, iterations=iterations)
    return sitk.Cast(result.displacement, sitk.sitkVectorFloat64)


def run_shmoareg(fixed: Path, moving: Path, options: PeerOptions) -> sitk.Image:
    """SHMoAReg with network weights (:func:`shmoareg_weights`), then the preset's short instance optimisation."""
    return _run_engine(fixed, moving, options, shmoareg_weights(options))


def run_shmoareg_net(fixed: Path, moving: Path, options: PeerOptions) -> sitk.Image:
    """SHMoAReg's network alone (affine pre-alignment + one forward pass, no instance optimisation)."""
    return _run_engine(fixed, moving, options, shmoareg_weights(options), iterations=0)


def run_shmoareg_io(fixed: Path, moving: Path, options: PeerOptions) -> sitk.Image:
    """SHMoAReg without weights: affine pre-alignment + the preset's instance optimisation."""
    return _run_engine(fixed, moving, options, None)


def run_shmoareg_affine(fixed: Path, moving: Path, options: PeerOptions) -> sitk.Image:
    """SHMoAReg's affine pre-alignment alone (the starting point of every other SHMoAReg method)."""
    return _run_engine(fixed, moving, options, None, iterations=0)


PEERS: dict[str, Peer] = {peer.name: peer for peer in (
    Peer("shmoareg", run_shmoareg, _prepare_shmoareg_weights, "SHMoAReg, network + instance optimisation", True),
    Peer("shmoareg-net", run_shmoareg_net, _prepare_shmoareg_weights, "SHMoAReg, network only (no instance "
         "optimisation)", True),
    Peer("shmoareg-io", run_shmoareg_io, _prepare_shmoareg, "SHMoAReg, instance optimisation only", True),
    Peer("shmoareg-affine", run_shmoareg_affine, _prepare_shmoareg, "SHMoAReg, affine pre-alignment only", True),
    Peer("elastix", run_elastix, _prepare_elastix,
         "itk-elastix, default affine + B-spline maps"),
    Peer("ants-syn", run_ants_syn, _require("ants"), "antspyx SyN, default settings"),
    Peer("sitk-demons", run_sitk_demons, _require("SimpleITK"), "SimpleITK affine + diffeomorphic demons"),
    Peer("convexadam", run_convexadam, _require("torch", "convexAdam.convex_adam_MIND", "SHMoAReg.conventions"),
         "ConvexAdam, MIND + convex optimisation + Adam", True),
)}
METHODS = tuple(PEERS)


# --- worker ------------------------------------------------------------------------------

def _same_grid(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize() == b.GetSize() and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=1e-3)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=1e-5)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=1e-5))


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM); ``ru_maxrss`` elsewhere.

    Not the parent's ``wait4`` figure: a child started by vfork+exec inherits the
    parent's high-water mark into its ``ru_maxrss`` on Linux.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = float(line.split()[1]) / 1024.0
                break
        else:
            raise OSError("no VmHWM")
    except OSError:
        own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return max(own, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0)


def _peak_gpu_mb() -> float | None:
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.max_memory_allocated() / 2**20


def run_job(job: dict) -> dict:
    """Run one method on one pair as described by ``job``; write the field; return the result record."""
    out = Path(job["output_dir"])
    options = PeerOptions(threads=int(job["threads"]), seed=int(job["seed"]), device=job["device"],
                          preset=job["preset"], weights=job.get("weights"), workdir=str(out))
    peer = PEERS[job["method"]]
    record: dict = {"method": peer.name, "status": "failed", "error": "", "device": "cpu"}
    try:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(options.threads)
        peer.prepare(options)
        if peer.uses_torch:
            record["device"] = _torch_device(options.device)
        reference = sitk.ReadImage(job["fixed"])
        wall, cpu = time.perf_counter(), _cpu_seconds()
        field = peer.run(Path(job["fixed"]), Path(job["moving"]), options)
        record["time_s"] = time.perf_counter() - wall
        record["cpu_s"] = _cpu_seconds() - cpu
        record["peak_rss_mb"] = _peak_rss_mb()
        record["peak_gpu_mb"] = _peak_gpu_mb()
        if field.GetNumberOfComponentsPerPixel() != 3:
            raise RuntimeError(f"expected a 3-component displacement, got {field.GetNumberOfComponentsPerPixel()}")
        if not _same_grid(field, reference):
            record["note"] = "displacement resampled onto the fixed grid"
            field = sitk.Resample(field, reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
        if not np.isfinite(sitk.GetArrayViewFromImage(field)).all():
            raise RuntimeError("the displacement field has non-finite values")
        sitk.WriteImage(sitk.Cast(field, sitk.sitkVectorFloat32), str(out / "displacement.nii.gz"))
        record["status"] = "ok"
    except PeerUnavailable as error:
        record.update(status="unavailable", error=str(error))
    except Exception as error:  # a failing peer is reported, never dropped
        record["error"] = f"{type(error).__name__}: {error}".replace("\n", " ")[:500]
        traceback.print_exc()
    return record


def _worker_main(argv: list[str]) -> int:
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    record = run_job(job)
    (Path(job["output_dir"]) / "result.json").write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
