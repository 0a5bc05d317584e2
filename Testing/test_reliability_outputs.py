"""The output folder: never clobbered by mistake, never half-written, write errors reported clearly.

The kill tests run ``python -m SHMoAReg register`` in its own process and ``kill -9`` it: once at
every step of writing the results (a prelude kills the process right before or after each file
write and each rename), and at random moments of whole runs. After every kill the output folder
must be absent, the old complete result (byte for byte), or the new complete result - never
partial; the next run removes what the killed one left behind.
"""
from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path

import pytest
import SimpleITK as sitk

from SHMoAReg.errors import InputError
from SHMoAReg.io.outputs import OutputFolder
from SHMoAReg.io.validation import gzip_length
from test_reliability_support import FAST, cli_args, good_pair, labels_like, run_cli, snapshot, start_cli, write
from test_reliability_support import single_thread  # noqa: F401 - a fixture, used by pytestmark

RESULT_FILES = {"warped.nii.gz", "transform.h5", "displacement.nii.gz", "jacobian.nii.gz", "report.json"}

pytestmark = pytest.mark.usefixtures("single_thread")


def _register(fixed: Path, moving: Path, output: Path, **options):
    from SHMoAReg import register

    return register(fixed, moving, output, iterations=2, affine=False, device="cpu", **options)


def _is_complete_result(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    if names != RESULT_FILES:
        return False
    json.loads((folder / "report.json").read_text())
    for name in names - {"report.json", "transform.h5"}:
        gzip_length(folder / name)
        sitk.ReadImage(str(folder / name))
    sitk.ReadTransform(str(folder / "transform.h5"))
    return True


def _content(folder: Path) -> dict:
    return {k: v[0] for k, v in snapshot(folder).items()}


def _transform_values(path: Path) -> list:
    """What a transform file holds (HDF5 also stores object timestamps, which differ across a second boundary)."""
    composite = sitk.CompositeTransform(sitk.ReadTransform(str(path)))
    return [(t.GetName(), t.GetFixedParameters(), t.GetParameters())
            for t in (composite.GetNthTransform(n) for n in range(composite.GetNumberOfTransforms()))]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ---------------------------------------------------------------------------- refusing to clobber

def test_existing_result_is_refused_without_overwrite(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    _register(fixed, moving, tmp_path / "out")
    before = snapshot(tmp_path)
    message = f"output folder {tmp_path / 'out'} already holds files; choose another folder or pass --overwrite"
    with pytest.raises(InputError, match="^" + message.replace("(", r"\(") + "$"):
        _register(fixed, moving, tmp_path / "out")
    result = run_cli(cli_args(fixed, moving, tmp_path / "out") + FAST, cwd=tmp_path)
    assert (result.rc, result.last_line) == (2, f"error: {message}")
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_a_result_atomically(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    _register(fixed, moving, tmp_path / "out")
    old = _content(tmp_path / "out")
    result = run_cli(cli_args(fixed, moving, tmp_path / "out", overwrite=True, seed="3") + FAST, cwd=tmp_path)
    assert result.rc == 0, result.stderr
    assert _is_complete_result(tmp_path / "out") and _content(tmp_path / "out") != old
    assert _leftovers(tmp_path) == []


def test_overwrite_never_replaces_other_files(tmp_path: Path) -> None:
    """``-o`` pointing at the inputs' folder with ``--overwrite`` must not delete the inputs."""
    fixed, moving = good_pair(tmp_path / "in")
    before = snapshot(tmp_path)
    message = (f"output folder {tmp_path / 'in'} holds files that are not an SHMoAReg result (no report.json); "
               f"refusing to replace it even with --overwrite")
    with pytest.raises(InputError) as error:
        _register(fixed, moving, tmp_path / "in", overwrite=True)
    assert str(error.value) == message
    result = run_cli(cli_args(fixed, moving, tmp_path / "in", overwrite=True) + FAST, cwd=tmp_path)
    assert (result.rc, result.last_line) == (2, f"error: {message}")
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["output is a file", "parent is a file"])
def test_output_path_through_a_file(where: str, tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    (tmp_path / "in" / "notes.txt").write_text("x")
    if where == "output is a file":
        output = tmp_path / "in" / "notes.txt"
        message = f"output folder {output} exists and is a file"
    else:
        output = tmp_path / "in" / "notes.txt" / "out"
        message = f"cannot create the output folder {output}: {tmp_path / 'in' / 'notes.txt'} is a file"
    before = snapshot(tmp_path)
    with pytest.raises(InputError) as error:
        _register(fixed, moving, output)
    assert str(error.value) == message
    result = run_cli(cli_args(fixed, moving, output) + FAST, cwd=tmp_path)
    assert (result.rc, result.last_line) == (2, f"error: {message}")
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- permission and disk errors

def test_permission_denied_is_refused_before_the_run() -> None:
    """A real permission error: as root the CLI child drops to user ``nobody`` first."""
    folder = Path(tempfile.mkdtemp(prefix="shmoareg-perm-", dir="/tmp"))
    try:
        os.chmod(folder, 0o755)
        fixed, moving = good_pair(folder / "in")
        for path in (folder / "in", fixed, moving):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        locked = folder / "locked"
        locked.mkdir(mode=0o555)
        os.chmod(locked, 0o555)
        uid = 65534 if os.geteuid() == 0 else None
        before = snapshot(folder)
        result = run_cli(cli_args(fixed, moving, locked / "out") + FAST, cwd=folder, uid=uid)
        assert (result.rc, result.last_line) == (2, f"error: cannot write into {locked}: permission denied"), \
            result.stderr
        assert snapshot(folder) == before and list(locked.iterdir()) == []
    finally:
        os.chmod(folder / "locked", stat.S_IRWXU)
        shutil.rmtree(folder, ignore_errors=True)


def test_disk_full_while_writing_keeps_the_old_result(tmp_path: Path, monkeypatch) -> None:
    import SHMoAReg.io.outputs as outputs

    fixed, moving = good_pair(tmp_path / "in")
    _register(fixed, moving, tmp_path / "out")
    old = snapshot(tmp_path / "out")
    calls = []

    def full(image, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(image, path, *args, **kwargs)

    real = outputs.write_image
    monkeypatch.setattr(outputs, "write_image", full)
    with pytest.raises(InputError) as error:
        _register(fixed, moving, tmp_path / "out", overwrite=True)
    assert str(error.value) == (f"could not write the results to {tmp_path / 'out'}: No space left on device; "
                                f"nothing was written")
    assert snapshot(tmp_path / "out") == old and _leftovers(tmp_path) == []


def test_file_size_limit_in_the_cli(tmp_path: Path) -> None:
    """A real write failure: the child may write at most 1 KiB per file (RLIMIT_FSIZE, SIGXFSZ ignored).

    SimpleITK itself reports nothing: it silently cuts the ``.nii.gz`` short (the check in write_image finds it).
    The images are written first, largest first, so the displacement is the file named; the HDF5 transform is not
    tried after a failed image, so HDF5's own diagnostics do not reach the screen either (the last line is ours).
    """
    fixed, moving = good_pair(tmp_path / "in")
    prelude = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
               "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))")
    result = run_cli(cli_args(fixed, moving, tmp_path / "out") + FAST, cwd=tmp_path, prelude=prelude)
    assert (result.rc, result.last_line) == (2, f"error: could not write the results to {tmp_path / 'out'}: writing "
                                                f"displacement.nii.gz failed: the file on disk is incomplete (disk full or "
                                                f"file too large?); nothing was written"), result.stderr
    assert "HDF5" not in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in"]


# ---------------------------------------------------------------------------- kill -9

# Test-only code run in the CLI child: SIGKILL itself at write event number {event} - before each file
# write, before/after the swap of the staging folder into place (and each rename inside it).
KILL_AT = """
import os, signal
import SHMoAReg.io.outputs as outputs
_events, _swapping = [0], [False]
def _point():
    _events[0] += 1
    if _events[0] == {event}:
        os.kill(os.getpid(), signal.SIGKILL)
def _before(function):
    def wrapped(*args, **kwargs):
        _point()
        return function(*args, **kwargs)
    return wrapped
for _name in ("write_image", "write_transform"):
    setattr(outputs, _name, _before(getattr(outputs, _name)))
outputs.Path.write_text = _before(outputs.Path.write_text)
_swap_in = outputs.OutputFolder._swap_in
def _swap(self, staging):
    _swapping[0] = True
    _point()
    _swap_in(self, staging)
    _point()
    _swapping[0] = False
outputs.OutputFolder._swap_in = _swap
_replace = os.replace
def _counted_replace(a, b):
    if _swapping[0]:
        _point()
    _replace(a, b)
    if _swapping[0]:
        _point()
outputs.os.replace = _counted_replace
if {no_exchange}:
    outputs._exchange = lambda a, b: False
"""


def _check_after_kill(output: Path, old: dict | None) -> str:
    """The state of ``output`` after a kill: absent, the old result or the new complete one - never partial."""
    if not output.exists() and old is not None:
        OutputFolder(output, overwrite=True)  # what the next run does first: move the old result back
        assert output.exists(), "a killed --overwrite run must leave the old result, or it must be recoverable"
        assert _content(output) == old
        return "old (restored by the next run)"
    if not output.exists():
        return "absent"
    if old is not None and _content(output) == old:
        return "old"
    assert _is_complete_result(output), f"partial output after a kill: {sorted(os.listdir(output))}"
    return "new"


@pytest.mark.parametrize("variant", ["new folder", "overwrite", "overwrite without renameat2"])
def test_kill_at_every_step_of_writing(variant: str, tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    output = tmp_path / "out"
    overwrite = variant != "new folder"
    argv = cli_args(fixed, moving, output, overwrite=overwrite) + FAST
    if overwrite:
        assert run_cli(cli_args(fixed, moving, output, seed="7") + FAST, cwd=tmp_path).rc == 0
    old = _content(output) if overwrite else None
    states, event = [], 1
    while True:
        prelude = KILL_AT.format(event=event, no_exchange=variant == "overwrite without renameat2")
        result = run_cli(argv, cwd=tmp_path, prelude=prelude)
        if result.rc == 0:
            break  # the run got past the last kill point
        assert result.rc == -signal.SIGKILL, result.stderr
        states.append(_check_after_kill(output, old))
        if not overwrite:
            shutil.rmtree(output, ignore_errors=True)  # each kill starts from "no result yet"
        event += 1
    assert event >= 7, "the kill points must cover every file write and the swap"
    assert "new" in states and ("absent" in states if not overwrite else any(s.startswith("old") for s in states))
    assert _is_complete_result(output)
    assert _leftovers(tmp_path) == [], "the next run removes what killed runs left behind"
    KILL_REPORT[variant] = states


def test_kill_at_random_moments(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    output = tmp_path / "out"
    start = time.monotonic()
    assert run_cli(cli_args(fixed, moving, output, seed="7") + FAST, cwd=tmp_path).rc == 0
    duration = time.monotonic() - start
    old = _content(output)
    rng, states = random.Random(20240607), []
    for _ in range(20):
        run = start_cli(cli_args(fixed, moving, output, overwrite=True) + FAST, cwd=tmp_path)
        time.sleep(rng.uniform(0.0, duration * 1.2))
        try:
            run.signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        result = run.wait()
        assert result.rc in (0, -signal.SIGKILL)
        states.append(_check_after_kill(output, old))
        old = _content(output)
    KILL_REPORT["random moments of whole runs, --overwrite"] = states


KILL_REPORT: dict[str, list[str]] = {}


def test_kill_report() -> None:
    """Prints the kill-during-write results (run with -s) for docs/reliability.md."""
    for variant, states in KILL_REPORT.items():
        counts = {s: states.count(s) for s in sorted(set(states))}
        print(f"\nkill -9 during write ({variant}): {len(states)} kill points -> {counts}; partial: 0")


def test_results_get_the_permissions_of_ordinary_files(tmp_path: Path) -> None:
    """Atomic writes go through mkstemp/mkdtemp (private 0600/0700); the results must end up readable as any file
    the user writes (0666/0777 less the umask), so colleagues and cluster jobs can open them."""
    mask = os.umask(0)
    os.umask(mask)
    fixed, moving = good_pair(tmp_path / "in")
    _register(fixed, moving, tmp_path / "out")
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o777 & ~mask
    for name in ("warped.nii.gz", "transform.h5", "displacement.nii.gz", "report.json"):
        assert stat.S_IMODE((tmp_path / "out" / name).stat().st_mode) == 0o666 & ~mask, name


def test_parallel_writers_write_what_one_writer_writes(tmp_path: Path) -> None:
    """The images are written ``workers`` at a time (the run's thread count): the same files, byte for byte, as
    one writer; the report says how long writing took (``timings_s.write``, which ``total`` leaves out)."""
    fixed, moving = good_pair(tmp_path / "in")
    result = _register(fixed, moving, None, fixed_labels=write(labels_like(sitk.ReadImage(str(fixed))),
                                                                tmp_path / "in" / "labels.nii.gz"),
                       moving_labels=tmp_path / "in" / "labels.nii.gz")
    written, transforms = {}, {}
    for workers in (1, 2, 3):
        OutputFolder(tmp_path / f"out{workers}").write(result, workers=workers)
        written[workers] = {name: digest for name, digest in _content(tmp_path / f"out{workers}").items()
                            if name not in ("report.json", "transform.h5")}
        transforms[workers] = _transform_values(tmp_path / f"out{workers}" / "transform.h5")
        report = json.loads((tmp_path / f"out{workers}" / "report.json").read_text())
        assert report["timings_s"]["write"] > 0
    assert set(written[1]) == RESULT_FILES - {"report.json", "transform.h5"} | {"warped_labels.nii.gz"}
    assert written[1] == written[2] == written[3]
    assert transforms[1] == transforms[2] == transforms[3] and len(transforms[1][-1][2]) > 0
