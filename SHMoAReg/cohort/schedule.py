"""Submit the pairs to Dask and collect one results row per pair as they finish.

Each pair is one task, :func:`SHMoAReg.cohort.tasks.register_pair`, submitted with ``retries`` (a pair
that raised an unexpected error runs again, up to that many times) and the connection's resources
(``{"GPU": 1}`` on GPU workers). A pair whose worker process dies (killed, crashed, over its memory
limit) is given to another worker by the scheduler itself, up to ``distributed.scheduler.allowed-failures``
times (3 by default); after that it is recorded as failed (``KilledWorker``). Input errors are never
retried: they come back as ``failed`` rows. Every outcome becomes a row; nothing is dropped.
"""
from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from .cluster import Connection
from .results import failed_row, one_line
from .tasks import register_pair

__all__ = ["Job", "run_jobs", "POLL_S"]

POLL_S = 0.2  # how often the loop looks for finished pairs and for a cancel request


@dataclass
class Job:
    """One pair to register: the arguments of :func:`register_pair` but the thread count."""

    pair_id: str
    fixed: str
    moving: str
    output_dir: str
    kwargs: dict


def _reason(error: BaseException, retries: int) -> str:
    """One line for a pair whose task ended in an exception."""
    if type(error).__name__ == "KilledWorker":
        return ("the worker process registering this pair died each time it was tried (KilledWorker: a crash, "
                "or more memory than the worker's limit); see the worker logs")
    tried = f" (tried {retries + 1} times)" if retries else ""
    return f"{type(error).__name__}: {one_line(str(error))}{tried}"


def _row(future, job: Job, retries: int) -> dict:
    if future.status == "finished":
        return future.result()
    if future.status == "error":
        return failed_row(job.pair_id, _reason(future.exception(), retries), job.output_dir)
    return failed_row(job.pair_id, f"the Dask task ended as {future.status!r}", job.output_dir)


def run_jobs(connection: Connection, jobs: list[Job], retries: int, on_row: Callable[[dict], None],
             cancelled: Callable[[], bool]) -> bool:
    """Run ``jobs`` on ``connection``; call ``on_row`` with each pair's row as it finishes. Returns True when
    every pair finished, False when ``cancelled()`` turned true or Ctrl-C arrived (the pairs not finished
    are cancelled; the caller closes the cluster)."""
    from distributed import as_completed

    client = connection.client
    futures = {}
    for job in jobs:
        future = client.submit(register_pair, job.pair_id, job.fixed, job.moving, job.output_dir, job.kwargs,
                               connection.threads, key=f"register-{job.pair_id}-{uuid.uuid4().hex[:8]}",
                               retries=retries, resources=connection.resources)
        futures[future] = job
    completed = as_completed(list(futures))
    try:
        while not completed.is_empty():
            if cancelled():
                client.cancel(list(futures))
                return False
            batch = completed.next_batch(block=False)
            for future in batch:
                on_row(_row(future, futures[future], retries))
            if not batch:
                time.sleep(POLL_S)
    except KeyboardInterrupt:
        client.cancel(list(futures))
        return False
    return True
