"""The ``shmoareg`` command line. ``shmoareg COMMAND --help`` documents each command.

Exit codes: 0 success, 2 unusable input (a one-line message on stderr, nothing
written), 130 cancelled (Ctrl-C / SIGTERM; nothing written), 1 unexpected error.
"""
from __future__ import annotations

import argparse
import importlib
import json
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import InputError, RegistrationCancelled
from .progress import CancelFlag, Progress, json_lines_sink, tqdm_sink

__all__ = ["main", "build_parser"]

# Modules that add their own sub-commands with ``add_parser(subparsers)`` (each sets ``func``).
PLUGIN_COMMANDS = ["SHMoAReg.benchmark.cli", "SHMoAReg.train", "SHMoAReg.toolkit_cli"]


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    parser.add_argument("--json-progress", action="store_true",
                        help='print one JSON object per line: {"stage", "progress" (0..1), "message"}')
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that holds results")


def _add_register(subparsers) -> None:
    p = subparsers.add_parser("register", help="register a moving image to a fixed image",
                              description="Writes warped.nii.gz, transform.h5 (fixed->moving, LPS mm), displacement.nii.gz, "
                                          "jacobian.nii.gz, report.json (+ warped_labels.nii.gz, experts/) into --output-dir.")
    p.add_argument("--fixed", required=True, help="fixed image: any SimpleITK format or a DICOM folder")
    p.add_argument("--moving", required=True, help="moving image")
    p.add_argument("--output-dir", "-o", required=True)
    p.add_argument("--fixed-labels", help="label map on the fixed grid (for Dice/HD95)")
    p.add_argument("--moving-labels", help="label map on the moving grid (warped to warped_labels.nii.gz)")
    p.add_argument("--fixed-landmarks", help="CSV (LPS mm), .fcsv or .mrk.json")
    p.add_argument("--moving-landmarks", help="corresponding moving landmarks (same count and order)")
    p.add_argument("--fixed-series", help="DICOM series UID when the fixed folder holds several")
    p.add_argument("--moving-series", help="DICOM series UID when the moving folder holds several")
    p.add_argument("--weights", help="shipped weights name (see `shmoareg info`) or a .pt file; none = instance optimisation only")
    p.add_argument("--iterations", type=int, help="instance-optimisation iterations (default: the preset's; 0 = network only)")
    p.add_argument("--affine", dest="affine", action="store_true", default=True, help="affine pre-alignment (default)")
    p.add_argument("--no-affine", dest="affine", action="store_false", help="skip the affine pre-alignment")
    p.add_argument("--diffeomorphic", action="store_true", help="stationary velocity field + scaling and squaring")
    p.add_argument("--preset", default="abdomen-ct", help="abdomen-ct, brain-mri, mr-ct or generic")
    p.add_argument("--spacing", type=float, help="working-grid spacing in mm (default: the preset's)")
    p.add_argument("--similarity", choices=["lncc", "mind"], help="override the preset's similarity")
    p.add_argument("--label-weight", type=float, default=0.0,
                   help="weight of a Dice term on the labels during optimisation (default 0: labels only evaluate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--l2r-displacement", action="store_true",
                   help="also write displacement_l2r_voxels.nii.gz (Learn2Reg: voxels of the fixed grid, fixed->moving)")
    _add_common(p)
    p.set_defaults(func=_run_register)


def _add_evaluate(subparsers) -> None:
    p = subparsers.add_parser("evaluate", help="metrics of an existing transform on label maps / landmarks")
    p.add_argument("--transform", required=True, help="ITK transform (fixed->moving), e.g. a register transform.h5")
    p.add_argument("--fixed", required=True, help="fixed image (defines the grid)")
    p.add_argument("--fixed-labels")
    p.add_argument("--moving-labels")
    p.add_argument("--fixed-landmarks")
    p.add_argument("--moving-landmarks")
    p.add_argument("--output", "-o", help="write the metrics as JSON here (default: print)")
    p.set_defaults(func=_run_evaluate)


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="register a generated phantom with a known deformation and report accuracy")
    p.add_argument("--output-dir", "-o", default="shmoareg-demo")
    p.add_argument("--iterations", type=int)
    _add_common(p)
    p.set_defaults(func=_run_demo)


def _add_info(subparsers) -> None:
    p = subparsers.add_parser("info", help="versions, devices, presets and available weights")
    p.set_defaults(func=_run_info)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shmoareg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"shmoareg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in (_add_register, _add_evaluate, _add_demo, _add_info):
        add(subparsers)
    for module_name in PLUGIN_COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                continue
            raise
        module.add_parser(subparsers)
    return parser


def _progress(args) -> Progress:
    if getattr(args, "json_progress", False):
        return Progress(json_lines_sink())
    return Progress(tqdm_sink() if sys.stderr.isatty() else None)


def _run_register(args, cancel: CancelFlag) -> int:
    from .pipeline import register

    result = register(args.fixed, args.moving, args.output_dir, fixed_labels=args.fixed_labels,
                      moving_labels=args.moving_labels, fixed_landmarks=args.fixed_landmarks,
                      moving_landmarks=args.moving_landmarks, weights=args.weights, iterations=args.iterations,
                      affine=args.affine, diffeomorphic=args.diffeomorphic, device=args.device, preset=args.preset,
                      spacing=args.spacing, similarity=args.similarity, label_weight=args.label_weight, seed=args.seed,
                      overwrite=args.overwrite, l2r_displacement=args.l2r_displacement, fixed_series=args.fixed_series,
                      moving_series=args.moving_series, progress=_progress(args), cancel=cancel)
    _finish(args, result.output_dir, _summary(result.report))
    return 0


def _summary(report: dict) -> str:
    m = report["metrics"]
    parts = []
    if "dice_mean" in m:
        parts.append(f"Dice {m['dice_mean_before']:.3f} -> {m['dice_mean']:.3f}")
    if "tre_mm" in m:
        parts.append(f"TRE {m['tre_mm_before']:.2f} -> {m['tre_mm']:.2f} mm")
    parts.append(f"SDlogJ {m['sdlogj']:.3f}, folding {100 * m['folding_fraction']:.3f} %")
    parts.append(f"{report['timings_s']['total']:.1f} s on {report['device']}")
    return "; ".join(parts)


def _finish(args, output_dir, message: str) -> None:
    if getattr(args, "json_progress", False):
        print(json.dumps({"stage": "done", "progress": 1.0, "message": message, "output_dir": str(output_dir)}), flush=True)
    else:
        print(f"{message}\nresults in {output_dir}")


def _run_evaluate(args, cancel: CancelFlag) -> int:
    from .evaluate_command import evaluate

    metrics = evaluate(args.transform, args.fixed, args.fixed_labels, args.moving_labels, args.fixed_landmarks,
                       args.moving_landmarks)
    text = json.dumps(metrics, indent=2)
    if args.output:
        Path(args.output).write_text(text)
    print(text)
    return 0


def _run_demo(args, cancel: CancelFlag) -> int:
    from .demo import run_demo

    summary = run_demo(Path(args.output_dir), args.device, args.iterations, _progress(args), args.overwrite)
    message = (f"demo: Dice {summary['dice_before']:.3f} -> {summary['dice_after']:.3f}; displacement error "
               f"{summary['displacement_error_mm']:.2f} mm (true displacement {summary['true_displacement_mm']:.2f} mm); "
               f"folding {100 * summary['folding_fraction']:.3f} %; {summary['seconds']:.1f} s; inputs in "
               f"{summary['inputs_dir']}")
    _finish(args, summary["output_dir"], message)
    return 0


def _run_info(args, cancel: CancelFlag) -> int:
    import SimpleITK as sitk
    import torch

    from .devices import describe_devices
    from .presets import PRESETS
    from .weights import available_weights

    print(f"shmoareg {__version__}; python {sys.version.split()[0]}; torch {torch.__version__}; "
          f"SimpleITK {sitk.Version_VersionString()}")
    print("devices: " + ", ".join(describe_devices()))
    for preset in PRESETS.values():
        print(f"preset {preset.name}: {preset.description}")
    weights = available_weights()
    print("weights: " + (", ".join(f"{k} ({v})" for k, v in weights.items()) if weights else "none shipped"))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cancel = CancelFlag()

    def on_signal(signum, frame) -> None:  # noqa: ARG001
        cancel.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return args.func(args, cancel)
    except InputError as error:
        return _fail(args, f"error: {error}", 2)
    except (RegistrationCancelled, KeyboardInterrupt):
        return _fail(args, "cancelled: nothing was written", 130)
    except MemoryError:
        return _fail(args, "error: out of memory; use a coarser --spacing, crop the images or another --device", 2)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _fail(args, message: str, code: int) -> int:
    if getattr(args, "json_progress", False):
        print(json.dumps({"stage": "error" if code != 130 else "cancelled", "progress": 1.0, "message": message}),
              flush=True)
    print(message, file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
