"""Where a cohort runs: a Dask ``LocalCluster`` sized to this machine, or a running cluster.

This machine (the default)
    Worker processes (``processes=True``) that run one pair at a time (``threads_per_worker=1``).
    Without a GPU: ``min(pairs, CPUs // 4, memory // 4 GiB)`` workers (at least 1), or ``--workers``;
    each pair's torch uses ``CPUs // workers`` threads (or ``--threads``). With CUDA (``--device`` auto or
    cuda, and torch sees GPUs): one worker per GPU (``--workers`` may ask for more: they share the GPUs
    in turn), each offering the Dask resource ``{"GPU": 1}`` and pinned to its GPU with
    ``CUDA_VISIBLE_DEVICES`` (:class:`LocalWorkerSetup`); every pair is submitted with ``resources={"GPU": 1}``.
    The dashboard listens on port 8787 (another one if taken) when ``bokeh`` is installed.
A running cluster (``--scheduler ADDRESS``)
    Its workers, as started (e.g. by dask-jobqueue, docs/cohorts.md); pairs ask for ``{"GPU": 1}``
    when some worker offers a ``GPU`` resource. torch threads: ``--threads``, else each worker's share
    of the CPUs it may use (its CPU affinity divided by its Dask threads).
"""
from __future__ import annotations

import importlib.util
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from distributed.diagnostics.plugin import WorkerPlugin

from ..errors import InputError
from .results import one_line
from .tasks import available_cpus

__all__ = ["LocalPlan", "Connection", "LocalWorkerSetup", "plan_local", "visible_gpus", "worker_device", "connect"]

CPU_THREADS_PER_PAIR = 4  # a registration's torch work scales well up to about this many threads
MEMORY_PER_PAIR_BYTES = 4 * 2**30  # a CT pair at 2 mm with the network; larger images need more (--workers)
CONNECT_TIMEOUT = "20s"


@dataclass
class LocalPlan:
    """The size of a cluster on this machine."""

    workers: int
    threads: int  # torch threads per pair
    gpus: list[str]  # CUDA_VISIBLE_DEVICES ids, one per worker in turn; empty: CPU only


@dataclass
class Connection:
    """A connected Dask client and how to submit pairs to it."""

    client: object  # distributed.Client
    resources: dict | None  # per pair, e.g. {"GPU": 1}
    threads: int | None  # torch threads per pair; None: each worker's share
    description: str
    dashboard: str | None
    local: bool


class LocalWorkerSetup(WorkerPlugin):
    """Prepare each worker process of a local cluster when it starts (again after a restart), before its
    first pair imports torch: leave Ctrl-C to ``shmoareg batch`` (a terminal sends it to the worker
    processes too; the command cancels the pairs and closes the cluster itself), and with ``gpus`` pin
    worker number ``n`` to one GPU: ``CUDA_VISIBLE_DEVICES = gpus[n % len(gpus)]``."""

    name = "shmoareg-local-worker"

    def __init__(self, gpus: list[str] | None = None) -> None:
        self.gpus = list(gpus or [])

    def setup(self, worker) -> None:
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the process's main thread: keep Python's default
            pass
        if self.gpus:
            number = int(worker.name) if str(worker.name).isdigit() else 0
            os.environ["CUDA_VISIBLE_DEVICES"] = self.gpus[number % len(self.gpus)]


def visible_gpus(device: str) -> list[str]:
    """The GPUs a local cluster should use for ``device``: none for ``cpu`` (or auto without CUDA), every
    visible one for ``auto``/``cuda``, one for ``cuda:N``; ids as ``CUDA_VISIBLE_DEVICES`` names them.
    Raises :class:`InputError` for ``cuda`` without a GPU, as ``register`` would."""
    device = (device or "auto").lower()
    if device == "cpu":
        return []
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    named = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    ids = (named or [str(i) for i in range(count)])[:count]
    if device.startswith("cuda") and not ids:
        raise InputError(f"device {device!r} was requested but PyTorch sees no CUDA GPU; use --device cpu")
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1]) if device.split(":", 1)[1].isdigit() else -1
        if not 0 <= index < len(ids):
            raise InputError(f"device {device!r}: PyTorch sees {len(ids)} GPU(s)")
        return [ids[index]]
    return ids


def worker_device(device: str, plan: LocalPlan | None) -> str:
    """The ``device`` a pair asks for inside a worker: ``cuda:N`` becomes ``cuda`` on a local cluster whose
    workers see only their own GPU."""
    return "cuda" if plan is not None and plan.gpus and device.lower().startswith("cuda:") else device


def _host_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except (ImportError, OSError):
        return MEMORY_PER_PAIR_BYTES


def plan_local(pairs: int, device: str, workers: int | None = None, threads: int | None = None) -> LocalPlan:
    """Size a local cluster for ``pairs`` pairs (see the module docstring)."""
    cpus = available_cpus()
    gpus = visible_gpus(device)
    if workers is None:
        workers = len(gpus) if gpus else min(max(1, cpus // CPU_THREADS_PER_PAIR),
                                             max(1, _host_memory() // MEMORY_PER_PAIR_BYTES))
    workers = max(1, min(workers, pairs))
    return LocalPlan(workers, threads or max(1, cpus // workers), gpus)


def _dashboard(client) -> str | None:
    try:
        return client.dashboard_link or None
    except Exception:  # noqa: BLE001 - no dashboard (bokeh missing, or the scheduler runs none)
        return None


def _offers_gpus(client) -> bool:
    workers = client.scheduler_info().get("workers", {})
    return any("GPU" in (info.get("resources") or {}) for info in workers.values())


def _local(stack: ExitStack, plan: LocalPlan) -> Connection:
    from distributed import Client, LocalCluster

    extra = {"resources": {"GPU": 1}} if plan.gpus else {}
    has_bokeh = importlib.util.find_spec("bokeh") is not None
    cluster = stack.enter_context(LocalCluster(n_workers=plan.workers, threads_per_worker=1, processes=True,
                                               dashboard_address=":8787" if has_bokeh else None,
                                               silence_logs=logging.ERROR, **extra))
    client = stack.enter_context(Client(cluster))
    client.register_plugin(LocalWorkerSetup(plan.gpus))
    where = f"{len(plan.gpus)} GPU(s), " if plan.gpus else ""
    description = (f"local Dask cluster: {plan.workers} worker process(es), one pair at a time each, {where}"
                   f"{plan.threads} torch thread(s) per pair")
    return Connection(client, {"GPU": 1} if plan.gpus else None, plan.threads, description, _dashboard(client), True)


def _remote(stack: ExitStack, address: str, threads: int | None) -> Connection:
    from distributed import Client

    try:
        client = stack.enter_context(Client(address, timeout=CONNECT_TIMEOUT))
    except (OSError, ValueError) as error:
        raise InputError(f"cannot reach the Dask scheduler at {address}: {one_line(str(error))}") from None
    gpus = _offers_gpus(client)
    workers = len(client.scheduler_info().get("workers", {}))
    description = (f"Dask cluster at {address}: {workers} worker(s) now" + (", pairs ask for GPU=1" if gpus else ""))
    return Connection(client, {"GPU": 1} if gpus else None, threads, description, _dashboard(client), False)


@contextmanager
def connect(scheduler: str | None, plan: LocalPlan | None, threads: int | None = None) -> Iterator[Connection]:
    """A client of the cluster at ``scheduler``, or of a new local cluster of ``plan``; closed (and a local
    cluster shut down, its worker processes ended) when the block ends, also on Ctrl-C or an error."""
    with ExitStack() as stack:
        if scheduler:
            yield _remote(stack, scheduler, threads)
        else:
            if plan is None:
                raise ValueError("a local cluster needs a plan")
            yield _local(stack, plan)
