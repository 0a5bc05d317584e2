"""The output folder: refuse to clobber results, write everything at once.

Files are written into a hidden temporary folder beside the target, which is
renamed into place only when complete; an existing result is replaced only with
``overwrite``. A kill at any moment leaves either the old complete result or none.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from .errors import InputError
from .field_transform import write_transform
from .image_io import write_image

if TYPE_CHECKING:
    from .pipeline import RegistrationResult

__all__ = ["OutputFolder"]


class OutputFolder:
    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"output folder {self.path} exists and is a file")
        if self.path.is_dir() and any(self.path.iterdir()) and not overwrite:
            raise InputError(f"output folder {self.path} already holds files; choose another folder or pass --overwrite")
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if parent.exists() and not os.access(parent, os.W_OK):
            raise InputError(f"cannot write into {parent}: permission denied")

    def write(self, result: "RegistrationResult", l2r_displacement: bool = False) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.partial-", dir=self.path.parent))
        try:
            self._write_files(staging, result, l2r_displacement)
            self._swap_in(staging)
        except OSError as error:
            shutil.rmtree(staging, ignore_errors=True)
            raise InputError(f"could not write the results to {self.path}: {error.strerror or error}") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return self.path

    @staticmethod
    def _write_files(folder: Path, result: "RegistrationResult", l2r_displacement: bool) -> None:
        write_image(result.warped, folder / "warped.nii.gz")
        write_transform(result.transform, folder / "transform.h5")
        write_image(result.displacement, folder / "displacement.nii.gz")
        write_image(result.jacobian, folder / "jacobian.nii.gz")
        if result.warped_labels is not None:
            write_image(result.warped_labels, folder / "warped_labels.nii.gz")
        if result.expert_maps:
            (folder / "experts").mkdir()
            for name, image in result.expert_maps.items():
                write_image(image, folder / "experts" / f"{name}.nii.gz")
            (folder / "experts" / "experts.json").write_text(json.dumps(result.utilisation, indent=2))
        if l2r_displacement:
            _write_l2r(folder / "displacement_l2r_voxels.nii.gz", result)
        (folder / "report.json").write_text(json.dumps(result.report, indent=2, default=_jsonable))

    def _swap_in(self, staging: Path) -> None:
        old = None
        if self.path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.old-", dir=self.path.parent))
            os.replace(self.path, old / "previous")
        os.replace(staging, self.path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _write_l2r(path: Path, result: "RegistrationResult") -> None:
    """Learn2Reg convention: the total fixed->moving displacement in voxels of the FIXED image grid.

    Component c is the displacement along index axis c (i, j, k), i.e. along array
    axis c of the image as nibabel loads it - the layout of Learn2Reg's evaluation.
    """
    fixed = result.displacement
    mm = sitk.GetArrayFromImage(fixed).astype(np.float64)
    from .conventions import mm_to_voxel

    voxels = mm_to_voxel(mm, fixed)  # (3, D, H, W)
    image = sitk.GetImageFromArray(np.moveaxis(voxels[::-1], 0, -1).astype(np.float32), isVector=True)
    image.CopyInformation(fixed)
    write_image(image, path)


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
