"""Progress reporting and cancellation for long runs.

The pipeline reports ``(stage, fraction_of_stage, message)``; :class:`Progress`
turns it into an overall fraction using each stage's share of the run and sends it
to a sink (JSON lines for GUIs, tqdm on a console, or any callable).
"""
from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable

__all__ = ["STAGES", "Progress", "CancelFlag", "json_lines_sink", "tqdm_sink"]

# stage -> (start, end) of the overall progress
STAGES = {
    "read": (0.0, 0.05), "affine": (0.05, 0.2), "resample": (0.2, 0.25), "network": (0.25, 0.35),
    "optimise": (0.35, 0.85), "outputs": (0.85, 0.95), "metrics": (0.95, 0.98), "inverse": (0.98, 1.0),
    "done": (1.0, 1.0),
}

Sink = Callable[[str, float, str], None]


class CancelFlag:
    """A thread-safe cancel request; calling it answers "has the user cancelled?"."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def __call__(self) -> bool:
        return self._event.is_set()


class Progress:
    """Maps per-stage fractions to an overall fraction in [0, 1] and forwards them to ``sink``."""

    def __init__(self, sink: Sink | None = None, min_interval_s: float = 0.2) -> None:
        self.sink = sink
        self.min_interval_s = min_interval_s
        self._last = 0.0

    def __call__(self, stage: str, fraction: float = 0.0, message: str = "") -> None:
        if self.sink is None:
            return
        now = time.monotonic()
        if 0.0 < fraction < 1.0 and now - self._last < self.min_interval_s:
            return
        self._last = now
        start, end = STAGES.get(stage, (0.0, 1.0))
        self.sink(stage, start + (end - start) * min(max(fraction, 0.0), 1.0), message)

    def stage(self, stage: str) -> Callable[[float, str], None]:
        """A ``(fraction, message)`` callback bound to one stage."""
        return lambda fraction, message="": self(stage, fraction, message)


def json_lines_sink(stream=None) -> Sink:
    def sink(stage: str, overall: float, message: str) -> None:
        out = stream or sys.stdout
        out.write(json.dumps({"stage": stage, "progress": round(overall, 4), "message": message}) + "\n")
        out.flush()
    return sink


def tqdm_sink() -> Sink:
    from tqdm import tqdm

    bar = tqdm(total=1000, unit="", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}", file=sys.stderr)

    def sink(stage: str, overall: float, message: str) -> None:
        bar.n = int(round(overall * 1000))
        bar.set_description(stage)
        bar.set_postfix_str(message, refresh=False)
        bar.refresh()
        if stage == "done":
            bar.close()
    return sink
