"""The registration of one pair: :func:`register`, composed of the named stages of :mod:`.stages`.

``run`` (the composition and its timing), ``stages`` (read, plan, start, working pair, network,
instance optimisation, outputs, metrics, inverse), ``report`` (``report.json``) and ``result``
(:class:`RegistrationResult`).
"""
from .result import RegistrationResult
from .run import register
from .stages import field_to_grid

__all__ = ["register", "RegistrationResult", "field_to_grid"]
