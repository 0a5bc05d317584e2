"""Cancellation (SIGINT/SIGTERM), out-of-memory and unexpected errors in the CLI and the API.

A cancelled CLI run stops within a few seconds with exit code 130, writes nothing and leaves no
staging folders; a stage that does not check the cancel flag is ended after the grace period
(``SHMOAREG_CANCEL_GRACE_S``) or by a second signal. A CUDA out-of-memory error (injected: there
is no GPU here) becomes a one-line message with advice, exit code 2.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from SHMoAReg.errors import OutOfMemory
from test_reliability_support import FAST, cli_args, good_pair, run_cli, snapshot, start_cli
from test_reliability_support import single_thread  # noqa: F401 - a fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("single_thread")

LONG = ["--iterations", "1000000", "--no-affine", "--json-progress"]
CANCELLED = "cancelled: nothing was written"


def _wait_for_stage(read, stage: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in read().splitlines():
            if line.startswith("{") and json.loads(line).get("stage") == stage:
                return
        time.sleep(0.05)
    raise AssertionError(f"the run never reached the {stage!r} stage: {read()[-500:]}")


def _assert_clean(tmp_path: Path, before: dict) -> None:
    assert sorted(os.listdir(tmp_path)) == ["in"], "a cancelled run writes nothing and leaves no staging folder"
    assert snapshot(tmp_path / "in") == before


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_stops_the_run(signum: int, tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    run = start_cli(cli_args(fixed, moving, tmp_path / "out") + LONG, cwd=tmp_path)
    _wait_for_stage(run.stdout_text, "optimise")
    sent = time.monotonic()
    run.signal(signum)
    result = run.wait(timeout=30)
    assert time.monotonic() - sent < 3.0, "a cancelled run must stop within a few seconds"
    assert (result.rc, result.last_line) == (130, CANCELLED), result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"stage": "cancelled", "progress": 1.0,
                                                                  "message": CANCELLED}
    _assert_clean(tmp_path, before)


STUCK = """
import time
import SHMoAReg.pipeline.stages as pipeline
def _stuck(*args, **kwargs):  # a stage that never looks at the cancel flag
    for _ in range(600):
        time.sleep(0.1)
pipeline.normalize = _stuck
"""


def test_a_stage_that_ignores_cancel_is_ended_after_the_grace_period(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    run = start_cli(cli_args(fixed, moving, tmp_path / "out") + LONG, cwd=tmp_path, prelude=STUCK,
                    env={"SHMOAREG_CANCEL_GRACE_S": "1"})
    _wait_for_stage(run.stdout_text, "resample")
    sent = time.monotonic()
    run.signal(signal.SIGINT)
    result = run.wait(timeout=30)
    assert 0.9 < time.monotonic() - sent < 3.0
    assert (result.rc, result.last_line) == (130, CANCELLED)
    _assert_clean(tmp_path, before)


def test_a_second_signal_ends_the_run_at_once(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    run = start_cli(cli_args(fixed, moving, tmp_path / "out") + LONG, cwd=tmp_path, prelude=STUCK)
    _wait_for_stage(run.stdout_text, "resample")
    sent = time.monotonic()
    run.signal(signal.SIGINT)
    time.sleep(0.2)
    run.signal(signal.SIGINT)
    result = run.wait(timeout=30)
    assert time.monotonic() - sent < 1.5
    assert (result.rc, result.last_line) == (130, CANCELLED)


def test_sigint_to_a_real_python_m_shmoareg(tmp_path: Path) -> None:
    """The same through a genuine ``python -m SHMoAReg`` process (no zygote)."""
    fixed, moving = good_pair(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SHMOAREG_", "PYTEST"))}
    environment["OMP_NUM_THREADS"] = "1"
    process = subprocess.Popen([sys.executable, "-m", "SHMoAReg", *map(str, cli_args(fixed, moving, tmp_path / "out")),
                                *LONG], cwd=tmp_path, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, encoding="utf-8", errors="replace")
    try:
        for line in process.stdout:
            if line.startswith("{") and json.loads(line)["stage"] == "optimise":
                break
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert time.monotonic() - sent < 3.0
    assert process.returncode == 130 and stderr.strip().splitlines()[-1] == CANCELLED, stderr
    assert "Traceback" not in stderr
    _assert_clean(tmp_path, before)


# ---------------------------------------------------------------------------- out of memory

ADVICE = "use a coarser working grid (--spacing about 1.5x the current one), crop the images or use --device"
CUDA_OOM = f"the run ran out of cuda memory; {ADVICE} cpu"
HOST_OOM = f"the run ran out of cpu memory; {ADVICE} cuda if a GPU with more memory is available"


def _raise(error: BaseException):
    def fail(*args, **kwargs):
        raise error
    return fail


@pytest.mark.parametrize("error, message", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"), CUDA_OOM),
    (MemoryError(), HOST_OOM)], ids=["CUDA", "host"])
def test_out_of_memory_during_the_run_api(error, message, tmp_path: Path, monkeypatch) -> None:
    import SHMoAReg.pipeline.stages as pipeline
    from SHMoAReg import register

    fixed, moving = good_pair(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    monkeypatch.setattr(pipeline, "normalize", _raise(error))
    with pytest.raises(OutOfMemory) as raised:
        register(fixed, moving, tmp_path / "out", iterations=2, affine=False, device="cpu")
    assert str(raised.value) == message
    _assert_clean(tmp_path, before)


@pytest.mark.parametrize("error, message", [
    ("torch.cuda.OutOfMemoryError('CUDA out of memory. Tried to allocate 20.00 GiB')", CUDA_OOM),
    ("MemoryError()", HOST_OOM)], ids=["CUDA", "host"])
def test_out_of_memory_during_the_run_cli(error, message, tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    before = snapshot(tmp_path / "in")
    prelude = (f"import torch, SHMoAReg.pipeline.stages as p\ndef _oom(*a, **k):\n    raise {error}\np.normalize = _oom\n")
    result = run_cli(cli_args(fixed, moving, tmp_path / "out") + FAST, cwd=tmp_path, prelude=prelude)
    assert (result.rc, result.last_line) == (2, f"error: {message}"), result.stderr
    assert "Traceback" not in result.stderr
    _assert_clean(tmp_path, before)


def test_memory_limit_must_be_a_number(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    result = run_cli(cli_args(fixed, moving, tmp_path / "out") + FAST, cwd=tmp_path,
                     env={"SHMOAREG_MEMORY_LIMIT_MB": "lots"})
    assert (result.rc, result.last_line) == (2, "error: SHMOAREG_MEMORY_LIMIT_MB must be a positive number of MB, "
                                                "got 'lots'")


# ---------------------------------------------------------------------------- unexpected errors

def test_an_unexpected_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    prelude = ("import SHMoAReg.pipeline.stages as p\n"
               "def _bug(*a, **k):\n    raise ZeroDivisionError('boom')\n"
               "p.normalize = _bug\n")
    result = run_cli(cli_args(fixed, moving, tmp_path / "out") + FAST, cwd=tmp_path, prelude=prelude)
    assert (result.rc, result.stderr.strip()) == (1, "internal error: ZeroDivisionError: boom (please report it; run "
                                                     "with SHMOAREG_DEBUG=1 for the details)")
    debug = run_cli(cli_args(fixed, moving, tmp_path / "out") + FAST, cwd=tmp_path, prelude=prelude,
                    env={"SHMOAREG_DEBUG": "1"})
    assert debug.rc == 1 and "Traceback" in debug.stderr and "ZeroDivisionError: boom" in debug.stderr
