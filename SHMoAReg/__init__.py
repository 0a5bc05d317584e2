"""SHMoAReg: deformable image registration with Mixture-of-Experts (arXiv 2509.20073)."""
__version__ = "0.1.0"

from .conventions import AXIS_NAMES  # noqa: E402
from .errors import InputError, RegistrationCancelled, WeightsError  # noqa: E402


def register(*args, **kwargs):
    """Register a moving image to a fixed image; see :func:`SHMoAReg.pipeline.register`."""
    from .pipeline import register as _register

    return _register(*args, **kwargs)


__all__ = ["register", "InputError", "RegistrationCancelled", "WeightsError", "AXIS_NAMES", "__version__"]
