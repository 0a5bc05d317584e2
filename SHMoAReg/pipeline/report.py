"""``report.json``: everything a run decided and measured, assembled in one place."""
from __future__ import annotations

import platform

import SimpleITK as sitk
import torch

from .. import __version__
from .memory import peak_host_rss_mb
from .stages import Deformation, Plan, Start, WorkingPair

__all__ = ["build_report", "peak_memory_mb"]


def peak_memory_mb(device: torch.device) -> dict:
    rss = peak_host_rss_mb()
    peak = {"host_rss_mb": None if rss is None else round(rss, 1)}
    if device.type == "cuda":
        peak["gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    return peak


def _fraction(mask: torch.Tensor | None) -> float | None:
    return None if mask is None else round(float((mask > 0).float().mean()), 6)


def _describe(value) -> str | None:
    return None if value is None else ("image" if isinstance(value, sitk.Image) else str(value))


def build_report(plan: Plan, start: Start, pair: WorkingPair, deformation: Deformation, metrics: dict,
                 timings: dict[str, float], options: dict, inversion=None, velocity_written: bool = False,
                 network=None) -> dict:
    """The report of one run. ``options``: what the caller asked for (``affine``, ``diffeomorphic``,
    ``label_weight``, ``seed``, ``weights_requested``, ``device_requested``, ``fixed_mask``, ``moving_mask``);
    ``network``: the :class:`SHMoAReg.pipeline.stages.NetworkRun` of the network stage, if it ran."""
    info, config = plan.weights_info, deformation.config
    report = {
        "engine_version": __version__, "metrics": metrics, "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "device": str(plan.device), "peak_memory_mb": peak_memory_mb(plan.device),
        "weights": None if info is None else {"name": info.name, "sha256": info.sha256, "path": info.path,
                                              "preset": info.preset},
        "preset": {"name": plan.preset, "chosen_automatically": plan.preset_reason is not None,
                   "reason": plan.preset_reason},
        "start": start.choice, "deformable_check": deformation.check,
        "instance_optimisation": None if not deformation.levels else [
            {**level, "spacing_mm": round(pair.grid.GetSpacing()[0] * level["scale"], 3)} for level in deformation.levels],
        "working_grid": pair.describe(),
        "network_grid": None if plan.network_grid is None else {"size": list(plan.network_grid.GetSize()),
                                                                "spacing_mm": plan.network_grid.GetSpacing()[0]},
        "network": None if network is None else network.describe(),
        "parameters": {"preset": plan.preset, "iterations": plan.iterations, "affine": options["affine"],
                       "diffeomorphic": options["diffeomorphic"], "similarity": config.similarity.value,
                       "smoothness_weight": config.smoothness_weight, "learning_rate": config.learning_rate,
                       "label_weight": options["label_weight"], "seed": options["seed"], "weights": plan.weights,
                       "network_passes": plan.network_passes if plan.model is not None else None,
                       "network_flips": plan.network_flips if plan.model is not None else None,
                       "weights_requested": options["weights_requested"],
                       "device_requested": options["device_requested"],
                       "masks": {"fixed": _describe(options["fixed_mask"]), "moving": _describe(options["moving_mask"]),
                                 "fixed_excluded_fraction": _fraction(pair.fixed_mask),
                                 "moving_excluded_fraction": _fraction(pair.moving_mask)}},
        "platform": {"python": platform.python_version(), "torch": torch.__version__,
                     "simpleitk": sitk.Version_VersionString(), "threads": torch.get_num_threads()},
        "conventions": "transform.h5 maps fixed-space LPS mm points to moving space (ITK resampling direction)",
    }
    if velocity_written:
        report["velocity"] = {"file": "velocity.nii.gz", "integration_steps": deformation.integration_steps,
                              "content": "stationary velocity v, LPS mm on the working grid; the deformable part "
                                         "of transform.h5 is exp(v) (scaling and squaring)"}
    if inversion is not None:
        report["inverse"] = {"file": "inverse_transform.h5", "maps": "moving-space LPS mm points to fixed space",
                             "method": inversion.method, "iterations": inversion.iterations,
                             "residual_mm": inversion.residual_mm}
    return report
