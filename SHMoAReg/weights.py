"""Network weights: self-describing checkpoints, checksums, safe loading.

A weights file is a plain dict saved with :func:`torch.save`::

    {"format": "shmoareg-weights", "format_version": 1, "engine_version": str,
     "preset": str, "config": NetworkConfig as dict, "state_dict": {name: tensor},
     "metadata": {...}}

so a file rebuilds its model alone. It is only ever read with
``torch.load(..., weights_only=True)`` (no pickled code runs). Next to each file
``NAME.pt.sha256`` holds its SHA-256; shipped weights (``Resources/Weights``)
must match it, and a user's file is checked when the sidecar exists.
Weights are looked up by name in ``$SHMOAREG_WEIGHTS_DIR`` (``os.pathsep``-separated)
then in ``Resources/Weights`` beside the engine.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .errors import WeightsError
from .image_io import atomic_path
from .network import NetworkConfig, SHMoARegNet

__all__ = ["WeightsInfo", "weights_dirs", "available_weights", "resolve_weights", "sha256_of", "load_weights",
           "save_weights", "FORMAT"]

FORMAT = "shmoareg-weights"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "Resources" / "Weights"


@dataclass
class WeightsInfo:
    name: str
    path: str
    sha256: str
    preset: str
    metadata: dict


def weights_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("SHMOAREG_WEIGHTS_DIR", "").split(os.pathsep) if p]
    return extra + [SHIPPED_DIR]


def available_weights() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in weights_dirs():
        for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
            found.setdefault(path.stem, path)
    return found


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_weights(name_or_path: str | os.PathLike) -> tuple[Path, str | None]:
    """The weights file for a name or path, and the checksum it must have (None if no sidecar)."""
    path = Path(name_or_path)
    if not path.is_file():
        path = available_weights().get(str(name_or_path))
        if path is None:
            names = ", ".join(available_weights()) or "none"
            raise WeightsError(f"weights {str(name_or_path)!r}: no such file, and no shipped weights of that name "
                               f"(available: {names}); train some with `shmoareg train` or run without --weights")
    sidecar = path.with_name(path.name + ".sha256")
    expected = sidecar.read_text().split()[0] if sidecar.is_file() else None
    if expected is None and path.parent == SHIPPED_DIR:
        raise WeightsError(f"{path}: shipped weights have no checksum file {sidecar.name}")
    return path, expected


def load_weights(name_or_path: str | os.PathLike, device: torch.device | str = "cpu",
                 preset: str | None = None) -> tuple[SHMoARegNet, WeightsInfo]:
    """Build the network a weights file describes, after checking its checksum; eval mode, float32."""
    path, expected = resolve_weights(name_or_path)
    actual = sha256_of(path)
    if expected is not None and actual != expected:
        raise WeightsError(f"{path}: checksum mismatch (expected {expected}, file has {actual}); the file is corrupt "
                           f"or was replaced")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any failure here means "not a safe SHMoAReg checkpoint"
        raise WeightsError(f"{path}: not a loadable weights file ({type(error).__name__}: "
                           f"{str(error).splitlines()[0] if str(error) else ''})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise WeightsError(f"{path}: not an SHMoAReg weights file (no '{FORMAT}' format tag)")
    if preset is not None and checkpoint.get("preset") not in (None, preset):
        raise WeightsError(f"{path}: weights were trained for preset {checkpoint.get('preset')!r}, not {preset!r}")
    try:
        model = SHMoARegNet(NetworkConfig(**checkpoint["config"]))
        model.load_state_dict({k: v.float() for k, v in checkpoint["state_dict"].items()})
    except (TypeError, KeyError, RuntimeError, ValueError) as error:
        raise WeightsError(f"{path}: weights do not fit the SHMoAReg architecture ({str(error).splitlines()[0]})") from None
    info = WeightsInfo(path.stem, str(path), actual, checkpoint.get("preset") or "", checkpoint.get("metadata", {}))
    return model.to(device).eval(), info


def save_weights(model: SHMoARegNet, path: str | os.PathLike, preset: str, metadata: dict | None = None,
                 half: bool = True) -> str:
    """Write a checkpoint (fp16 tensors by default) and its ``.sha256`` sidecar atomically; returns the checksum."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in model.config.to_dict().items()}
    state = {k: (v.half() if half and v.is_floating_point() else v).cpu() for k, v in model.state_dict().items()}
    checkpoint = {"format": FORMAT, "format_version": 1, "engine_version": __version__, "preset": preset,
                  "config": config, "state_dict": state, "metadata": metadata or {}}
    temporary = atomic_path(path)
    try:
        torch.save(checkpoint, temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    digest = sha256_of(path)
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_text(f"{digest}  {path.name}\n")
    return digest
