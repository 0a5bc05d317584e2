"""The ``shmoareg`` command line. ``shmoareg COMMAND --help`` documents each command.

Exit codes: 0 success, 2 unusable input, weights, output folder or not enough memory
(a one-line message on stderr, nothing written), 130 cancelled (Ctrl-C / SIGTERM; nothing
written), 1 an operating-system error or a bug (one line; the traceback with SHMOAREG_DEBUG=1),
3 (``batch`` only) some pairs failed: the others finished, the failed ones are listed at the end.
docs/reliability.md lists the messages.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import signal
import sys
import threading
import traceback
import warnings
from pathlib import Path

from .. import __version__
from ..errors import InputError, RegistrationCancelled
from ..pipeline.progress import CancelFlag, Progress, json_lines_sink, tqdm_sink
from ..preprocess.presets import PRESETS

__all__ = ["main", "build_parser", "add_common_options", "add_register_options", "register_kwargs",
           "EXIT_PAIRS_FAILED"]

# Modules that add their own sub-commands with ``add_parser(subparsers)`` (each sets ``func``).
PLUGIN_COMMANDS = ["SHMoAReg.benchmark.cli", "SHMoAReg.train", "SHMoAReg.cli.toolkit_cli", "SHMoAReg.cohort.cli"]

# Seconds a cancelled run may take to stop by itself before the process is ended (SHMOAREG_CANCEL_GRACE_S);
# a command may set another default with ``set_defaults(cancel_grace_s=...)``.
CANCEL_GRACE_S = 5.0

# ``shmoareg batch``: every pair was tried, some failed (listed at the end and in results.csv).
EXIT_PAIRS_FAILED = 3


def add_common_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--json-progress`` and ``--overwrite`` (register, demo, batch)."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu or cuda")
    parser.add_argument("--json-progress", action="store_true",
                        help='print one JSON object per line: {"stage", "progress" (0..1), "message"}')
    parser.add_argument("--overwrite", action="store_true", help="replace an output folder that holds results")


def add_register_options(parser: argparse.ArgumentParser) -> None:
    """The options of one registration that are neither its inputs nor its output (``register`` and
    ``batch`` share them; :func:`register_kwargs` maps them to :func:`SHMoAReg.pipeline.register`)."""
    parser.add_argument("--weights", default="auto",
                        help="auto (default): the preset's shipped weights when they exist; none: instance "
                             "optimisation only; or a shipped weights name (see `shmoareg info`) or a .pt file")
    parser.add_argument("--iterations", type=int,
                        help="instance-optimisation iterations (default: the preset's; after the network 25, of which "
                             "the finest scale gets up to 15 and the coarse one the rest; 0 = network only)")
    parser.add_argument("--network-passes", type=int, metavar="N",
                        help="apply the network up to N times, each pass on the moving image warped so far, kept "
                             "only when it improves the similarity (default: the preset's, 3)")
    parser.add_argument("--network-flips", type=int, choices=[1, 2, 4, 8], metavar="{1,2,4,8}",
                        help="average each network pass over this many mirrored copies of the pair (default: 4 with "
                             "--iterations 0, where the network's field is the result; else 1; see "
                             "docs/training.md)")
    parser.add_argument("--affine", dest="affine", action="store_true", default=True,
                        help="affine pre-alignment (default)")
    parser.add_argument("--no-affine", dest="affine", action="store_false", help="skip the affine pre-alignment")
    parser.add_argument("--diffeomorphic", action="store_true", help="stationary velocity field + scaling and squaring")
    parser.add_argument("--preset", default="auto",
                        help=f"auto (default: chosen from the images, reported) or one of {', '.join(PRESETS)} "
                             f"(see the README)")
    parser.add_argument("--spacing", type=float, help="working-grid spacing in mm (default: the preset's, made coarser on a large image until "
                        "its content + 24 mm holds the preset's voxel budget; see the README)")
    parser.add_argument("--similarity", choices=["lncc", "mind"], help="override the preset's similarity")
    parser.add_argument("--label-weight", type=float, default=0.0,
                        help="weight of a Dice term on the labels during optimisation (default 0: labels only "
                             "evaluate)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--l2r-displacement", action="store_true",
                        help="also write displacement_l2r_voxels.nii.gz (Learn2Reg: voxels of the fixed grid, "
                             "fixed->moving)")
    parser.add_argument("--fixed-mask",
                        help="exclusion mask on the fixed grid: non-zero voxels (a lesion, metal, ...) are left out "
                             "of the similarity, the field there follows the regulariser (note: ANTs/elastix masks "
                             "mean the opposite, the region to use)")
    parser.add_argument("--moving-mask",
                        help="exclusion mask on the moving grid (non-zero = left out of the similarity)")
    parser.add_argument("--inverse", action="store_true",
                        help="also write inverse_transform.h5 (moving->fixed; exact from the velocity with "
                             "--diffeomorphic, else fixed-point iteration; residual in report.json)")


def register_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of :func:`SHMoAReg.pipeline.register` that the options of
    :func:`add_register_options` and :func:`add_common_options` give (all but the images, labels,
    landmarks, DICOM series, output folder, progress and cancel)."""
    return dict(weights=args.weights, iterations=args.iterations, affine=args.affine,
                diffeomorphic=args.diffeomorphic, device=args.device, preset=args.preset, spacing=args.spacing,
                similarity=args.similarity, label_weight=args.label_weight, seed=args.seed,
                overwrite=args.overwrite, l2r_displacement=args.l2r_displacement, fixed_mask=args.fixed_mask,
                moving_mask=args.moving_mask, inverse=args.inverse, network_passes=args.network_passes,
                network_flips=args.network_flips)


def _add_register(subparsers) -> None:
    p = subparsers.add_parser("register", help="register a moving image to a fixed image",
                              description="Writes warped.nii.gz, transform.h5 (fixed->moving, LPS mm), displacement.nii.gz, "
                                          "jacobian.nii.gz, report.json (+ warped_labels.nii.gz, experts/, velocity.nii.gz with "
                                          "--diffeomorphic, inverse_transform.h5 with --inverse, qa.png with --qa) into "
                                          "--output-dir.")
    p.add_argument("--fixed", required=True, help="fixed image: any SimpleITK format or a DICOM folder")
    p.add_argument("--moving", required=True, help="moving image")
    p.add_argument("--output-dir", "-o", required=True)
    p.add_argument("--fixed-labels", help="label map on the fixed grid (for Dice/HD95)")
    p.add_argument("--moving-labels", help="label map on the moving grid (warped to warped_labels.nii.gz)")
    p.add_argument("--fixed-landmarks", help="CSV (LPS mm), .fcsv or .mrk.json")
    p.add_argument("--moving-landmarks", help="corresponding moving landmarks (same count and order)")
    p.add_argument("--fixed-series", help="DICOM series UID when the fixed folder holds several")
    p.add_argument("--moving-series", help="DICOM series UID when the moving folder holds several")
    add_register_options(p)
    p.add_argument("--qa", action="store_true",
                   help="also write qa.png: checkerboard, |fixed - warped| and Jacobian determinant on three "
                        "orthogonal slices through the centre")
    add_common_options(p)
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
    p = subparsers.add_parser("demo", help="register a real abdominal CT (Resources/Demo) with a known deformation of "
                                           "itself and report accuracy")
    p.add_argument("--phantom", action="store_true", help="use a generated phantom instead of the shipped CT")
    p.add_argument("--output-dir", "-o", default="shmoareg-demo")
    p.add_argument("--iterations", type=int)
    add_common_options(p)
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
    from ..pipeline import register

    result = register(args.fixed, args.moving, args.output_dir, fixed_labels=args.fixed_labels,
                      moving_labels=args.moving_labels, fixed_landmarks=args.fixed_landmarks,
                      moving_landmarks=args.moving_landmarks, fixed_series=args.fixed_series,
                      moving_series=args.moving_series, **register_kwargs(args), progress=_progress(args),
                      cancel=cancel)
    if args.qa:
        _write_qa(args, result)
    _finish(args, result.output_dir, _summary(result.report))
    return 0


def _write_qa(args, result) -> None:
    """qa.png beside the results (:mod:`SHMoAReg.evaluate.qa`); the fixed image is read again as ``register`` read it.
    A picture that cannot be made is a warning: the registration's results are complete and stay."""
    from ..io.image_io import read_image
    from ..evaluate.qa import QA_FILE, write_qa_picture

    try:
        fixed = read_image(args.fixed, "fixed image", args.fixed_series)
        write_qa_picture(fixed, result.warped, result.jacobian, Path(result.output_dir) / QA_FILE)
    except (InputError, OSError, ValueError, RuntimeError) as error:
        logging.getLogger("SHMoAReg").warning("no QA picture: %s", str(error).strip().splitlines()[0])


def _summary(report: dict) -> str:
    m = report["metrics"]
    parts = []
    if "dice_mean" in m:
        parts.append(f"Dice {m['dice_mean_before']:.3f} -> {m['dice_mean']:.3f}")
    if "tre_mm" in m:
        parts.append(f"TRE {m['tre_mm_before']:.2f} -> {m['tre_mm']:.2f} mm")
    parts.append(f"SDlogJ {m['sdlogj']:.3f}, folding {100 * m['folding_fraction']:.3f} %")
    timings = report["timings_s"]
    writing = f" + {timings['write']:.1f} s writing" if "write" in timings else ""
    parts.append(f"{timings['total']:.1f} s{writing} on {report['device']}")
    preset = report.get("preset") or {}
    if preset.get("chosen_automatically"):
        parts.append(f"auto {preset['reason'].rstrip('.')}")
    if report.get("start"):
        parts.append(f"start: {report['start']['kept']}")
    weights = report.get("weights")
    passes = (report.get("network") or {}).get("passes", 1)
    parts.append(f"weights {weights['name']} (sha256 {weights['sha256'][:12]}, {passes} pass{'es' if passes > 1 else ''}) "
                 f"+ {report['parameters']['iterations']} iterations" if weights
                 else f"no weights, {report['parameters']['iterations']} iterations")
    check = report.get("deformable_check") or {}
    warning = f"\nwarning: {check['reason']}" if check.get("kept") == "start" else ""
    return "; ".join(parts) + warning


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

    summary = run_demo(Path(args.output_dir), args.device, args.iterations, _progress(args), args.overwrite,
                       phantom=args.phantom)
    message = (f"demo: Dice {summary['dice_before']:.3f} -> {summary['dice_after']:.3f}; displacement error "
               f"{summary['displacement_error_mm']:.2f} mm (true displacement {summary['true_displacement_mm']:.2f} mm); "
               f"folding {100 * summary['folding_fraction']:.3f} %; {summary['seconds']:.1f} s; inputs in "
               f"{summary['inputs_dir']}")
    _finish(args, summary["output_dir"], message)
    return 0


def _run_info(args, cancel: CancelFlag) -> int:
    import SimpleITK as sitk
    import torch

    from ..pipeline.devices import describe_devices
    from ..weights import available_weights

    print(f"shmoareg {__version__}; python {sys.version.split()[0]}; torch {torch.__version__}; "
          f"SimpleITK {sitk.Version_VersionString()}")
    print("devices: " + ", ".join(describe_devices()))
    for preset in PRESETS.values():
        print(f"preset {preset.name}: {preset.description}")
    weights = available_weights()
    print("weights: " + (", ".join(f"{k} ({v})" for k, v in weights.items()) if weights else "none shipped"))
    return 0


def _grace_seconds(default: float = CANCEL_GRACE_S) -> float:
    """``$SHMOAREG_CANCEL_GRACE_S`` when set to a number, else ``default`` (the command's)."""
    try:
        return max(float(os.environ.get("SHMOAREG_CANCEL_GRACE_S", default)), 0.0)
    except ValueError:
        return default


def _install_signal_handlers(args, cancel: CancelFlag, timers: list[threading.Timer]) -> dict:
    """SIGINT/SIGTERM: the first asks the run to stop (it checks between steps); a second one, or no stop
    within ``$SHMOAREG_CANCEL_GRACE_S`` seconds (default 5; ``batch``: 30, time to close its Dask
    cluster), ends the process at once with exit code 130
    after removing its unfinished output staging folders (the output folder itself is never half-written)."""
    def force_exit() -> None:
        from ..io.outputs import cleanup_staging

        cleanup_staging()
        _fail(args, "cancelled: nothing was written", 130)
        sys.stderr.flush()
        os._exit(130)

    def on_signal(signum, frame) -> None:  # noqa: ARG001
        if cancel():
            force_exit()
        cancel.set()
        timer = threading.Timer(_grace_seconds(getattr(args, "cancel_grace_s", CANCEL_GRACE_S)), force_exit)
        timer.daemon = True
        timer.start()
        timers.append(timer)

    if threading.current_thread() is not threading.main_thread():
        return {}  # signals can only be handled in the main thread; the caller cancels through ``cancel``
    return {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def _log_warnings() -> logging.Handler:
    """Warnings of the engine (logger ``SHMoAReg``) go to stderr as ``warning: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    logging.getLogger("SHMoAReg").addHandler(handler)
    return handler


def _is_out_of_memory(error: BaseException) -> bool:
    torch = sys.modules.get("torch")
    return isinstance(error, MemoryError) or (torch is not None and isinstance(error, torch.OutOfMemoryError))


def _tolerate_any_locale() -> None:
    """Under an ASCII locale (``LC_ALL=C`` without UTF-8 mode) printing a non-ASCII path would raise
    UnicodeEncodeError: escape such characters instead of failing after the work is done."""
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (see the module docstring). Never prints a traceback
    unless ``SHMOAREG_DEBUG=1``."""
    warnings.filterwarnings("ignore", message=r"monai\.networks\.blocks\.Warp: Using PyTorch native grid_sample")
    _tolerate_any_locale()
    args = build_parser().parse_args(argv)
    cancel = CancelFlag()
    timers: list[threading.Timer] = []
    previous = _install_signal_handlers(args, cancel, timers)
    handler = _log_warnings()
    try:
        return args.func(args, cancel)
    except InputError as error:
        return _fail(args, f"error: {error}", 2)
    except (RegistrationCancelled, KeyboardInterrupt):
        code = _fail(args, "cancelled: nothing was written", 130)
        if argv is None:
            _exit_now(code)
        return code
    except Exception as error:  # noqa: BLE001 - the last line of defence: one clear line, no traceback
        if _is_out_of_memory(error):
            return _fail(args, "error: the run ran out of memory; use a coarser working grid (--spacing), crop the "
                               "images or use another --device", 2)
        if isinstance(error, OSError):
            where = f" ({error.filename})" if error.filename else ""
            return _fail(args, f"error: {error.strerror or error}{where}", 1)
        if os.environ.get("SHMOAREG_DEBUG"):
            traceback.print_exc()
        first = (str(error).strip().splitlines() or [""])[0]
        return _fail(args, f"internal error: {type(error).__name__}: {first} (please report it; run with "
                           f"SHMOAREG_DEBUG=1 for the details)", 1)
    finally:
        for timer in timers:
            timer.cancel()
        logging.getLogger("SHMoAReg").removeHandler(handler)
        for s, old in previous.items():
            signal.signal(s, old)


def _exit_now(code: int) -> None:
    """End the ``shmoareg`` process now: run the ``atexit`` handlers but skip the interpreter's teardown
    of torch/MONAI (3-4 s on a busy 2-core machine), so that a cancelled run also *exits* within seconds."""
    import atexit

    logging.shutdown()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _fail(args, message: str, code: int) -> int:
    """Report a failure: one line on stderr (and a JSON line on stdout with --json-progress)."""
    if getattr(args, "json_progress", False):
        print(json.dumps({"stage": "error" if code != 130 else "cancelled", "progress": 1.0, "message": message}),
              flush=True)
    print(message, file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
