"""Determinism: the same inputs and ``--seed`` give the same outputs.

On CPU two runs must write bit-identical files. Two things are excluded, and checked
to be the only differences: ``report.json``'s timings and peak memory, and the
object timestamps (and their checksums) that the HDF5 library writes into every
``.h5`` object header - the transforms inside are compared bit for bit.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import SHMoAReg
from SHMoAReg.cli import main
from SHMoAReg.synthetic import deform, phantom, smooth_deformation

VOLATILE_REPORT_KEYS = ("timings_s", "peak_memory_mb")


def without_hdf5_timestamps(data: bytes) -> bytes:
    """Zero the access/modification/change/birth times of every HDF5 v2 object header and its checksum."""
    data = bytearray(data)
    start = 0
    while (at := data.find(b"OHDR", start)) >= 0:
        start = at + 4
        version, flags = data[at + 4], data[at + 5]
        if version != 2:
            continue
        position = at + 6
        if flags & 0x20:  # times stored
            data[position:position + 16] = bytes(16)
            position += 16
        if flags & 0x10:  # attribute phase-change values stored
            position += 4
        width = 1 << (flags & 0x03)
        chunk = int.from_bytes(data[position:position + width], "little")
        end = position + width + chunk
        data[end:end + 4] = bytes(4)  # the header checksum covers the times
    return bytes(data)


def report_without_volatile(path: Path) -> dict:
    report = json.loads(path.read_text())
    for key in VOLATILE_REPORT_KEYS:
        report.pop(key)
    return report


def compare_folders(a: Path, b: Path) -> list[str]:
    """Names of the files that differ (beyond timings and HDF5 timestamps); also checks the same files exist."""
    names = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file())
    different = []
    for name in names:
        x, y = (a / name).read_bytes(), (b / name).read_bytes()
        if name == "report.json":
            same = report_without_volatile(a / name) == report_without_volatile(b / name)
        elif name.endswith(".h5"):
            same = without_hdf5_timestamps(x) == without_hdf5_timestamps(y)
            tx, ty = sitk.ReadTransform(str(a / name)), sitk.ReadTransform(str(b / name))
            same = same and _parameters(tx) == _parameters(ty)
        else:
            same = x == y
        if not same:
            different.append(name)
    return different


def _parameters(transform: sitk.Transform) -> list:
    from SHMoAReg.toolkit.components import components

    out = []
    for part in components(transform):
        out.append((part.GetName(), tuple(part.GetFixedParameters()), tuple(part.GetParameters())))
    return out


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    image, labels = phantom((28, 26, 22), (3.0, 3.0, 3.0), seed=5)
    truth = smooth_deformation(image, 5.0, seed=6)
    shift = sitk.TranslationTransform(3, (2.0, -1.5, 1.0))
    fixed = deform(deform(image, truth), shift)
    fixed_labels = deform(deform(labels, truth, labels=True), shift, labels=True)
    paths = {}
    for name, item in [("fixed", fixed), ("moving", image), ("fixed_labels", fixed_labels), ("moving_labels", labels)]:
        paths[name] = folder / f"{name}.nii.gz"
        sitk.WriteImage(item, str(paths[name]))
    return paths


def _register_cli(pair, out: Path, seed: int, weights: str = "none") -> int:
    return main(["register", "--fixed", str(pair["fixed"]), "--moving", str(pair["moving"]), "-o", str(out),
                 "--fixed-labels", str(pair["fixed_labels"]), "--moving-labels", str(pair["moving_labels"]),
                 "--iterations", "10", "--spacing", "3", "--diffeomorphic", "--inverse", "--seed", str(seed),
                 "--device", "cpu", "--l2r-displacement", "--weights", weights])


@pytest.mark.parametrize("weights", ["none", "auto"])
def test_two_cpu_runs_with_the_same_seed_write_identical_files(pair, tmp_path, weights):
    """The whole pipeline (random affine sampling, start choice, network where shipped weights exist,
    optimisation, inverse) twice: identical files."""
    assert _register_cli(pair, tmp_path / "a", seed=7, weights=weights) == 0
    assert _register_cli(pair, tmp_path / "b", seed=7, weights=weights) == 0
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"transform.h5", "inverse_transform.h5", "warped.nii.gz"} <= names
    if weights == "none":  # the network path may keep its start transform here (then there is no velocity)
        assert "velocity.nii.gz" in names
    assert compare_folders(tmp_path / "a", tmp_path / "b") == []


def test_hdf5_files_differ_only_in_timestamps(tmp_path):
    """Guards the comparison above: two writes of one transform differ at most in the masked bytes."""
    field = sitk.Image([4, 5, 6], sitk.sitkVectorFloat64)
    transform = sitk.DisplacementFieldTransform(field)
    sitk.WriteTransform(transform, str(tmp_path / "one.h5"))
    sitk.WriteTransform(transform, str(tmp_path / "two.h5"))
    one, two = (tmp_path / "one.h5").read_bytes(), (tmp_path / "two.h5").read_bytes()
    assert without_hdf5_timestamps(one) == without_hdf5_timestamps(two)
    assert sum(a != b for a, b in zip(one, without_hdf5_timestamps(one))) < 400  # only header bytes are masked


def test_settings_are_restored_after_a_run(pair):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    SHMoAReg.register(str(pair["fixed"]), str(pair["moving"]), None, iterations=2, affine=False, spacing=3.0)
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_runs_agree_within_tolerance(pair):
    """On CUDA grid_sample's backward uses atomic adds (no deterministic version): runs agree within 0.01 mm."""
    fields = []
    for _ in range(2):
        result = SHMoAReg.register(str(pair["fixed"]), str(pair["moving"]), None, iterations=20, spacing=3.0, seed=3,
                                   device="cuda")
        fields.append(sitk.GetArrayFromImage(result.displacement))
    assert np.abs(fields[0] - fields[1]).max() < 0.01


@pytest.mark.parametrize("seed", [0, 7])
def test_affine_sampling_is_reproducible_for_every_seed(seed):
    """SimpleITK takes a sampling seed of 0 as "use the wall clock": the default seed must not mean random."""
    from SHMoAReg.preprocess.affine import affine_prealign

    image, _ = phantom((28, 26, 22), (3.0, 3.0, 3.0), seed=5)
    moved = deform(image, smooth_deformation(image, 5.0, seed=6))
    runs = [affine_prealign(moved, image, seed=seed).GetParameters() for _ in range(2)]
    assert runs[0] == runs[1]
