"""Seeded fuzzing of the image reader and of ``shmoareg register``: no tracebacks, no hangs.

Each case is a small image (random dimension, shape, pixel type, spacing, direction, NaN/inf
pattern) written in one of 8 formats and then, most of the time, damaged: truncated, bytes
flipped in the header, a header field set to a random value (NIfTI binary fields, NRRD and
MetaImage text fields), garbage appended, the voxel data zeroed, or the whole file replaced
by random bytes. Every case must end as a result (a checked 3-D float32 image) or a one-line
:class:`InputError` - never another exception (a crash) or a run past the time limit (a hang).

The reader runs in a worker process so that a hang in C++ can be stopped: the worker gets
``CASE_TIMEOUT_S`` per case and is restarted after a hang. ``SHMOAREG_FUZZ_CASES`` sets the
number of cases (default 200, a few seconds); ``SHMOAREG_FUZZ_SEED`` the seed. ``CLI_CASES`` of
the damaged files also go through ``python -m SHMoAReg register`` as the fixed image.
"""
from __future__ import annotations

import gzip
import json
import os
import select
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

CASES = int(os.environ.get("SHMOAREG_FUZZ_CASES", "200"))
SEED = int(os.environ.get("SHMOAREG_FUZZ_SEED", "20240607"))
CASE_TIMEOUT_S = 20.0
CLI_CASES = 16

FORMATS = [".nii", ".nii.gz", ".nrrd", ".nrrd", ".mha", ".mha", ".vtk", ".hdr"]
PIXELS = ["sitkUInt8", "sitkInt8", "sitkUInt16", "sitkInt16", "sitkUInt32", "sitkInt32", "sitkUInt64", "sitkInt64",
          "sitkFloat32", "sitkFloat64", "sitkComplexFloat32"]
NIFTI_FIELDS = {"dim": (40, "h", 8), "datatype": (70, "h", 1), "bitpix": (72, "h", 1), "pixdim": (76, "f", 8),
                "vox_offset": (108, "f", 1), "scl_slope": (112, "f", 1), "qform_code": (252, "h", 1),
                "sform_code": (254, "h", 1), "quatern": (256, "f", 6), "srow": (280, "f", 12)}


# ---------------------------------------------------------------------------- case generation

def _values(rng: np.random.Generator, shape: tuple[int, ...], pixel: str) -> np.ndarray:
    dtype = {"sitkUInt8": np.uint8, "sitkInt8": np.int8, "sitkUInt16": np.uint16, "sitkInt16": np.int16,
             "sitkUInt32": np.uint32, "sitkInt32": np.int32, "sitkUInt64": np.uint64, "sitkInt64": np.int64,
             "sitkFloat32": np.float32, "sitkFloat64": np.float64, "sitkComplexFloat32": np.complex64}[pixel]
    pattern = rng.choice(["noise", "noise", "constant", "nan one", "nan all", "inf some", "huge"])
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        array = rng.integers(max(info.min, -1000), min(info.max, 1000), size=shape, endpoint=True)
        return (np.full(shape, 7) if pattern == "constant" else array).astype(dtype)
    array = rng.normal(0, 100, size=shape)
    if pattern == "constant":
        array[:] = 3.5
    elif pattern == "nan one":
        array.flat[rng.integers(array.size)] = np.nan
    elif pattern == "nan all":
        array[:] = np.nan
    elif pattern == "inf some":
        array[rng.random(shape) < 0.1] = np.inf
    elif pattern == "huge":
        array *= 1e300 if dtype == np.float64 else 1e30
    return array.astype(dtype)


def _image(rng: np.random.Generator) -> sitk.Image:
    dimension = int(rng.choice([2, 3, 3, 3, 3, 4]))
    shape = tuple(int(rng.choice([1, 2, 3, 5, 8], p=[0.05, 0.15, 0.2, 0.3, 0.3])) for _ in range(dimension))
    pixel = str(rng.choice(PIXELS))
    vector = rng.random() < 0.1 and pixel != "sitkComplexFloat32"
    array = _values(rng, shape + ((3,) if vector else ()), pixel)
    image = sitk.GetImageFromArray(array, isVector=vector)
    image.SetSpacing([float(rng.choice([1e-6, 0.5, 1.0, 2.0, 100.0])) for _ in range(dimension)])
    image.SetOrigin([float(v) for v in rng.normal(0, 100, dimension)])
    if dimension == 3 and rng.random() < 0.3:
        if rng.random() < 0.5:
            image.SetDirection([1, float(rng.normal(0, 0.5)), 0, 0, 1, 0, 0, 0, 1])  # not orthogonal
        else:
            image.SetDirection(sitk.VersorTransform(tuple(rng.normal(size=3)), float(rng.uniform(0, 3))).GetMatrix())
    return image


def _mutate_nifti_header(data: bytes, rng: np.random.Generator) -> bytes:
    data = bytearray(data)
    name = str(rng.choice(list(NIFTI_FIELDS)))
    offset, code, count = NIFTI_FIELDS[name]
    index = int(rng.integers(count))
    if code == "h":
        value = int(rng.choice([0, -1, 1, 2, 7, 8, 999, 32767, -32768, int(rng.integers(-40000, 40000)) % 32768]))
    else:
        value = float(rng.choice([0.0, -1.0, np.nan, np.inf, 1e30, -2.5, 0.5, rng.normal(0, 1000)]))
    position = offset + index * struct.calcsize(code)
    if position + struct.calcsize(code) <= len(data):
        data[position:position + struct.calcsize(code)] = struct.pack("<" + code, value)
    return bytes(data)


def _mutate_vtk_header(data: bytes, rng: np.random.Generator) -> bytes:
    end = data.find(b"LOOKUP_TABLE")
    lines = data[:end].split(b"\n")
    index = int(rng.integers(2, max(len(lines) - 1, 3)))
    words = lines[index].split(b" ")
    words[1:] = [rng.choice([b"0", b"-1", b"99999999", b"nan", b"banana", b"1e308", b"3"]) for _ in words[1:]] or [b"7"]
    lines[index] = b" ".join(words)
    return b"\n".join(lines) + data[end:]


def _mutate_text_header(data: bytes, rng: np.random.Generator) -> bytes:
    if data.startswith(b"# vtk") and b"LOOKUP_TABLE" in data:
        return _mutate_vtk_header(data, rng)
    end = data.find(b"\n\n") if data.startswith(b"NRRD") else data.find(b"ElementDataFile")
    if end <= 0:
        return data
    lines = data[:end].split(b"\n")
    index = int(rng.integers(1 if data.startswith(b"NRRD") else 0, len(lines)))
    separator = b":" if data.startswith(b"NRRD") else b"="
    key = lines[index].split(separator)[0]
    value = rng.choice([b" 0 0 0", b" -1 2 3", b" nan nan nan", b" 99999999 99999999 99999999", b" banana",
                        b" 1", b"", b" 3 3 3 3 3", b" (0,0,0) (0,1,0) (0,0,1)", b" 1e308 1e308 1e308"])
    lines[index] = key + separator + value
    return b"\n".join(lines) + data[end:]


def _mutate(path: Path, rng: np.random.Generator) -> str:
    data = path.read_bytes()
    compressed = path.name.endswith(".gz")
    plain = gzip.decompress(data) if compressed else data
    kind = str(rng.choice(["none", "truncate", "flip header bytes", "header field", "append garbage", "zero data",
                           "random bytes", "truncate compressed"]))
    if kind == "truncate":
        plain = plain[:int(rng.integers(0, len(plain)))]
    elif kind == "flip header bytes":
        plain = bytearray(plain)
        for _ in range(int(rng.integers(1, 6))):
            plain[int(rng.integers(0, min(len(plain), 512)))] = int(rng.integers(256))
        plain = bytes(plain)
    elif kind == "header field":
        plain = (_mutate_nifti_header(plain, rng) if path.name.endswith((".nii", ".nii.gz", ".hdr"))
                 else _mutate_text_header(plain, rng))
    elif kind == "append garbage":
        plain += rng.bytes(int(rng.integers(1, 300)))
    elif kind == "zero data":
        plain = plain[:len(plain) // 2] + bytes(len(plain) - len(plain) // 2)
    elif kind == "random bytes":
        plain = rng.bytes(int(rng.integers(1, 3000)))
    if kind == "truncate compressed" and not compressed:
        kind = "none"
    if kind == "truncate compressed":
        path.write_bytes(data[:int(rng.integers(0, len(data)))])
    else:
        path.write_bytes(gzip.compress(plain) if compressed and kind != "random bytes" else plain)
    return kind


def make_case(folder: Path, number: int, rng: np.random.Generator) -> tuple[Path, str, str]:
    """Write case ``number`` into ``folder``; returns the path to read, a description and the damage done."""
    for _ in range(20):
        extension = str(rng.choice(FORMATS))
        image = _image(rng)
        path = folder / f"case{number:04d}{extension}"
        try:
            sitk.WriteImage(image, str(path), useCompression=bool(rng.random() < 0.5))
        except RuntimeError:
            continue  # a combination the format cannot store
        target = path.with_suffix(".img") if extension == ".hdr" and rng.random() < 0.5 else path
        kind = _mutate(target, rng)
        kind += " (data file)" if target != path else ""
        description = f"{extension} {image.GetDimension()}-D {image.GetSize()} {image.GetPixelIDTypeAsString()} {kind}"
        return path, description, kind
    raise RuntimeError("no writable case")


# ---------------------------------------------------------------------------- the worker

def _worker() -> None:
    from SHMoAReg.errors import InputError
    from SHMoAReg.io.image_io import read_image, read_labels

    for line in sys.stdin:
        request = json.loads(line)
        try:
            reader = read_labels if request["labels"] else read_image
            image = reader(request["path"], "fixed image")
            array = sitk.GetArrayViewFromImage(image)
            assert image.GetDimension() == 3 and array.ndim == 3, "a result must be a 3-D image"
            assert request["labels"] or (image.GetPixelID() == sitk.sitkFloat32 and np.isfinite(array).all())
            reply = {"outcome": "result", "message": str(image.GetSize())}
        except InputError as error:
            reply = {"outcome": "error", "message": str(error)}
        except BaseException as error:  # noqa: BLE001 - what the test counts as a crash
            import traceback

            reply = {"outcome": "crash", "message": f"{type(error).__name__}: {error}\n{traceback.format_exc()}"}
        print(json.dumps(reply), flush=True)


class Worker:
    def __init__(self) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        encoding="utf-8", errors="replace", bufsize=1)

    def read(self, path: Path, labels: bool, timeout: float) -> dict:
        self.process.stdin.write(json.dumps({"path": str(path), "labels": labels}) + "\n")
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            self.process.kill()
            self.process.wait()
            return {"outcome": "hang", "message": f"no answer within {timeout} s"}
        line = self.process.stdout.readline()
        if not line:
            self.process.wait()
            return {"outcome": "crash", "message": f"the reader process died (exit code {self.process.returncode})"}
        return json.loads(line)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=10)


# ---------------------------------------------------------------------------- the tests

@pytest.fixture(autouse=True)
def _quiet_writer():
    """The cases are written with SimpleITK, which warns about the odd ones; only the reading matters."""
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    yield
    sitk.ProcessObject.SetGlobalWarningDisplay(previous)


def test_fuzz_reader(tmp_path: Path) -> None:
    rng = np.random.default_rng(SEED)
    counts, kinds, failures = Counter(), Counter(), []
    outcomes = Counter()
    worker = Worker()
    start = time.monotonic()
    try:
        for number in range(CASES):
            path, description, kind = make_case(tmp_path, number, rng)
            kinds[kind] += 1
            if worker.process.poll() is not None:
                worker = Worker()
            # the first answer also waits for the worker's imports
            reply = worker.read(path, labels=number % 5 == 4, timeout=CASE_TIMEOUT_S * (3 if number == 0 else 1))
            counts[reply["outcome"]] += 1
            outcomes[(kind, reply["outcome"])] += 1
            message = reply["message"]
            if reply["outcome"] in ("crash", "hang"):
                failures.append(f"{path.name} [{description}]: {reply['outcome']}: {message}")
            elif reply["outcome"] == "error" and (not message.strip() or "\n" in message):
                failures.append(f"{path.name} [{description}]: the message is not one line: {message!r}")
    finally:
        worker.close()
    seconds = time.monotonic() - start
    print(f"\nfuzz reader: {CASES} cases in {seconds:.1f} s (seed {SEED}): {counts['error']} clear errors, "
          f"{counts['result']} results, {counts['crash']} crashes, {counts['hang']} hangs")
    for kind in sorted(kinds):
        print(f"  {kind}: {kinds[kind]} cases, {outcomes[(kind, 'error')]} errors, "
              f"{outcomes[(kind, 'result')]} results")
    assert not failures, "\n".join(failures[:10])
    assert counts["crash"] == 0 and counts["hang"] == 0
    assert counts["error"] + counts["result"] == CASES


def test_fuzz_register_cli(tmp_path: Path) -> None:
    """Damaged files as the images of ``python -m SHMoAReg register``: exit 0 or 2, never a traceback."""
    from test_reliability_support import FAST, cli_args, run_cli

    rng = np.random.default_rng(SEED + 1)
    counts, failures, messages = Counter(), [], []
    for number in range(CLI_CASES):
        path, description, _ = make_case(tmp_path, number, rng)
        output = tmp_path / f"out{number}"
        # the case is both images (so a usable one overlaps itself); 0.2 mm keeps tiny images above 9 voxels
        result = run_cli(cli_args(path, path, output, spacing="0.2") + FAST, cwd=tmp_path, timeout=120)
        counts[{0: "result", 2: "error"}.get(result.rc, "crash")] += 1
        if result.rc not in (0, 2) or "Traceback" in result.stderr:
            failures.append(f"{path.name} [{description}]: exit {result.rc}: {result.stderr[-800:]}")
        elif result.rc == 2 and not result.last_line.startswith("error: "):
            failures.append(f"{path.name} [{description}]: unclear message {result.last_line!r}")
        elif result.rc == 2 and output.exists():
            failures.append(f"{path.name} [{description}]: a refused run wrote {output}")
        messages.append(f"{description}: exit {result.rc} {result.last_line[:150]}")
    print(f"\nfuzz register CLI: {CLI_CASES} cases: {counts['error']} clear errors, {counts['result']} results, "
          f"{counts['crash']} crashes, 0 hangs")
    print("\n".join("  " + m for m in messages))
    assert not failures, "\n".join(failures)


if __name__ == "__main__" and sys.argv[1:] == ["--worker"]:
    _worker()
