"""Qt-free parts of the SHMoARegistration Slicer module (Logic and helpers).

Everything here imports only ``slicer`` (MRML), ``vtk``, ``numpy`` and ``SimpleITK``;
the engine runs in a separate process. See :mod:`.logic` for the entry points.
"""
from .logic import RegistrationCancelled, RegistrationInputs, RegistrationJob, SHMoARegistrationLogic
from .metrics_table import metric_value
from .options import PRESETS, Device, RegistrationOptions
from .outputs import OutputNodes, RegistrationResult

__all__ = [
    "SHMoARegistrationLogic",
    "RegistrationInputs",
    "RegistrationJob",
    "RegistrationCancelled",
    "RegistrationOptions",
    "RegistrationResult",
    "OutputNodes",
    "Device",
    "PRESETS",
    "metric_value",
]
