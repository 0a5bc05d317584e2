"""``shmoareg apply``, ``shmoareg invert`` and ``shmoareg convert``: the transform toolkit on the command line.

A plugin of :mod:`SHMoAReg.cli` (``add_parser``); the work is done by :mod:`SHMoAReg.toolkit`,
whose functions are the Python API of the same commands. Every transform maps fixed-space
points to moving-space points (LPS mm); ``docs/transforms.md`` explains formats and directions.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from ..errors import InputError, RegistrationCancelled

__all__ = ["add_parser"]

_FORMATS = ["itk-h5", "itk-tfm", "nifti-displacement", "l2r-voxel", "slicer-grid"]


def add_parser(subparsers) -> None:
    _add_apply(subparsers)
    _add_invert(subparsers)
    _add_convert(subparsers)


def _common(p) -> None:
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--json-progress", action="store_true", help="print the result as one JSON line")


def _add_apply(subparsers) -> None:
    p = subparsers.add_parser(
        "apply", help="warp an image / label map onto the fixed grid, or move landmarks, with a transform",
        description="Images and label maps: out(x) = input(T(x)) on the --reference grid (the fixed image), as "
                    "SimpleITK's Resample. Landmarks (.csv LPS mm, .fcsv, .mrk.json): fixed-to-moving gives T(p); "
                    "moving-to-fixed gives T^-1(q) (from --inverse-transform, else solved per point).")
    p.add_argument("--transform", required=True, help="transform.h5 from register, any ITK transform or a displacement "
                                                     "field image (LPS mm)")
    p.add_argument("--transform-format", choices=_FORMATS, help="format of --transform (default: from its name)")
    p.add_argument("--input", "-i", required=True, help="image, label map, or landmark file to transform")
    p.add_argument("--reference",
                   help="image whose grid the output takes (normally the fixed image); not for landmarks")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--interpolation", default="linear", choices=["linear", "nearest", "bspline", "label"],
                   help="linear/bspline for images; nearest or label (per-label linear voting) for label maps")
    p.add_argument("--default-value", type=float, default=0.0, help="image value outside the input (default 0)")
    p.add_argument("--direction", default="fixed-to-moving", choices=["fixed-to-moving", "moving-to-fixed"],
                   help="landmarks: points picked on the fixed image go to the moving one with T (default), "
                        "points of the moving image go to the fixed one with T^-1")
    p.add_argument("--inverse-transform", help="landmarks moving-to-fixed: the inverse (inverse_transform.h5); "
                                               "without it T(x) = q is solved for each point")
    _common(p)
    p.set_defaults(func=_run_apply)


def _add_invert(subparsers) -> None:
    p = subparsers.add_parser(
        "invert", help="the inverse transform (moving -> fixed) and its residual in mm",
        description="Exact from the negative velocity when the run was diffeomorphic (velocity.nii.gz beside the "
                    "transform), otherwise fixed-point iteration. Prints the residual |T(T^-1(y)) - y| in mm over the "
                    "--reference grid. An ITK output (.h5/.tfm) keeps the inverse's pieces exact; an image output "
                    "(.nii.gz, .nrrd) is the inverse displacement (LPS mm) sampled on --reference.")
    p.add_argument("--transform", required=True, help="the forward transform (fixed -> moving), e.g. transform.h5")
    p.add_argument("--reference", required=True, help="grid for the residual and for image outputs (the moving image)")
    p.add_argument("--output", "-o", required=True)
    p.add_argument("--to", choices=_FORMATS, help="output format (default: from the output name)")
    p.add_argument("--velocity", help="the run's velocity.nii.gz (default: the one beside --transform, if any)")
    p.add_argument("--no-velocity", action="store_true", help="always use fixed-point iteration")
    p.add_argument("--iterations", type=int, default=200, help="most fixed-point iterations (default 200)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="stop when the update is below this many mm")
    _common(p)
    p.set_defaults(func=_run_invert)


def _add_convert(subparsers) -> None:
    p = subparsers.add_parser(
        "convert", help="write a transform in another format (ITK .h5/.tfm, NIfTI mm, Learn2Reg voxels, Slicer grid)",
        description="All formats describe the same fixed -> moving mapping in LPS. Grid formats sample it on "
                    "--reference (required for l2r-voxel: the fixed image), else on the transform's own field grid.")
    p.add_argument("--transform", required=True)
    p.add_argument("--from", dest="source_format", choices=_FORMATS, help="format of --transform (default: from its "
                                                                          "name; Learn2Reg files need l2r-voxel)")
    p.add_argument("--to", required=True, choices=_FORMATS)
    p.add_argument("--reference", help="grid to sample on (the fixed image)")
    p.add_argument("--output", "-o", required=True)
    _common(p)
    p.set_defaults(func=_run_convert)


def _check_output(args) -> Path:
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise InputError(f"{output} exists; choose another name or pass --overwrite")
    if output.is_dir():
        raise InputError(f"{output} is a folder; give a file name")
    if not output.parent.exists():
        raise InputError(f"{output.parent}: no such folder")
    return output


def _report(args, summary: dict, message: str) -> None:
    if args.json_progress:
        print(json.dumps({"stage": "done", "progress": 1.0, "message": message, **summary}), flush=True)
    else:
        print(message)


def _run_apply(args, cancel) -> int:
    from ..toolkit.apply import apply_transform

    output = _check_output(args)
    if cancel():
        raise RegistrationCancelled("cancelled")
    summary = apply_transform(args.transform, args.input, output, args.reference, args.interpolation, args.direction,
                              args.inverse_transform, args.default_value, args.transform_format)
    if summary["kind"] == "points":
        message = (f"{summary['points']} points moved {summary['direction']} ({summary['method']}); largest residual "
                   f"|T(x) - q| {summary['residual_mm_max']:.2g} mm; written to {output} (LPS)")
    else:
        message = f"{summary['kind']} warped onto the reference grid ({summary['interpolation']}); written to {output}"
    _report(args, summary, message)
    return 0


def _run_invert(args, cancel) -> int:
    from ..toolkit.invert import invert_file

    output = _check_output(args)
    if cancel():
        raise RegistrationCancelled("cancelled")
    velocity = False if args.no_velocity else (args.velocity or True)
    inversion = invert_file(args.transform, args.reference, output, velocity, args.to, args.iterations,
                            args.tolerance, log=lambda text: print(f"warning: {text}", file=sys.stderr))
    summary = {"method": inversion.method, "iterations": inversion.iterations, "residual_mm": inversion.residual_mm,
               "output": str(output)}
    _report(args, summary, f"{inversion.summary()}; written to {output} (maps moving -> fixed)")
    return 0


def _run_convert(args, cancel) -> int:
    from ..toolkit.components import read_grid
    from ..toolkit.convert import convert_transform

    output = _check_output(args)
    if cancel():
        raise RegistrationCancelled("cancelled")
    reference = read_grid(args.reference) if args.reference else None
    convert_transform(args.transform, output, args.to, args.source_format, reference)
    _report(args, {"output": str(output), "format": args.to}, f"{args.to} written to {output}")
    return 0
