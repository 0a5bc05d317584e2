"""Where the engine is and how to start it (``python -m SHMoAReg register``).

In an installed extension the engine package ``SHMoAReg/`` sits next to the module
(``qt-scripted-modules/SHMoAReg``); in the source tree it sits one folder above
``SHMoARegExtension/``. The engine runs in its own process: ``PythonSlicer`` inside
Slicer, the current interpreter elsewhere.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import slicer

__all__ = ["import_engine_module", "find_engine_root", "default_python", "engine_environment",
           "default_engine_command"]


def find_engine_root() -> Path:
    """The folder that contains the ``SHMoAReg`` package.

    Raises:
        RuntimeError: the engine is neither beside the module nor importable.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here.parent, here.parent.parent):
        if (candidate / "SHMoAReg" / "__init__.py").is_file():
            return candidate
    spec = importlib.util.find_spec("SHMoAReg")
    if spec is not None and spec.origin:
        return Path(spec.origin).resolve().parent.parent
    raise RuntimeError(f"the SHMoAReg engine package was found neither beside {here.parent} nor on sys.path")


def import_engine_module(name: str):
    """Import an engine module inside this process (only SimpleITK-only ones, e.g. ``SHMoAReg.toolkit.apply``:
    torch stays in the engine process), putting the engine's folder on ``sys.path`` if it is not there yet
    (the source tree added to Slicer's module paths puts only ``SHMoARegExtension/`` there)."""
    if importlib.util.find_spec("SHMoAReg") is None:
        sys.path.append(str(find_engine_root()))
    return importlib.import_module(name)


def default_python() -> str:
    """``PythonSlicer`` when running inside Slicer (it sets up Slicer's environment), else this interpreter."""
    if hasattr(slicer, "app"):
        found = shutil.which("PythonSlicer")
        if found:
            return found
        beside = Path(sys.executable).with_name("PythonSlicer" + (".exe" if sys.platform == "win32" else ""))
        if beside.is_file():
            return str(beside)
    return sys.executable


def engine_environment(engine_root: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for the engine process: the engine on PYTHONPATH, unbuffered UTF-8 output."""
    env = dict(os.environ if base is None else base)
    paths = [str(engine_root)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env


def default_engine_command(python: str | None = None) -> list[str]:
    """``[python, "-m", "SHMoAReg", "register"]``."""
    return [python or default_python(), "-m", "SHMoAReg", "register"]
