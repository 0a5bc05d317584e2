"""Train the four ablation variants side by side on one GPU, from a prepared run folder (``data.npz`` + ``teacher.npz``).

The device machine this project is sometimes lent (docs/ablation.md) has torch and numpy but neither SimpleITK nor
MONAI (MONAI, pure Python, travels as a wheel; see Testing/device/README.md), and the dataset's images do not travel
to it. This script therefore

* draws ``val_pairs.pt`` from ``data.npz`` exactly as ``shmoareg train`` does (``SHMoAReg.training.run.prepare``
  then finds everything present and reads no dataset file);
* installs an import shim for SimpleITK **only when it is missing**: the package imports it at module level but,
  during training and validation, uses it only to describe a unit-spacing grid for the Jacobian
  (``evaluate.metrics.jacobian_scores``); any other SimpleITK call raises;
* starts one ``shmoareg train`` per variant (the same argument parser, so the same settings) in its own process,
  each with ``--workers`` synthesis processes, and stops them all by ``--time-limit-min``;
* packs each variant's ``best.pt``, ``metrics.csv``, ``run.json``, learning curve and log into one archive.

    python Testing/device/train_variants.py DATA_DIR OUT_DIR [--variants ...] -- SHMOAREG_TRAIN_ARGS  # --workers, --time-limit-min there

Checked on the CPU here with SimpleITK shimmed (``--block``) against a run with the real module (README.md beside).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ("plain", "moa", "shmoe", "full")


class _Missing:
    """Any attribute of a shimmed module that training never calls: constants work as opaque values, calls fail."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is not available on this machine (import shim)")

    def __getattr__(self, attribute: str):
        return _Missing(f"{self._name}.{attribute}")


class _UnitGrid:
    """``SimpleITK.Image(size, pixel_type)``: a grid of unit spacing, zero origin and identity direction, the only
    image the training path builds (:func:`SHMoAReg.evaluate.metrics.jacobian_scores`)."""

    def __init__(self, size, pixel_type=None) -> None:
        self._size = tuple(int(n) for n in size)

    def GetSize(self):
        return self._size

    def GetDimension(self):
        return len(self._size)

    def GetSpacing(self):
        return (1.0,) * len(self._size)

    def GetOrigin(self):
        return (0.0,) * len(self._size)

    def GetDirection(self):
        n = len(self._size)
        return tuple(1.0 if i == j else 0.0 for i in range(n) for j in range(n))


class _ShimModule(types.ModuleType):
    def __getattr__(self, attribute: str):
        if attribute.startswith("__"):
            raise AttributeError(attribute)
        return _Missing(f"{self.__name__}.{attribute}")


def install_shims(block: bool = False) -> list[str]:
    """Shim SimpleITK where it cannot be imported (``block``: even where it can, to check this script on a machine
    that has it). Returns the names shimmed."""
    if not block:
        try:
            import SimpleITK  # noqa: F401
            return []
        except ImportError:
            pass
    shim = _ShimModule("SimpleITK")
    shim.Image = _UnitGrid
    sys.modules["SimpleITK"] = shim
    return ["SimpleITK"]


def train_parser() -> argparse.ArgumentParser:
    from SHMoAReg.train import add_parser

    parser = argparse.ArgumentParser(prog="shmoareg")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return parser


def run_one(variant: str, data_dir: Path, out_dir: Path, train_args: list[str], block: bool) -> int:
    install_shims(block)
    sys.path.insert(0, str(ROOT))
    from SHMoAReg.pipeline.progress import CancelFlag
    from SHMoAReg.training.run import train_one

    args = train_parser().parse_args(["train", *train_args, "--variant", variant, "-o", str(out_dir / variant)])
    import torch

    torch.backends.cudnn.benchmark = True  # fixed patch shapes: let cuDNN pick its fastest 3D convolutions
    spacing = args.spacing
    result = train_one(args, out_dir / variant, variant, args.preset or "abdomen-ct", spacing, CancelFlag(),
                       data_dir=data_dir)
    print(f"[{variant}] best validation Dice {result['best_val_dice']:.3f} after {result['steps']} steps "
          f"({result['train_seconds'] / 60:.1f} min)", flush=True)
    return 0


def pack(out_dir: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(out_dir.rglob("*")):
            if path.is_file() and path.name not in ("last.pt",) and path.suffix != ".npz" and path.name != "val_pairs.pt":
                tar.add(path, arcname=str(path.relative_to(out_dir)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data_dir", type=Path, help="folder with data.npz and teacher.npz")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--archive", type=Path, help="write the results here as .tar.gz")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of each training process")
    parser.add_argument("--block", action="store_true", help="shim SimpleITK even where installed (a check)")
    parser.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)  # after "--": the shmoareg train arguments
    args, train_args = parser.parse_args(argv[:cut]), argv[cut + 1:]
    if args.one:
        return run_one(args.one, args.data_dir, args.out_dir, train_args, args.block)

    shimmed = install_shims(args.block)
    sys.path.insert(0, str(ROOT))
    print(f"shimmed: {shimmed or 'nothing'}", flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    parsed = train_parser().parse_args(["train", *train_args, "-o", str(args.out_dir)])
    if not (args.data_dir / "val_pairs.pt").is_file():  # as shmoareg train draws it (the dataset lists no pairs)
        import torch

        from SHMoAReg.training.run import draw_validation_pairs

        torch.save(draw_validation_pairs(parsed, args.data_dir / "data.npz"), args.data_dir / "val_pairs.pt")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    started, processes = time.time(), {}
    for variant in args.variants:
        command = [sys.executable, __file__, str(args.data_dir), str(args.out_dir), "--one", variant,
                   *(["--block"] if args.block else []), "--", *train_args]
        log = open(args.out_dir / f"{variant}.log", "w")
        processes[variant] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    codes: dict[str, int] = {}
    while len(codes) < len(processes):  # a variant that fails stops the others: the lease is short
        for variant, process in processes.items():
            if variant not in codes and process.poll() is not None:
                codes[variant] = process.returncode
                if process.returncode != 0:
                    for other in processes.values():
                        if other.poll() is None:
                            other.terminate()
        time.sleep(1)
    print(f"finished in {time.time() - started:.0f} s: {codes}", flush=True)
    for variant in args.variants:
        print(f"--- {variant}.log (end)\n" + "".join((args.out_dir / f"{variant}.log").read_text().splitlines(True)[-6:]))
    if args.archive:
        pack(args.out_dir, args.archive)
        print(f"archive {args.archive} ({args.archive.stat().st_size / 1e6:.1f} MB)")
    return 0 if all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
