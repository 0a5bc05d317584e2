"""Which Python packages the engine needs in Slicer, and installing the missing ones safely.

Checks use ``importlib.util.find_spec`` (nothing is imported, so a broken or huge
package cannot slow down or crash Slicer's start-up). Installing follows the rule
"one torch only": torch comes exclusively from the PyTorch Utils extension's
``installTorch`` (it picks the CUDA build matching the driver); every other package
is installed with ``--no-deps`` or a constraint so pip never pulls a second torch.
The GUI supplies the confirmation dialog and the installers; this module has no Qt.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Requirement", "REQUIREMENTS", "missing_requirements", "install_plan", "install_missing"]


@dataclass(frozen=True)
class Requirement:
    """A package the engine imports: ``module`` to look for, ``pip`` specification to install."""

    module: str
    pip: str
    via_pytorch_utils: bool = False
    no_deps: bool = False


REQUIREMENTS: tuple[Requirement, ...] = (
    Requirement("torch", "torch", via_pytorch_utils=True),
    Requirement("monai", "monai>=1.4", no_deps=True),  # its only hard dependencies are numpy and torch
    Requirement("scipy", "scipy>=1.10"),
    Requirement("SimpleITK", "SimpleITK>=2.3"),  # ships with Slicer
    Requirement("numpy", "numpy>=1.24"),  # ships with Slicer
)


def missing_requirements(requirements: tuple[Requirement, ...] = REQUIREMENTS) -> list[Requirement]:
    """The requirements whose module cannot be found (without importing anything)."""
    missing = []
    for requirement in requirements:
        try:
            found = importlib.util.find_spec(requirement.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(requirement)
    return missing


def install_plan(missing: list[Requirement]) -> str:
    """One paragraph for the confirmation dialog: what will be installed and how."""
    if not missing:
        return "All dependencies of SHMoAReg are installed."
    lines = ["SHMoAReg needs these Python packages, which are not installed yet:"]
    for requirement in missing:
        how = "PyTorch Utils extension (build matching your GPU driver)" if requirement.via_pytorch_utils else "pip"
        lines.append(f"  - {requirement.pip} (via {how})")
    lines.append("Download size can be several GB for torch with CUDA. Install now?")
    return "\n".join(lines)


def install_missing(
    confirm: Callable[[str], bool],
    install_torch: Callable[[], object],
    pip_install: Callable[[str], object],
    requirements: tuple[Requirement, ...] = REQUIREMENTS,
) -> bool:
    """Ask once, then install what is missing. Returns True if everything is (now) available.

    Args:
        confirm: shows the plan and returns the user's answer.
        install_torch: installs torch (``PyTorchUtilsLogic().installTorch``); returns a falsy value on failure.
        pip_install: installs a pip requirement string (``slicer.util.pip_install``).
    """
    missing = missing_requirements(requirements)
    if not missing:
        return True
    if not confirm(install_plan(missing)):
        return False
    for requirement in missing:
        if requirement.via_pytorch_utils:
            if not install_torch():
                return False
        else:
            pip_install(f"{requirement.pip} --no-deps" if requirement.no_deps else requirement.pip)
    importlib.invalidate_caches()
    return not missing_requirements(requirements)
