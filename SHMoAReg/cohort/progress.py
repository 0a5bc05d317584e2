"""Progress over the pairs of a cohort: one update per finished pair.

Three forms: a tqdm bar with the time left on a terminal (stderr is a TTY); plain lines on stderr
otherwise (``[3/40] case3: done (41.2 s); about 25 min left``); or, with ``--json-progress``, one JSON
object per line on stdout: ``{"stage": "pair", "progress": 0..1, "message", "id", "status", "error"}``.
"""
from __future__ import annotations

import json
import sys
import time

__all__ = ["PairProgress", "format_duration"]


def format_duration(seconds: float) -> str:
    """``42 s``, ``7 min``, ``2 h 05 min``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


class PairProgress:
    """Call it with each finished pair's results row; :meth:`close` at the end."""

    def __init__(self, total: int, json_lines: bool = False, stream=None) -> None:
        self.total = total
        self.finished = 0
        self.json_lines = json_lines
        self.stream = stream or sys.stderr
        self.start = time.monotonic()
        self.bar = None
        if not json_lines and total and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="pair", file=self.stream, dynamic_ncols=True)

    def _time_left(self) -> str:
        if not self.finished or self.finished >= self.total:
            return ""
        elapsed = time.monotonic() - self.start
        return f"; about {format_duration(elapsed / self.finished * (self.total - self.finished))} left"

    def __call__(self, row: dict) -> None:
        self.finished += 1
        status, error = row["status"], row.get("error") or ""
        if self.json_lines:
            print(json.dumps({"stage": "pair", "progress": round(self.finished / max(self.total, 1), 4),
                              "message": f"{row['id']}: {status}", "id": row["id"], "status": status,
                              "error": error}), flush=True)
        elif self.bar is not None:
            if status == "failed":
                self.bar.write(f"failed: {row['id']}: {error}", file=self.stream)
            self.bar.set_postfix_str(f"{row['id']}: {status}", refresh=False)
            self.bar.update(1)
        else:
            seconds = f" ({row['seconds']:.1f} s)" if isinstance(row.get("seconds"), float) else ""
            reason = f": {error}" if status == "failed" else ""
            print(f"[{self.finished}/{self.total}] {row['id']}: {status}{seconds}{reason}{self._time_left()}",
                  file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
