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
import io
import os
import pickletools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from . import __version__
from .errors import WeightsError
from .io.image_io import write_atomically
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
    try:
        expected = (sidecar.read_text().split() or [""])[0] if sidecar.is_file() else None
    except (OSError, UnicodeDecodeError) as error:
        raise WeightsError(f"{sidecar}: cannot read the checksum file ({error})") from None
    if expected is None and path.parent == SHIPPED_DIR:
        raise WeightsError(f"{path}: shipped weights have no checksum file {sidecar.name}")
    return path, expected


def _pickle_globals(data: bytes) -> list[str]:
    """The globals (``module.name``) a pickle would import, read without running it."""
    names, strings = [], []
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
                strings.append(str(argument))
            elif opcode.name == "GLOBAL":
                names.append(str(argument).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # noqa: BLE001 - a malformed pickle: report what was found so far
        pass
    return [name.replace("__builtin__.", "builtins.", 1) for name in names]  # protocol <= 2 spells it __builtin__


def _unsafe_globals(path: Path) -> list[str]:
    """Globals in the checkpoint's pickle that ``weights_only=True`` does not allow (code, arbitrary objects)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                data = archive.read(pickles[0]) if pickles else b""
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile, KeyError):
        return []
    safe = ("torch.", "collections.OrderedDict")
    return sorted({n for n in _pickle_globals(data) if not n.startswith(safe)})


def _read_checkpoint(path: Path):
    try:
        with open(path, "rb") as stream:
            magic = stream.read(4)
    except OSError as error:
        raise WeightsError(f"{path}: cannot read the weights file ({error.strerror or error})") from None
    reason = ""
    if magic[:4] == b"PK\x03\x04" or magic[:1] == b"\x80":
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - any failure here means "not a safe SHMoAReg checkpoint"
            reason = next((line.strip() for line in str(error).splitlines() if "WeightsUnpickler error" in line), "")
            reason = f"{type(error).__name__}: {(reason or (str(error).strip().splitlines() or [''])[0])[:160]}"
    unsafe = _unsafe_globals(path)
    if unsafe:
        raise WeightsError(f"{path}: refused: the file would import {', '.join(unsafe[:3])} when unpickled (code or "
                           f"Python objects, not only tensors); it was read with weights_only=True and nothing in "
                           f"it was run")
    if not reason:
        raise WeightsError(f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
    raise WeightsError(f"{path}: not a loadable PyTorch checkpoint ({reason})")


def _check_fits(path: Path, model: SHMoARegNet, state: dict) -> None:
    """Name the parameters that a checkpoint lacks, has in excess or has with another shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
              for k in sorted(set(state) & set(expected)) if tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        details = []
        if missing:
            details.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if shapes:
            details.append(f"{len(shapes)} of another shape (e.g. {shapes[0]})")
        raise WeightsError(f"{path}: weights do not fit the SHMoAReg architecture their file describes: "
                           f"{'; '.join(details)}")


def load_weights(name_or_path: str | os.PathLike, device: torch.device | str = "cpu",
                 preset: str | None = None, diffeomorphic: bool | None = None) -> tuple[SHMoARegNet, WeightsInfo]:
    """Build the network a weights file describes, after checking its checksum; eval mode, float32.
    ``diffeomorphic`` (when not None) overrides whether the network's output is integrated as a velocity.

    Raises :class:`WeightsError` for a missing file, a checksum mismatch, a file that is not a
    checkpoint, a pickle that would import code (never run: ``weights_only=True``), another
    format, preset or architecture.
    """
    path, expected = resolve_weights(name_or_path)
    try:
        actual = sha256_of(path)
    except OSError as error:
        raise WeightsError(f"{path}: cannot read the weights file ({error.strerror or error})") from None
    if expected is not None and actual != expected:
        raise WeightsError(f"{path}: checksum mismatch (expected {expected}, file has {actual}); the file is corrupt "
                           f"or was replaced")
    checkpoint = _read_checkpoint(path)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise WeightsError(f"{path}: not an SHMoAReg weights file (no '{FORMAT}' format tag)")
    suits = [checkpoint.get("preset")] + list((checkpoint.get("metadata") or {}).get("also_suits_presets") or [])
    if preset is not None and checkpoint.get("preset") is not None and preset not in suits:
        also = f" (they also suit {', '.join(map(repr, suits[1:]))})" if len(suits) > 1 else ""
        raise WeightsError(f"{path}: weights were trained for preset {checkpoint.get('preset')!r}, not {preset!r}{also}")
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: the weights file has no state_dict of tensors")
    try:
        config = dict(checkpoint["config"])
        if diffeomorphic is not None:
            config["diffeomorphic"] = bool(diffeomorphic)
        model = SHMoARegNet(NetworkConfig(**config))
    except Exception as error:  # noqa: BLE001 - a config the network cannot be built from
        raise WeightsError(f"{path}: the network configuration in the file is not usable ({type(error).__name__}: "
                           f"{(str(error).splitlines() or [''])[0][:160]})") from None
    _check_fits(path, model, state)
    model.load_state_dict({k: v.float() for k, v in state.items()})
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
    # Serialised in memory: torch.save names the archive inside after the file it writes, so saving to a temporary
    # file would give the same weights a different checksum each time they are shipped.
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    data = buffer.getvalue()
    write_atomically(path, data)
    digest = hashlib.sha256(data).hexdigest()
    sidecar = path.with_name(path.name + ".sha256")
    sidecar.write_text(f"{digest}  {path.name}\n")
    return digest
