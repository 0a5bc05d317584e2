"""Exceptions with messages meant for the user (the CLI prints them without a traceback).

``shmoareg`` exit codes: :class:`InputError` and its subclasses -> 2, :class:`RegistrationCancelled` -> 130.
"""
from __future__ import annotations

__all__ = ["InputError", "RegistrationCancelled", "WeightsError", "OutOfMemory"]


class InputError(ValueError):
    """An input (image, labels, landmarks, option) that cannot be used; the message says why."""


class WeightsError(InputError):
    """Network weights that are missing, corrupt, of another architecture or failing their checksum."""


class OutOfMemory(InputError):
    """The run does not fit (or did not fit) in the memory available; the message names a coarser spacing."""


class RegistrationCancelled(RuntimeError):
    """The user cancelled the run (Ctrl-C, SIGTERM, or Cancel in Slicer); nothing was written."""
