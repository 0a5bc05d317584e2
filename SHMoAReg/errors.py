"""Exceptions with messages meant for the user (the CLI prints them without a traceback)."""
from __future__ import annotations

__all__ = ["InputError", "RegistrationCancelled", "WeightsError"]


class InputError(ValueError):
    """An input (image, labels, landmarks, option) that cannot be used; the message says why."""


class WeightsError(InputError):
    """Network weights that are missing, corrupt, of another architecture or failing their checksum."""


class RegistrationCancelled(RuntimeError):
    """The user cancelled the run (Ctrl-C, SIGTERM, or Cancel in Slicer); nothing was written."""
