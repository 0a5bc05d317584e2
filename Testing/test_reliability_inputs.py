"""Every unusable input gets one exact message, exit code 2, nothing written, inputs untouched.

Each case of ``CASES`` runs twice: through the Python API (``SHMoAReg.register``) and through
``python -m SHMoAReg register`` in its own process (see ``test_reliability_support``). The
messages are the ones listed in ``docs/reliability.md``. Usable-but-unusual inputs (every
pixel type, 100 mm voxels, a DICOM series picked among several, labels present in one
image only, a pair without overlap when the affine pre-alignment is on) must succeed.
"""
from __future__ import annotations

import gzip
import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SHMoAReg.errors import InputError
from test_reliability_support import (FAST, blob, cli_args, dicom_series, good_pair, labels_like, landmarks, run_cli,
                                      run_real_cli, snapshot, write)
from test_reliability_support import single_thread  # noqa: F401 - a fixture, used by pytestmark

pytestmark = pytest.mark.usefixtures("single_thread")


@dataclass
class Case:
    """A bad input: ``build(folder)`` writes the inputs and returns ``(register kwargs, expected message)``."""

    name: str
    build: Callable[[Path], tuple[dict, str]]
    env: dict = field(default_factory=dict)


CASES: list[Case] = []


def case(name: str, **env):
    def register_case(build):
        CASES.append(Case(name, build, env))
        return build
    return register_case


def _pair(folder: Path, fixed: Path | None = None, moving: Path | None = None, **extra) -> dict:
    good_fixed, good_moving = good_pair(folder)
    return {"fixed": fixed or good_fixed, "moving": moving or good_moving, **extra}


def _fixed(folder: Path, image: sitk.Image, name: str, compress: bool = True) -> Path:
    return write(image, folder / name, compress)


def _cut(path: Path, count: int) -> tuple[int, int]:
    data = path.read_bytes()
    path.write_bytes(data[:-count])
    return len(data), len(data) - count


def _patch(path: Path, offset: int, fmt: str, *values) -> Path:
    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    path.write_bytes(bytes(data))
    return path


def _raw_header_file(d: Path, name: str, header: str) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(header.encode() + sitk.GetArrayFromImage(blob()).astype("<f4").tobytes())
    return d / name


# ---------------------------------------------------------------------------- shape and pixel type

@case("2-D image")
def _(d):
    f = _fixed(d, sitk.GetImageFromArray(np.random.default_rng(0).normal(size=(12, 12)).astype(np.float32)), "f.nii.gz")
    return _pair(d, f), f"fixed image ({f}): expected a 3-D image, got a 2-D image of size (12, 12)"


@case("4-D image")
def _(d):
    f = _fixed(d, sitk.JoinSeries([blob(), blob(seed=2)]), "f.nii.gz")
    return _pair(d, f), f"fixed image ({f}): expected a 3-D image, got a 4-D image of size (12, 12, 12, 2)"


@case("vector image")
def _(d):
    f = _fixed(d, sitk.Compose([blob(), blob(seed=2), blob(seed=3)]), "f.nii.gz")
    return _pair(d, f), f"fixed image ({f}): expected a scalar image, got 3 components per voxel"


@case("moving image 2-D")
def _(d):
    m = _fixed(d, sitk.GetImageFromArray(np.ones((12, 12), np.float32)), "m.nrrd")
    return _pair(d, moving=m), f"moving image ({m}): expected a 3-D image, got a 2-D image of size (12, 12)"


@case("a dimension of size 1")
def _(d):
    f = _fixed(d, blob()[:, :, 5:6], "f.nii.gz")
    return _pair(d, f), f"fixed image ({f}): every axis needs at least 2 voxels, got size (12, 12, 1)"


@case("complex pixels")
def _(d):
    f = _fixed(d, sitk.RealAndImaginaryToComplex(blob(), blob(seed=2)), "f.nii")
    return _pair(d, f), (f"fixed image ({f}): complex voxels (NIfTI datatype 32) are not supported; give a "
                         f"real-valued (e.g. magnitude) image")


@case("float64 beyond float32 range")
def _(d):
    array = sitk.GetArrayFromImage(blob()).astype(np.float64)
    array[3, 3, 3] = 1e300
    f = _fixed(d, sitk.GetImageFromArray(array), "f.nrrd")
    return _pair(d, f), (f"fixed image ({f}): voxel values up to 1e+300 exceed the float32 range (at most "
                         f"3.4e+38); rescale the image")


# ---------------------------------------------------------------------------- damaged files

@case("missing file")
def _(d):
    return _pair(d, d / "nothing.nii.gz"), f"{d / 'nothing.nii.gz'}: no such file or folder"


@case("empty file")
def _(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "f.nii.gz").write_bytes(b"")
    return _pair(d, d / "f.nii.gz"), f"{d / 'f.nii.gz'}: the file is empty"


@case("truncated .nii.gz")
def _(d):
    f = _fixed(d, blob(), "f.nii.gz")
    _cut(f, f.stat().st_size // 2)
    return _pair(d, f), f"{f}: the compressed file is truncated (the gzip stream ends early)"


@case("truncated .nii.gz, gzip trailer only")
def _(d):
    f = _fixed(d, blob(), "f.nii.gz")
    _cut(f, 4)  # SimpleITK reads all voxels; the CRC/length trailer is missing
    return _pair(d, f), f"{f}: the compressed file is truncated (the gzip stream ends early)"


for _name, _count in (("f.nii", 100), ("f.nrrd", 1), ("f.mha", 1), ("f.vtk", 1)):
    def _truncated(d, name=_name, count=_count):
        f = _fixed(d, blob(), name, compress=False)
        need, have = _cut(f, count)
        return _pair(d, f), (f"{f}: the file is truncated: the header describes {need} bytes of header and voxel "
                             f"data but the file holds {have}")
    CASES.append(Case(f"truncated uncompressed {_name[1:]}", _truncated))


@case("truncated Analyze .hdr/.img")
def _(d):
    f = _fixed(d, blob(), "f.hdr", compress=False)
    need, have = _cut(d / "f.img", 1)
    return _pair(d, f), (f"{d / 'f.img'}: the file is truncated: the header describes {need} bytes of header and "
                         f"voxel data but the file holds {have}")


@case("truncated compressed .mha")
def _(d):
    f = _fixed(d, blob(), "f.mha", compress=True)
    _cut(f, 20)
    data = f.read_bytes()
    start = data.index(b"ElementDataFile = LOCAL\n") + len(b"ElementDataFile = LOCAL\n")
    have = len(zlib.decompressobj().decompress(data[start:]))
    return _pair(d, f), (f"{f}: the compressed voxel data is truncated or corrupt: it holds {have} of the "
                         f"{12 ** 3 * 4} bytes the header describes")


@case("not an image (text named .nii)")
def _(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "f.nii").write_bytes(b"not an image at all\n" * 50)
    return _pair(d, d / "f.nii"), (f"{d / 'f.nii'}: not a readable image: no SimpleITK reader recognises the file "
                                   f"(NIfTI, NRRD, MetaImage, DICOM ... or a DICOM folder)")


@case("not gzip (text named .nii.gz)")
def _(d):
    d.mkdir(parents=True, exist_ok=True)
    (d / "f.nii.gz").write_bytes(b"not an image at all\n" * 50)
    return _pair(d, d / "f.nii.gz"), f"{d / 'f.nii.gz'}: the compressed file is corrupt (Not a gzipped file (b'no'))"


@case("corrupt NIfTI datatype")
def _(d):
    f = _patch(_fixed(d, blob(), "f.nii", compress=False), 70, "<h", 999)
    return _pair(d, f), f"{f}: the NIfTI header gives an unknown datatype code 999"


@case("corrupt NRRD header")
def _(d):
    d.mkdir(parents=True, exist_ok=True)
    f = d / "f.nrrd"
    f.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 12 12\nencoding: raw\n\n" + bytes(12 ** 3 * 4))
    return _pair(d, f), (f"{f}: not a readable image: the Nrrd header is invalid ([nrrd] _nrrdReadNrrdParse_sizes: "
                         f"parsed 2 values, but dimension is 3)")


@case("corrupt MetaImage header (SimpleITK hangs or crashes on it)")
def _(d):
    f = _raw_header_file(d, "f.mha", "ObjectType = Image\nNDims = 1e308 1e308 1e308\nDimSize = 12 12 12\n"
                                     "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    return _pair(d, f), (f"{f}: the MetaImage header is invalid: NDims = '1e308 1e308 1e308' (expected an integer "
                         f"from 1 to 6)")


@case("MetaImage spacing 1e308 (SimpleITK hangs on it)")
def _(d):
    f = _raw_header_file(d, "f.mha", "ObjectType = Image\nNDims = 3\n"
                                     "TransformMatrix = 1 0 0 1.2462136971377158 1 0 0 0 1\n"
                                     "ElementSpacing = 1e308 1e308 1e308\nDimSize = 12 12 12\nElementType = MET_FLOAT\n"
                                     "ElementDataFile = LOCAL\n")
    return _pair(d, f), (f"{f}: the MetaImage header gives ElementSpacing (1e+308, 1e+308, 1e+308); spacings above "
                         f"100000 mm are not supported")


@case("NIfTI sform with an infinite offset")
def _(d):
    f = _patch(_fixed(d, blob(), "f.nii", compress=False), 280 + 7 * 4, "<f", float("inf"))  # srow_y[3]
    srow = struct.unpack("<12f", f.read_bytes()[280:328])
    return _pair(d, f), f"{f}: the NIfTI sform matrix is invalid ({tuple(float(round(v, 4)) for v in srow)})"


@case("VTK DIMENSIONS contradict POINT_DATA")
def _(d):
    f = _fixed(d, blob(), "f.vtk", compress=False)
    f.write_bytes(f.read_bytes().replace(b"DIMENSIONS 12 12 12", b"DIMENSIONS 12 12 99999999", 1))
    return _pair(d, f), f"{f}: the VTK header is invalid: DIMENSIONS '12 12 99999999' does not match POINT_DATA '1728'"


@case("VTK DIMENSIONS unparsable (SimpleITK reads uninitialised memory)")
def _(d):
    f = _fixed(d, blob(), "f.vtk", compress=False)
    f.write_bytes(f.read_bytes().replace(b"DIMENSIONS 12 12 12", b"DIMENSIONS\x9f12 12 12", 1))
    return _pair(d, f), f"{f}: the VTK header is invalid: DIMENSIONS '\\x9f12 12 12' (expected 3 integers)"


# ---------------------------------------------------------------------------- DICOM folders

UID_A, UID_B = "1.2.826.0.1.3680043.8.498.101", "1.2.826.0.1.3680043.8.498.102"


@case("DICOM folder without series")
def _(d):
    (d / "dicom").mkdir(parents=True)
    (d / "dicom" / "readme.txt").write_text("no images here\n")
    return _pair(d, d / "dicom"), f"{d / 'dicom'}: the folder holds no DICOM series"


@case("DICOM folder with two series")
def _(d):
    dicom_series(d / "dicom", UID_A, "arterial")
    dicom_series(d / "dicom", UID_B, "venous")
    return _pair(d, d / "dicom"), (f"{d / 'dicom'}: the folder holds 2 DICOM series; pick one with --fixed-series "
                                   f"UID: {UID_A} (4 files, CT, arterial); {UID_B} (4 files, CT, venous)")


@case("DICOM series UID not in the folder")
def _(d):
    dicom_series(d / "dicom", UID_A, "arterial")
    return (_pair(d, d / "dicom", fixed_series="1.2.3"),
            f"{d / 'dicom'}: no DICOM series with UID 1.2.3; found: {UID_A}")


@case("DICOM series with a missing slice")
def _(d):
    dicom_series(d / "dicom", UID_A, "arterial", slices=6, skip=(2,))
    return _pair(d, d / "dicom"), (f"{d / 'dicom'}: the DICOM slices are not evenly spaced (gaps from 2 to 4 mm): a "
                                   f"slice is missing or duplicated; check that the folder holds the complete series")


@case("DICOM series with a truncated file")
def _(d):
    files = dicom_series(d / "dicom", UID_A, "arterial", slices=5)
    _cut(files[2], 60)
    return _pair(d, d / "dicom"), (f"{d / 'dicom'}: 1 DICOM file(s) could not be read (truncated or corrupt?): "
                                   f"{files[2].name}")


# ---------------------------------------------------------------------------- values

@case("NaN and infinity in NIfTI")
def _(d):
    array = sitk.GetArrayFromImage(blob())
    array[1, 2, 3], array[4, 5, 6] = np.nan, np.inf
    f = _fixed(d, sitk.GetImageFromArray(array), "f.nii.gz")  # SimpleITK would read both as 0
    return _pair(d, f), f"fixed image ({f}): 2 voxels are NaN or infinite"


@case("NaN in NRRD")
def _(d):
    array = sitk.GetArrayFromImage(blob())
    array[0, :, :] = np.nan
    f = _fixed(d, sitk.GetImageFromArray(array), "f.nrrd")
    return _pair(d, f), f"fixed image ({f}): 144 voxels are NaN or infinite"


@case("constant image")
def _(d):
    f = _fixed(d, sitk.Image([12, 12, 12], sitk.sitkInt16) + 7, "f.nii.gz")
    return _pair(d, f), f"fixed image ({f}): the image is constant (every voxel is 7); nothing to register"


# ---------------------------------------------------------------------------- geometry

@case("spacing 0 (NIfTI pixdim)")
def _(d):
    f = _patch(_fixed(d, blob(), "f.nii", compress=False), 80, "<f", 0.0)
    return _pair(d, f), (f"{f}: the NIfTI header gives the voxel size (pixdim) (0.0, 2.0, 2.0); every spacing must "
                         f"be a positive number of mm")


@case("negative spacing (NIfTI pixdim)")
def _(d):
    f = _patch(_fixed(d, blob(), "f.nii", compress=False), 80, "<f", -2.0)
    return _pair(d, f), (f"{f}: the NIfTI header gives the voxel size (pixdim) (-2.0, 2.0, 2.0); every spacing must "
                         f"be a positive number of mm")


@case("NaN spacing (NIfTI pixdim)")
def _(d):
    f = _patch(_fixed(d, blob(), "f.nii", compress=False), 84, "<f", float("nan"))
    return _pair(d, f), (f"{f}: the NIfTI header gives the voxel size (pixdim) (2.0, nan, 2.0); every spacing must "
                         f"be a positive number of mm")


@case("negative spacing (NRRD)")
def _(d):
    f = _raw_header_file(d, "f.nrrd", "NRRD0004\ntype: float\ndimension: 3\nsizes: 12 12 12\nspacings: -2 2 2\n"
                                      "encoding: raw\nendian: little\n\n")
    return _pair(d, f), (f"{f}: the NRRD header gives spacings (-2.0, 2.0, 2.0); every spacing must be a positive "
                         f"number of mm")


@case("spacing 0 (MetaImage)")
def _(d):
    f = _raw_header_file(d, "f.mha", "ObjectType = Image\nNDims = 3\nDimSize = 12 12 12\nElementSpacing = 0 2 2\n"
                                     "ElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    return _pair(d, f), (f"{f}: the MetaImage header gives ElementSpacing (0.0, 2.0, 2.0); every spacing must be a "
                         f"positive number of mm")


@case("sheared NIfTI sform")
def _(d):
    f = _fixed(d, blob(), "f.nii", compress=False)
    _patch(f, 280, "<12f", 2, 1, 0, 0, 0, 2, 0, 0, 0, 0, 2, 0)  # srow_x, srow_y, srow_z; sform_code stays 1
    return _pair(d, f), (f"{f}: the NIfTI sform matrix is not orthogonal (sheared voxel axes, e.g. a gantry tilt); "
                         f"SimpleITK would silently replace it by a rotation. Resample the image onto an orthogonal "
                         f"grid first")


@case("non-orthogonal direction (MetaImage)")
def _(d):
    image = blob()
    image.SetDirection([1, 0.5, 0, 0, 1, 0, 0, 0, 1])
    f = _fixed(d, image, "f.mha")
    return _pair(d, f), (f"fixed image ({f}): the direction matrix is not orthonormal "
                         f"(1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)")


@case("no physical overlap without the affine")
def _(d):
    moving = blob(shift=1.0, seed=1)
    moving.SetOrigin((1000.0, 0.0, 0.0))
    m = _fixed(d, moving, "m.nii.gz")
    return _pair(d, moving=m), (
        "the fixed and moving images do not overlap in physical space (fixed spans [0.0..22.0, 0.0..22.0, 0.0..22.0] "
        "mm, moving spans [1000.0..1022.0, 0.0..22.0, 0.0..22.0] mm (LPS)); without the affine pre-alignment nothing "
        "can be registered: drop --no-affine (the affine starts by aligning the image centres) or correct the image "
        "origins")


@case("working grid too small")
def _(d):
    return _pair(d, spacing=3.2), ("the working grid (8, 8, 8) at 3.2 mm is too small: registration needs at least 9 "
                                   "voxels along every axis; use --spacing 2.75 or finer (the fixed image spans 22 mm "
                                   "along its shortest axis)")


@case("negative --spacing")
def _(d):
    return _pair(d, spacing=-2.0), "--spacing must be a positive number of mm, got -2.0"


@case("zero --spacing")
def _(d):
    return _pair(d, spacing=0.0), "--spacing must be a positive number of mm, got 0.0"


@case("NaN --spacing")
def _(d):
    return _pair(d, spacing=float("nan")), "--spacing must be a positive number of mm, got nan"


# ---------------------------------------------------------------------------- labels and landmarks

@case("label map on another grid")
def _(d):
    labels = _fixed(d, labels_like(blob(10)), "fl.nii.gz")
    return _pair(d, fixed_labels=labels), (
        "fixed labels is not on its image's grid: size (10, 10, 10) spacing (2.0, 2.0, 2.0) origin (0.0, 0.0, 0.0) vs "
        "image size (12, 12, 12) spacing (2.0, 2.0, 2.0) origin (0.0, 0.0, 0.0)")


@case("non-integer labels")
def _(d):
    labels = sitk.Cast(labels_like(blob()), sitk.sitkFloat32) * 1.5
    f = _fixed(d, labels, "fl.nii.gz")
    return _pair(d, fixed_labels=f), f"fixed labels ({f}): label values must be integers, found non-integer values"


@case("negative labels")
def _(d):
    labels = sitk.Cast(labels_like(blob()), sitk.sitkInt16)
    labels[0, 0, 0] = -1
    f = _fixed(d, labels, "ml.nii.gz")
    return _pair(d, moving_labels=f), f"moving labels ({f}): labels must lie in 0..65535, found -1..2"


@case("landmark counts differ")
def _(d):
    d.mkdir(parents=True, exist_ok=True)
    a = landmarks(d / "fixed.csv", [(1, 2, 3), (4, 5, 6), (7, 8, 9)])
    b = landmarks(d / "moving.csv", [(1, 2, 3), (4, 5, 6)])
    return (_pair(d, fixed_landmarks=a, moving_landmarks=b),
            "fixed and moving landmark files hold 3 and 2 points; they must correspond one to one")


@case("landmark file syntax")
def _(d):
    d.mkdir(parents=True, exist_ok=True)
    a = landmarks(d / "fixed.csv", [(1, 2, 3)])
    b = d / "moving.csv"
    b.write_text("x,y,z\n1,2,3\n1,2,banana\n")
    return _pair(d, fixed_landmarks=a, moving_landmarks=b), f"{b}: line 3 has no x, y, z numbers: 1,2,banana"


@case("landmark coordinates NaN")
def _(d):
    d.mkdir(parents=True, exist_ok=True)
    a = landmarks(d / "fixed.csv", [(1, 2, 3)])
    b = landmarks(d / "moving.csv", [(1, "nan", 3)])
    return _pair(d, fixed_landmarks=a, moving_landmarks=b), f"{b}: landmarks contain NaN or infinite coordinates"


@case("one landmark file only")
def _(d):
    d.mkdir(parents=True, exist_ok=True)
    a = landmarks(d / "fixed.csv", [(1, 2, 3)])
    return _pair(d, fixed_landmarks=a), "landmarks need both --fixed-landmarks and --moving-landmarks"


# ---------------------------------------------------------------------------- memory

@case("memory estimate above the limit", SHMOAREG_MEMORY_LIMIT_MB="0.6")
def _(d):
    return _pair(d), ("this run needs about 1.1 MiB of cpu memory but only 0.60 MiB is available (working grid "
                      "(12, 12, 12) at 2 mm); use a coarser working grid (--spacing 2.8 instead of 2), crop the images "
                      "or use --device cuda if a GPU with more memory is available")


# ---------------------------------------------------------------------------- the tests

def _build(case: Case, tmp_path: Path) -> tuple[dict, str, dict]:
    inputs, message = case.build(tmp_path / "in")
    return inputs, message, snapshot(tmp_path / "in")


def assert_nothing_written(tmp_path: Path, before: dict) -> None:
    assert sorted(os.listdir(tmp_path)) == ["in"], "a failed run must not write anything"
    assert snapshot(tmp_path / "in") == before, "the inputs must be left untouched"


def _api(inputs: dict, output: Path):
    from SHMoAReg import register

    options = dict(inputs)
    return register(options.pop("fixed"), options.pop("moving"), output, iterations=2, affine=False,
                    device="cpu", **options)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_api_refuses(case: Case, tmp_path: Path, monkeypatch) -> None:
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    inputs, message, before = _build(case, tmp_path)
    with pytest.raises(InputError) as error:
        _api(inputs, tmp_path / "out")
    assert str(error.value) == message
    assert_nothing_written(tmp_path, before)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_refuses(case: Case, tmp_path: Path) -> None:
    inputs, message, before = _build(case, tmp_path)
    options = dict(inputs)
    result = run_cli(cli_args(options.pop("fixed"), options.pop("moving"), tmp_path / "out", **options) + FAST
                     + ["--device", "cpu"], cwd=tmp_path, env=case.env)
    assert result.rc == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.last_line == f"error: {message}"
    assert_nothing_written(tmp_path, before)


def test_a_real_python_m_shmoareg_agrees(tmp_path: Path) -> None:
    """The forked CLI children above behave as a genuine ``python -m SHMoAReg`` process does."""
    case = next(c for c in CASES if c.name == "truncated .nii.gz")
    inputs, message, before = _build(case, tmp_path)
    bad = run_real_cli(cli_args(inputs["fixed"], inputs["moving"], tmp_path / "out") + FAST, cwd=tmp_path)
    assert (bad.rc, bad.last_line) == (2, f"error: {message}") and "Traceback" not in bad.stderr
    assert_nothing_written(tmp_path, before)
    fixed, moving = good_pair(tmp_path / "in")
    good = run_real_cli(cli_args(fixed, moving, tmp_path / "out") + FAST, cwd=tmp_path)
    assert good.rc == 0 and (tmp_path / "out" / "report.json").is_file(), good.stderr


# ---------------------------------------------------------------------------- unusual but usable

PIXEL_TYPES = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float32", "float64"]


@pytest.mark.parametrize("dtype", PIXEL_TYPES)
def test_every_pixel_type_registers(dtype: str, tmp_path: Path) -> None:
    def image(seed: int, shift: float) -> sitk.Image:
        array = sitk.GetArrayFromImage(blob(shift=shift, seed=seed, dtype=np.float64))
        result = sitk.GetImageFromArray((array - array.min()).astype(dtype))
        result.SetSpacing((2.0, 2.0, 2.0))
        return result

    fixed, moving = write(image(0, 0.0), tmp_path / "f.nrrd"), write(image(1, 1.0), tmp_path / "m.nrrd")
    result = _api({"fixed": fixed, "moving": moving}, tmp_path / "out")
    assert (tmp_path / "out" / "report.json").is_file()
    assert np.isfinite(result.report["metrics"]["sdlogj"])


def test_pixel_types_through_the_cli(tmp_path: Path) -> None:
    for dtype in ("uint8", "float64"):
        array = sitk.GetArrayFromImage(blob(dtype=np.float64))
        image = sitk.GetImageFromArray((array - array.min()).astype(dtype))
        image.SetSpacing((2.0, 2.0, 2.0))
        path = write(image, tmp_path / f"{dtype}.nii.gz")
        result = run_cli(cli_args(path, path, tmp_path / f"out-{dtype}") + FAST, cwd=tmp_path)
        assert result.rc == 0, result.stderr
        assert (tmp_path / f"out-{dtype}" / "report.json").is_file()


def test_100_mm_voxels_register(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path, spacing=100.0)
    result = _api({"fixed": fixed, "moving": moving}, tmp_path / "out")
    assert result.report["working_grid"]["spacing_mm"] == 100.0


def test_dicom_series_picked_among_several(tmp_path: Path) -> None:
    dicom_series(tmp_path / "dicom", UID_A, "arterial", slices=8)
    dicom_series(tmp_path / "dicom", UID_B, "venous", slices=8)
    moving = write(sitk.Cast(blob(8, seed=4), sitk.sitkInt16), tmp_path / "m.nii.gz")
    result = run_cli(["register", "--fixed", tmp_path / "dicom", "--fixed-series", UID_B, "--moving", moving,
                      "--output-dir", tmp_path / "out", "--spacing", "1"] + FAST, cwd=tmp_path)
    assert result.rc == 0, result.stderr
    assert (tmp_path / "out" / "warped.nii.gz").is_file()


def test_no_overlap_with_affine_warns_and_registers(tmp_path: Path, caplog) -> None:
    from SHMoAReg import register

    fixed = write(blob(16, spacing=4.0), tmp_path / "f.nii.gz")
    moving_image = blob(16, shift=1.0, seed=1, spacing=4.0)
    moving_image.SetOrigin((1000.0, 0.0, 0.0))
    moving = write(moving_image, tmp_path / "m.nii.gz")
    with caplog.at_level("WARNING", logger="SHMoAReg"):
        result = register(fixed, moving, tmp_path / "out", iterations=2, affine=True, device="cpu")
    assert "do not overlap in physical space" in caplog.text
    # the affine maps the fixed centre near the moving centre (1000 mm away along x)
    centre = result.transform.TransformPoint((30.0, 30.0, 30.0))
    assert abs(centre[0] - 1030.0) < 10.0


def test_labels_in_one_image_only_are_reported_and_excluded(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path / "in")
    fixed_labels = write(labels_like(blob(), values=(1, 2)), tmp_path / "in" / "fl.nii.gz")
    moving_labels = write(labels_like(blob(), values=(1, 2, 3)), tmp_path / "in" / "ml.nii.gz")
    result = run_cli(cli_args(fixed, moving, tmp_path / "out", fixed_labels=fixed_labels,
                              moving_labels=moving_labels) + FAST, cwd=tmp_path)
    assert result.rc == 0, result.stderr
    metrics = json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]
    assert metrics["labels_in_one_image_only"] == [3]
    assert set(metrics["dice"]) == {"1", "2"}
    assert metrics["dice_mean"] == pytest.approx(np.mean([metrics["dice"]["1"], metrics["dice"]["2"]]))


def test_the_suggested_spacing_fits(tmp_path: Path) -> None:
    fixed, moving = good_pair(tmp_path)
    result = run_cli(cli_args(fixed, moving, tmp_path / "out", spacing="2.8") + FAST, cwd=tmp_path,
                     env={"SHMOAREG_MEMORY_LIMIT_MB": "0.6"})
    assert result.rc == 0, result.stderr


def test_nifti_nan_is_what_simpleitk_hides(tmp_path: Path) -> None:
    """The reason for scanning NIfTI voxels ourselves: SimpleITK 2.5 reads NaN/inf as 0."""
    array = sitk.GetArrayFromImage(blob())
    array[1, 2, 3] = np.nan
    path = write(sitk.GetImageFromArray(array), tmp_path / "f.nii")
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()
    with gzip.open(write(sitk.GetImageFromArray(array), tmp_path / "g.nii.gz"), "rb") as stream:
        assert np.isnan(np.frombuffer(stream.read()[352:], "<f4")).sum() == 1


@pytest.mark.parametrize("size, spacing", [(12, 2.0), (9, 1.0), (30, 1.0)])
def test_small_images_register_with_the_affine(tmp_path: Path, size: int, spacing: float) -> None:
    """Images of 9-30 mm: the affine pre-alignment uses a finer grid and fewer pyramid levels instead of failing
    inside ITK (Mattes mutual information with no samples left at the coarsest level)."""
    from SHMoAReg import register

    fixed, moving = good_pair(tmp_path, size=size, spacing=spacing)
    result = register(fixed, moving, tmp_path / "out", iterations=2, affine=True, device="cpu", spacing=spacing)
    assert (tmp_path / "out" / "warped.nii.gz").is_file()
    assert np.isfinite(result.report["metrics"]["sdlogj"])
