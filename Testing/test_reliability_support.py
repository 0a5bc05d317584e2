"""Helpers of the reliability tests (no tests here): tiny inputs, snapshots, and a fast CLI runner.

``run_cli`` runs ``python -m SHMoAReg ARGS`` in a separate process with its own exit code,
stdout, stderr, environment and signals. To keep ~60 CLI runs inside the time budget it
does not start a new interpreter each time (importing torch + MONAI takes ~7 s on 2 cores):
a *zygote* process imports the engine once and forks one child per run; the child executes
``SHMoAReg/__main__.py`` with :func:`runpy.run_module` exactly as ``python -m`` does.
``run_real_cli`` starts a genuine ``python -m SHMoAReg`` subprocess (used by a few tests to
show the two agree). A ``prelude`` (test-only Python code run in the child before the CLI)
injects faults such as a CUDA out-of-memory error or a kill in the middle of writing.
"""
from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
FAST = ["--iterations", "2", "--no-affine"]


# --------------------------------------------------------------------------- inputs

def blob(size: int = 12, shift: float = 0.0, seed: int = 0, dtype=np.float32, spacing: float = 2.0) -> sitk.Image:
    """A smooth blob plus noise: a tiny image that registers in a fraction of a second."""
    z, y, x = np.mgrid[:size, :size, :size].astype(np.float64)
    centre = size / 2
    array = 100 * np.exp(-((z - centre - shift) ** 2 + (y - centre) ** 2 + (x - centre) ** 2) / (size * 1.5))
    array += np.random.default_rng(seed).normal(0, 2, array.shape)
    image = sitk.GetImageFromArray(array.astype(dtype))
    image.SetSpacing([spacing] * 3)
    return image


def write(image: sitk.Image, path: Path, compress: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


def labels_like(image: sitk.Image, values=(1, 2)) -> sitk.Image:
    """A label map on ``image``'s grid: one box per value."""
    array = np.zeros(sitk.GetArrayViewFromImage(image).shape, np.uint8)
    for n, value in enumerate(values):
        array[2:-2, 2 + 4 * n:5 + 4 * n, 2:-2] = value
    labels = sitk.GetImageFromArray(array)
    labels.CopyInformation(image)
    return labels


def good_pair(folder: Path, **kwargs) -> tuple[Path, Path]:
    return (write(blob(**kwargs), folder / "fixed.nii.gz"),
            write(blob(shift=1.0, seed=1, **kwargs), folder / "moving.nii.gz"))


def dicom_series(folder: Path, uid: str, description: str, slices: int = 4, skip: tuple[int, ...] = ()) -> list[Path]:
    """Write a tiny CT series (8 x 8 x ``slices``, 2 mm apart) with SimpleITK; ``skip`` leaves slices out."""
    folder.mkdir(parents=True, exist_ok=True)
    volume = (blob(8, seed=3)[:, :, :slices] if slices <= 8 else blob(slices, seed=3)[:8, :8, :])
    array = sitk.GetArrayFromImage(sitk.Cast(volume, sitk.sitkInt16))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    files = []
    for index in range(slices):
        if index in skip:
            continue
        image = sitk.GetImageFromArray(array[index])
        image.SetSpacing((2.0, 2.0))
        for tag, value in {"0008|0060": "CT", "0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0020|000d": "1.2.3",
                           "0020|000e": uid, "0008|103e": description, "0020|0013": str(index + 1),
                           "0008|0018": f"{uid}.{index + 1}", "0020|0032": f"0\\0\\{2.0 * index}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": "2\\2", "0018|0050": "2"}.items():
            image.SetMetaData(tag, value)
        files.append(folder / f"{description.replace(' ', '_')}_{index:03d}.dcm")
        writer.SetFileName(str(files[-1]))
        writer.Execute(image)
    return files


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Content hash and modification time of every file under ``folder``."""
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def landmarks(path: Path, points) -> Path:
    path.write_text("x,y,z\n" + "".join(f"{a},{b},{c}\n" for a, b, c in points))
    return path


@pytest.fixture(scope="module")
def single_thread():
    """Tiny images run fastest on one thread (and 2 threads on a loaded 2-core machine are 30x slower)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# --------------------------------------------------------------------------- the CLI

@dataclass
class CliResult:
    rc: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def last_line(self) -> str:
        lines = self.stderr.strip().splitlines()
        return lines[-1] if lines else ""


def _zygote_main() -> None:
    """Import the engine once; for each JSON request on stdin fork a child that runs the CLI."""
    import runpy
    import traceback

    import SHMoAReg.cli  # warm imports, shared by every child
    import SHMoAReg.pipeline.run  # noqa: F401

    SHMoAReg.cli.build_parser()  # imports the plugin commands
    import torch
    import torch._inductor  # noqa: F401 - what torch.use_deterministic_algorithms imports (~3 s)

    torch.set_num_threads(1)  # tiny images; several threads only wait for each other on a busy machine

    channel = os.fdopen(os.dup(1), "w", buffering=1)
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setpgid(0, 0)
                for fd, name, flags in ((0, os.devnull, os.O_RDONLY),
                                        (1, request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                        (2, request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
                    os.dup2(os.open(name, flags, 0o666), fd)
                os.chdir(request["cwd"])
                os.environ.clear()
                os.environ.update(request["env"])
                signal.signal(signal.SIGINT, signal.default_int_handler)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                if request.get("uid") is not None:
                    os.setgid(request["uid"])
                    os.setuid(request["uid"])
                sys.argv = ["python -m SHMoAReg", *request["argv"]]
                exec(request.get("prelude") or "", {})
                try:
                    runpy.run_module("SHMoAReg", run_name="__main__", alter_sys=True)
                    code = 0
                except SystemExit as exit_:
                    code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
            except BaseException:  # noqa: BLE001 - what a real interpreter would print
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        channel.write(json.dumps({"pid": pid}) + "\n")
        _, status = os.waitpid(pid, 0)
        channel.write(json.dumps({"rc": os.waitstatus_to_exitcode(status)}) + "\n")


class _Zygote:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.process = subprocess.Popen([sys.executable, __file__, "--zygote"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, encoding="utf-8", errors="replace",
                                        bufsize=1, cwd=REPO)
        self.logs = Path(tempfile.mkdtemp(prefix="shmoareg-cli-logs-"))
        os.chmod(self.logs, 0o777)
        self.count = 0

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=10)
        shutil.rmtree(self.logs, ignore_errors=True)


_ZYGOTE: _Zygote | None = None


def _zygote() -> _Zygote:
    global _ZYGOTE
    if _ZYGOTE is None or _ZYGOTE.process.poll() is not None:
        _ZYGOTE = _Zygote()
        atexit.register(_ZYGOTE.close)
    return _ZYGOTE


class CliRun:
    """A running CLI child: ``pid``, ``stdout_text()`` while it runs, ``wait()`` for the result."""

    def __init__(self, argv: list[str], cwd: Path, env: dict | None, prelude: str, uid: int | None) -> None:
        self.zygote = _zygote()
        self.zygote.lock.acquire()
        self.zygote.count += 1
        stem = self.zygote.logs / f"run{self.zygote.count}"
        self.out, self.err = Path(f"{stem}.out"), Path(f"{stem}.err")
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("SHMOAREG_", "PYTEST"))}
        environment.update(env or {})
        request = {"argv": [str(a) for a in argv], "cwd": str(cwd), "env": environment, "stdout": str(self.out),
                   "stderr": str(self.err), "prelude": prelude, "uid": uid}
        self.start = time.monotonic()
        self.zygote.process.stdin.write(json.dumps(request) + "\n")
        self.pid = json.loads(self.zygote.process.stdout.readline())["pid"]
        self.result: CliResult | None = None

    def stdout_text(self) -> str:
        return self.out.read_text("utf-8", "replace") if self.out.exists() else ""

    def signal(self, number: int) -> None:
        os.kill(self.pid, number)

    def wait(self, timeout: float = 120.0) -> CliResult:
        if self.result is not None:
            return self.result
        timer = threading.Timer(timeout, lambda: _kill(self.pid))
        timer.start()
        try:
            rc = json.loads(self.zygote.process.stdout.readline())["rc"]
        finally:
            timer.cancel()
            self.zygote.lock.release()
        self.result = CliResult(rc, self.out.read_text("utf-8", "replace"), self.err.read_text("utf-8", "replace"),
                                time.monotonic() - self.start)
        return self.result


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_cli(argv, cwd: Path, env: dict | None = None, prelude: str = "", uid: int | None = None) -> CliRun:
    return CliRun(list(argv), cwd, env, prelude, uid)


def run_cli(argv, cwd: Path, env: dict | None = None, prelude: str = "", uid: int | None = None,
            timeout: float = 120.0) -> CliResult:
    """``python -m SHMoAReg ARGV`` in its own (forked) process; see the module docstring."""
    return start_cli(argv, cwd, env, prelude, uid).wait(timeout)


def run_real_cli(argv, cwd: Path, env: dict | None = None, timeout: float = 180.0) -> CliResult:
    """A genuine ``python -m SHMoAReg ARGV`` subprocess (slow to start: ~7 s of imports)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SHMOAREG_", "PYTEST"))}
    environment.update({"OMP_NUM_THREADS": "1", **(env or {})})
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "SHMoAReg", *map(str, argv)], cwd=cwd, env=environment,
                          capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=timeout)
    return CliResult(done.returncode, done.stdout, done.stderr, time.monotonic() - start)


def cli_args(fixed, moving, output, **options) -> list[str]:
    """Command-line arguments of ``register`` from the keyword arguments of the Python API."""
    argv = ["register", "--fixed", fixed, "--moving", moving, "--output-dir", output]
    for key, value in options.items():
        if value is True:
            argv.append("--" + key.replace("_", "-"))
        elif value is not None and value is not False:
            argv += ["--" + key.replace("_", "-"), value]
    return argv


if __name__ == "__main__" and sys.argv[1:] == ["--zygote"]:
    _zygote_main()
