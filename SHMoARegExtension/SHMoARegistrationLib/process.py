"""Run the engine as a background process and follow its JSON progress lines.

The engine (``python -m SHMoAReg register ... --json-progress``) prints one JSON
object per line on stdout: ``{"stage": str, "progress": 0..1, "message": str}``,
ending with ``{"stage": "done", ...}`` or ``{"stage": "error", ...}``; its log goes
to stderr. Two reader threads collect both streams into thread-safe buffers; the
caller (a ``QTimer`` in the GUI, a wait loop in scripts) polls :meth:`EngineProcess.snapshot`
and :meth:`EngineProcess.take_log_lines` from its own thread. The threads never call
back into Slicer, Qt or ``logging``.

Cancelling sends SIGTERM to the engine's whole process group (the engine stops
cleanly and leaves no partial outputs), then SIGKILL after a grace period; on
Windows ``taskkill /T /F`` ends the process tree.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ProgressSnapshot", "EngineProcess"]


@dataclass(frozen=True)
class ProgressSnapshot:
    """What the engine reported last.

    Attributes:
        stage: the engine's stage name ("starting" before its first line).
        progress: overall fraction done, 0..1.
        message: the engine's message for that stage.
        elapsed_s: seconds since the process started.
        remaining_s: estimated seconds left (None until 2 % is done).
        running: True until the process has exited.
        returncode: exit status once it has exited.
        final: the engine's last ``done``/``error``/``cancelled`` object, if it printed one.
    """

    stage: str = "starting"
    progress: float = 0.0
    message: str = ""
    elapsed_s: float = 0.0
    remaining_s: float | None = None
    running: bool = True
    returncode: int | None = None
    final: Mapping | None = None


@dataclass
class _State:
    stage: str = "starting"
    progress: float = 0.0
    message: str = ""
    final: dict | None = None
    log: list[str] = field(default_factory=list)
    stderr_tail: list[str] = field(default_factory=list)


class EngineProcess:
    """One running engine process with its reader threads.

    Args:
        argv: the full command line (``[python, "-m", "SHMoAReg", "register", ...]``).
        env: environment for the process (None: inherit).
        cwd: working directory.
    """

    STDERR_TAIL_LINES = 50

    def __init__(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None):
        self.argv = [str(arg) for arg in argv]
        self._lock = threading.Lock()
        self._state = _State()
        self._cancelled = False
        self._kill_deadline: float | None = None
        self._start_time = time.monotonic()
        kwargs: dict = {}
        if sys.platform == "win32":
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True  # own process group: cancel kills the whole tree
        self._process = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env) if env is not None else None,
            cwd=str(cwd) if cwd is not None else None,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
            **kwargs,
        )
        self._threads = [
            threading.Thread(target=self._read_stdout, name="SHMoAReg-stdout", daemon=True),
            threading.Thread(target=self._read_stderr, name="SHMoAReg-stderr", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    # -- reader threads -------------------------------------------------------------
    def _read_stdout(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            line = line.strip()
            if not line:
                continue
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            with self._lock:
                if not isinstance(event, dict):
                    self._state.log.append(line)
                    continue
                self._state.stage = str(event.get("stage", self._state.stage))
                self._state.message = str(event.get("message", ""))
                try:
                    self._state.progress = min(max(float(event.get("progress", self._state.progress)), 0.0), 1.0)
                except (TypeError, ValueError):
                    pass
                if self._state.stage in ("done", "error", "cancelled"):
                    self._state.final = event
                self._state.log.append(f"[{self._state.stage} {self._state.progress:4.0%}] {self._state.message}")

    def _read_stderr(self) -> None:
        assert self._process.stderr is not None
        for line in self._process.stderr:
            line = line.rstrip()
            if not line:
                continue
            with self._lock:
                self._state.log.append(line)
                self._state.stderr_tail.append(line)
                del self._state.stderr_tail[: -self.STDERR_TAIL_LINES]

    # -- polling ----------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self._process.pid

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def snapshot(self) -> ProgressSnapshot:
        """The latest progress (cheap; call it from a timer). Escalates a pending cancel to a kill."""
        returncode = self._process.poll()
        if returncode is None and self._kill_deadline is not None and time.monotonic() > self._kill_deadline:
            self._kill()
            returncode = self._process.poll()
        running = returncode is None or any(thread.is_alive() for thread in self._threads)
        elapsed = time.monotonic() - self._start_time
        with self._lock:
            state = self._state
            remaining = None
            if running and state.progress >= 0.02:
                remaining = elapsed * (1.0 - state.progress) / state.progress
            return ProgressSnapshot(
                stage=state.stage,
                progress=state.progress,
                message=state.message,
                elapsed_s=elapsed,
                remaining_s=remaining,
                running=running,
                returncode=None if running else returncode,
                final=dict(state.final) if state.final else None,
            )

    def take_log_lines(self) -> list[str]:
        """Log lines (stderr and progress messages) received since the previous call."""
        with self._lock:
            lines, self._state.log = self._state.log, []
        return lines

    def error_message(self) -> str:
        """The engine's error: its ``error`` JSON message, else the last stderr lines."""
        with self._lock:
            if self._state.final and self._state.final.get("stage") == "error":
                return str(self._state.final.get("message", "unknown error"))
            tail = [line for line in self._state.stderr_tail if line.strip()]
        return tail[-1] if tail else f"the engine exited with status {self._process.returncode}"

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the process has exited and its output is read; returns its exit status (None on timeout)."""
        try:
            returncode = self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        for thread in self._threads:
            thread.join(timeout=5.0)
        return returncode

    # -- cancelling -------------------------------------------------------------------
    def cancel(self, grace_s: float = 10.0, wait: bool = True) -> None:
        """Stop the engine and all its children.

        SIGTERM goes to the whole process group (the engine stops at its next check and
        writes nothing); after ``grace_s`` seconds the group is killed. With ``wait=False``
        this returns at once and :meth:`snapshot` does the kill when the time is up
        (for a GUI timer); on Windows the tree is always ended with ``taskkill /T /F``.
        """
        self._cancelled = True
        if self._process.poll() is not None:
            return
        if sys.platform == "win32":
            subprocess.run(
                ["taskkill", "/T", "/F", "/PID", str(self._process.pid)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
            )
        else:
            self._signal_group(signal.SIGTERM)
        self._kill_deadline = time.monotonic() + grace_s
        if wait and self.wait(grace_s) is None:
            self._kill()
            self.wait(grace_s)

    def _kill(self) -> None:
        if sys.platform == "win32":
            self._process.kill()
        else:
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self._process.pid, signum)  # the group id is the leader's pid (start_new_session)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self._process.send_signal(signum)
        except ProcessLookupError:
            pass
