"""SHMoAReg: deformable image registration with Mixture-of-Experts (arXiv 2509.20073).

The folders follow the data through one registration (:func:`register`):

    io/          read and check images and landmarks; write the output folder
    preprocess/  preset, working grid, affine pre-alignment and start transform, intensity normalisation
    network/     the SHMoAReg network (MoA encoder, SHMoE decoder)
    optimise/    instance optimisation and its losses, regularisers and warps
    transforms/  displacement fields <-> ITK transforms (fixed -> moving, LPS mm)
    evaluate/    metrics, expert utilisation, the QA picture
    pipeline/    :func:`register`: the stages in order, with memory, device and progress
    cli/         the ``shmoareg`` command line

Beside that flow: ``toolkit/`` (apply, invert and convert transforms), ``training/`` with ``train.py``
(``shmoareg train``), ``benchmark/`` (``shmoareg benchmark``) and ``cohort/`` (``shmoareg batch``).
At the top level, what every folder shares: ``conventions`` (the coordinate conventions, stated
once), ``errors`` (messages meant for the user), ``labels`` (one-hot label maps), ``synthetic``
(data with known answers) and ``weights`` (network weights).
"""
__version__ = "0.1.0"

from .conventions import AXIS_NAMES  # noqa: E402
from .errors import InputError, RegistrationCancelled, WeightsError  # noqa: E402


def register(*args, **kwargs):
    """Register a moving image to a fixed image; see :func:`SHMoAReg.pipeline.register`."""
    from .pipeline import register as _register

    return _register(*args, **kwargs)


__all__ = ["register", "InputError", "RegistrationCancelled", "WeightsError", "AXIS_NAMES", "__version__"]
