"""The work of one pair, as a Dask worker runs it: register, draw the QA picture, return a results row.

:func:`register_pair` is a top-level function of a module that imports only the standard library, so a
worker unpickles it cheaply; the engine is imported inside. The images are read first (SimpleITK, no
torch), so a pair whose images cannot be read fails within a second, and are then passed to
:func:`SHMoAReg.pipeline.register` with the very keyword arguments ``shmoareg register`` would use
(:func:`SHMoAReg.cli.register_kwargs`): the same pair, seed and thread count give the same files.

Failures: an :class:`~SHMoAReg.errors.InputError` (unreadable image, unusable option, not enough memory)
is this pair's problem and becomes a ``failed`` row with its one-line message; Dask does not retry it.
Any other exception is raised, so that Dask retries the pair (``retries=``) and finally reports it.
"""
from __future__ import annotations

import os
from pathlib import Path

from .results import failed_row, one_line, row_from_report

__all__ = ["register_pair", "available_cpus", "KILL_ONCE_ENV"]

# Test hook: "PAIR_ID=MARKER_FILE" makes the first worker that registers PAIR_ID die (os._exit) after the
# pair's results are in their staging folder but before they take their place, as a killed machine would;
# MARKER_FILE records that it happened, so the retry runs normally.
KILL_ONCE_ENV = "SHMOAREG_TEST_KILL_ONCE"


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, e.g. a Slurm job's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _worker_threads() -> int:
    """Tasks this Dask worker runs at once (1 outside a worker)."""
    try:
        from distributed import get_worker

        return max(1, int(get_worker().state.nthreads))
    except (ImportError, ValueError, AttributeError):
        return 1


def _set_torch_threads(threads: int | None) -> int:
    """torch's intra-op threads: ``threads``, else this task's share of the CPUs (CPUs / worker threads)."""
    import torch

    count = threads if threads else max(1, available_cpus() // _worker_threads())
    torch.set_num_threads(count)
    return count


def _arm_test_kill(pair_id: str) -> None:
    """See :data:`KILL_ONCE_ENV`."""
    target, _, marker = os.environ.get(KILL_ONCE_ENV, "").partition("=")
    if target != pair_id or not marker or os.path.exists(marker):
        return
    from ..io.outputs import OutputFolder

    def die(self, staging: Path) -> None:  # noqa: ARG001 - replaces OutputFolder._swap_in in this process only
        Path(marker).touch()
        os._exit(1)

    OutputFolder._swap_in = die


def _qa_note(fixed, result, folder: Path, pair_id: str) -> str:
    """Write ``folder/qa.png``; a picture that cannot be drawn is a note, not a failed registration."""
    from ..evaluate.qa import QA_FILE, write_qa_picture

    try:
        write_qa_picture(fixed, result.warped, result.jacobian, folder / QA_FILE, title=pair_id)
    except Exception as error:  # noqa: BLE001 - the registration itself succeeded and is kept
        return f"no QA picture: {type(error).__name__}: {one_line(str(error))}"
    return ""


def register_pair(pair_id: str, fixed: str, moving: str, output_dir: str, kwargs: dict,
                  threads: int | None = None) -> dict:
    """Register ``moving`` to ``fixed`` into ``output_dir`` (atomically) and return the results row.

    ``kwargs``: the other keyword arguments of :func:`SHMoAReg.pipeline.register` (labels, landmarks,
    DICOM series, options; ``progress`` and ``cancel`` are not used here). ``threads``: torch threads
    (default: this worker's share of the CPUs). Returns a ``done`` row, or a ``failed`` row with the
    one-line reason of an input error; raises anything else (Dask then retries the pair).
    """
    from ..errors import InputError
    from ..io.image_io import read_image

    options = dict(kwargs)
    folder = Path(output_dir)
    try:
        fixed_image = read_image(fixed, "fixed image", options.pop("fixed_series", None))
        moving_image = read_image(moving, "moving image", options.pop("moving_series", None))
        _set_torch_threads(threads)
        from ..pipeline import register

        _arm_test_kill(pair_id)
        result = register(fixed_image, moving_image, folder, **options)
    except InputError as error:
        return failed_row(pair_id, str(error), folder)
    return row_from_report(pair_id, "done", result.report, folder, _qa_note(fixed_image, result, folder, pair_id))
