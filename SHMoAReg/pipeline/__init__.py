"""The registration of one pair: :func:`register`, composed of the named stages of :mod:`.stages`.

Modules, in data-flow order
    progress  progress reporting and cancellation (standard library only: the command line imports it)
    devices   choosing the compute device
    memory    refuse runs that would not fit in memory, before they start
    stages    the named stages: read, plan, start, working pair, network, instance optimisation, outputs,
              metrics, inverse
    run       :func:`register`: the stages in order, each timed under its name
    report    ``report.json``
    result    :class:`RegistrationResult`

``register``, ``RegistrationResult`` and ``field_to_grid`` are imported on first use, so that
``progress`` loads without torch.
"""
from __future__ import annotations

import importlib

_HOME = {"register": "run", "RegistrationResult": "result", "field_to_grid": "stages"}
__all__ = list(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
