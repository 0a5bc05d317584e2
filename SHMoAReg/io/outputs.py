"""The output folder: refuse to clobber results, write everything at once.

Files are written into a hidden staging folder beside the target
(``.NAME.partial-PID-*``), which takes the target's place only when complete: with
``renameat2(RENAME_EXCHANGE)`` (Linux) the old and the new result swap in one atomic
step; elsewhere the old result is first moved aside (``.NAME.old-PID-*``). A kill at
any moment leaves either the old complete result or the new one (or, only on the
fallback, none - the next run then moves the old one back). Leftovers of killed runs
are removed by the next run. ``--overwrite`` replaces only a folder that holds an
SHMoAReg result (a ``report.json``), never a folder of other files such as the inputs.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import tempfile
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..conventions import learn2reg_displacement_image
from ..errors import InputError
from ..transforms.field_transform import write_transform
from .image_io import itk_reason, with_default_permissions, write_image

if TYPE_CHECKING:
    from ..pipeline import RegistrationResult

__all__ = ["OutputFolder", "cleanup_staging", "recover_leftovers"]

RESULT_MARKER = "report.json"
_STAGING: set[Path] = set()  # staging folders of this process, removed by cleanup_staging() on a forced exit


def cleanup_staging() -> None:
    """Remove this process's unfinished staging folders (used when the CLI is forced to exit)."""
    for folder in list(_STAGING):
        shutil.rmtree(folder, ignore_errors=True)
        _STAGING.discard(folder)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    error = ctypes.get_errno()
    if error in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not supported here
        return False
    raise OSError(error, os.strerror(error), str(b))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(path: Path, kind: str) -> list[Path]:
    """Hidden folders ``.NAME.KIND-PID-*`` beside ``path`` left by processes that no longer run."""
    found = []
    for candidate in path.parent.glob(f".{path.name}.{kind}-*") if path.parent.is_dir() else []:
        pid = candidate.name[len(f".{path.name}.{kind}-"):].split("-")[0]
        if candidate.is_dir() and pid.isdigit() and not _alive(int(pid)):
            found.append(candidate)
    return found


def recover_leftovers(path: str | os.PathLike) -> None:
    """Undo what killed runs (processes of this machine that no longer run) left beside the output folder
    ``path``: move an old result set aside back, remove their staging folders."""
    path = Path(path)
    for old in _leftovers(path, "old"):
        if not path.exists() and (old / "previous").is_dir():
            os.replace(old / "previous", path)
        shutil.rmtree(old, ignore_errors=True)
    for staging in _leftovers(path, "partial"):
        shutil.rmtree(staging, ignore_errors=True)


class OutputFolder:
    """The folder a run writes its results to, checked when created (before the run), written by :meth:`write`.

    Refuses an existing file, a folder with files (unless ``overwrite``), a folder that is not an
    SHMoAReg result even with ``overwrite``, and a location that cannot be written.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        self._recover()
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"output folder {self.path} exists and is a file")
        if self.path.is_dir() and any(self.path.iterdir()):
            if not overwrite:
                raise InputError(f"output folder {self.path} already holds files; choose another folder or pass "
                                 f"--overwrite")
            if not (self.path / RESULT_MARKER).is_file():
                raise InputError(f"output folder {self.path} holds files that are not an SHMoAReg result (no "
                                 f"{RESULT_MARKER}); refusing to replace it even with --overwrite")
        self._check_writable()

    def _check_writable(self) -> None:
        ancestor = self.path.parent if str(self.path.parent) else Path(".")
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if not ancestor.is_dir():
            raise InputError(f"cannot create the output folder {self.path}: {ancestor} is a file")
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".shmoareg-probe-", dir=ancestor))
        except OSError as error:
            raise InputError(f"cannot write into {ancestor}: {(error.strerror or str(error)).lower()}") from None

    def _recover(self) -> None:
        recover_leftovers(self.path)

    def write(self, result: "RegistrationResult", l2r_displacement: bool = False, workers: int = 1) -> Path:
        """Write ``result`` (its images ``workers`` at a time) and put the folder in place; the report gains
        ``timings_s["write"]``, the seconds the other files took."""
        staging = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            staging = with_default_permissions(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-{os.getpid()}-",
                                                                dir=self.path.parent), directory=True)
            _STAGING.add(staging)
            self._write_files(staging, result, l2r_displacement, workers)
            self._swap_in(staging)
        except (OSError, RuntimeError) as error:
            if isinstance(error, RuntimeError) and "SimpleITK" not in str(error):
                raise  # not a failed write: a bug, reported as such
            reason = error.strerror if isinstance(error, OSError) and error.strerror else itk_reason(error)
            raise InputError(f"could not write the results to {self.path}: {reason}; nothing was written") from None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
                _STAGING.discard(staging)
        return self.path

    @staticmethod
    def _write_files(folder: Path, result: "RegistrationResult", l2r_displacement: bool, workers: int) -> None:
        """Every file of ``result`` into ``folder``, the report last. The images are written ``workers`` at a
        time (SimpleITK compresses without holding Python's lock: two writers on two cores took 1.9 s instead of
        3.1 s for a 175x131x155 result with its expert maps). A failure cancels the writes not yet begun; of the
        images that failed, the first in the list below is reported. The transforms (~0.05 s) follow, one after
        the other: HDF5 is not safe across threads, and prints its own diagnostics on a failed write, so it is
        not tried when an image failed."""
        started = time.perf_counter()
        images = [(result.displacement, "displacement.nii.gz"), (result.warped, "warped.nii.gz"),
                  (result.jacobian, "jacobian.nii.gz"), (result.warped_labels, "warped_labels.nii.gz"),
                  (result.velocity, "velocity.nii.gz")]  # largest first
        if l2r_displacement:
            images.append((learn2reg_displacement_image(result.displacement), "displacement_l2r_voxels.nii.gz"))
        if result.expert_maps:
            (folder / "experts").mkdir()
            (folder / "experts" / "experts.json").write_text(json.dumps(result.utilisation, indent=2))
            images += [(image, f"experts/{name}.nii.gz") for name, image in result.expert_maps.items()]
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            pending = [pool.submit(write_image, image, folder / name) for image, name in images if image is not None]
            wait(pending, return_when=FIRST_EXCEPTION)
        finally:  # after a failure or an interruption (Ctrl+C) only the writes under way are finished
            pool.shutdown(wait=True, cancel_futures=True)
        for task in pending:
            if not task.cancelled():
                task.result()
        write_transform(result.transform, folder / "transform.h5")
        if result.inverse_transform is not None:
            write_transform(result.inverse_transform, folder / "inverse_transform.h5")
        result.report.setdefault("timings_s", {})["write"] = round(time.perf_counter() - started, 3)
        (folder / RESULT_MARKER).write_text(json.dumps(result.report, indent=2, default=_jsonable))

    def _swap_in(self, staging: Path) -> None:
        """Put ``staging`` at ``self.path``; afterwards ``staging`` holds the old result (or nothing)."""
        if self.path.exists():
            if _exchange(staging, self.path):
                return
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-{os.getpid()}-", dir=self.path.parent))
            os.replace(self.path, old / "previous")
            os.replace(staging, self.path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, self.path)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
