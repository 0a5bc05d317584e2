"""The cohort report in a real headless browser (Debian's Chromium): the page renders offline, its table
sorts, and a screenshot can be taken. Skipped where Chromium is not installed (``apt-get install chromium``)."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from SHMoAReg.cohort.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"]


def _rows() -> list[dict]:
    return [{"id": "b", "status": "done", "preset": "abdomen-ct", "dice_before": 0.30, "dice_after": 0.71,
             "folding_percent": 0.0, "seconds": 90.0, "device": "cpu"},
            {"id": "a", "status": "done", "preset": "abdomen-ct", "dice_before": 0.40, "dice_after": 0.35,
             "folding_percent": 0.0, "seconds": 80.0, "device": "cpu"},
            {"id": "c", "status": "failed", "error": "fixed image: not a readable image file"}]


def _chromium(*arguments: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, *FLAGS, *arguments], capture_output=True, text=True, timeout=90)


def test_report_sorts_in_a_real_browser(tmp_path: Path) -> None:
    page = write_report(_rows(), tmp_path, "test cohort")
    for fragment, expected in (("", ["b", "a", "c"]), ("#sort=dice_after", ["a", "b", "c"]),
                               ("#sort=dice_after-desc", ["b", "a", "c"]), ("#sort=id", ["a", "b", "c"])):
        result = _chromium("--dump-dom", page.as_uri() + fragment)
        assert result.returncode == 0, result.stderr[-2000:]
        table = result.stdout[result.stdout.index('id="results"'):]
        order = re.findall(r'<td class="text" data-value="([abc])">', table)
        assert order == expected, (fragment, order)
    assert "mean Dice fell from 0.400 to 0.350" in page.read_text(encoding="utf-8")  # flagged at the top


def test_report_screenshot(tmp_path: Path) -> None:
    page = write_report(_rows(), tmp_path, "test cohort")
    shot = tmp_path / "report.png"
    result = _chromium(f"--screenshot={shot}", "--window-size=1200,800", page.as_uri())
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
