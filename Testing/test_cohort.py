"""``shmoareg batch``: a cohort on a Dask LocalCluster, failures recorded, a killed worker retried, a
rerun that skips finished pairs, the same result as ``register``; the pairs CSV; the QA picture.

The cluster tests (marked ``cluster``) start LocalClusters with two worker processes that each import
torch once (~7 s on 2 cores); the images are 24^3 voxels registered with 3 iterations, so the whole
file takes about a minute on 2 cores.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from SHMoAReg.cli import EXIT_PAIRS_FAILED, main
from SHMoAReg.cohort.pairs import load_cohort
from SHMoAReg.cohort.report import flags
from SHMoAReg.cohort.results import complete_report
from SHMoAReg.cohort.tasks import KILL_ONCE_ENV
from SHMoAReg.errors import InputError
from SHMoAReg.evaluate.qa import qa_png
from test_reliability_support import blob, labels_like, write
from test_reliability_support import single_thread  # noqa: F401 - a fixture

SIZE = 24
FAST = ["--weights", "none", "--iterations", "3", "--no-affine", "--device", "cpu", "--preset", "same-modality",
        "--seed", "0"]
RESULT_FILES = {"warped.nii.gz", "transform.h5", "displacement.nii.gz", "jacobian.nii.gz", "report.json"}


# ---------------------------------------------------------------------------- inputs

def make_pair(folder: Path, seed: int, labels: bool = False) -> dict:
    """A tiny fixed/moving pair in ``folder``; its pairs-file entry with paths relative to the parent."""
    fixed = blob(SIZE, seed=seed)
    write(fixed, folder / "fixed.nii.gz")
    write(blob(SIZE, shift=1.5, seed=seed + 100), folder / "moving.nii.gz")
    entry = {"id": folder.name, "fixed": f"{folder.name}/fixed.nii.gz", "moving": f"{folder.name}/moving.nii.gz"}
    if labels:
        write(labels_like(fixed), folder / "fixed_seg.nii.gz")
        write(labels_like(fixed), folder / "moving_seg.nii.gz")
        entry.update(fixed_labels=f"{folder.name}/fixed_seg.nii.gz", moving_labels=f"{folder.name}/moving_seg.nii.gz")
    return entry


def unreadable_pair(folder: Path) -> dict:
    """A pair whose fixed image is garbage bytes named .nii.gz (it exists, so the pairs file loads)."""
    entry = make_pair(folder, seed=9)
    (folder / "fixed.nii.gz").write_bytes(b"this is not an image " * 20)
    return entry


def pairs_file(folder: Path, entries: list[dict]) -> Path:
    path = folder / "pairs.json"
    path.write_text(json.dumps({"suite": "test-cohort", "pairs": entries}))
    return path


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def batch(pairs: Path, out: Path, *extra: str) -> int:
    return main(["batch", "--pairs", str(pairs), "-o", str(out), "--threads", "1", *FAST, *extra])


@pytest.fixture
def dask():
    pytest.importorskip("distributed")


# ---------------------------------------------------------------------------- a cohort on a local cluster

@pytest.mark.cluster
def test_batch_records_failures_writes_the_report_and_resumes(tmp_path, capsys, dask):
    data = tmp_path / "data"
    entries = [make_pair(data / f"case{n}", seed=n, labels=n == 0) for n in range(3)] + [unreadable_pair(data / "bad")]
    pairs, out = pairs_file(data, entries), tmp_path / "out"

    start = time.monotonic()
    assert batch(pairs, out, "--workers", "2") == EXIT_PAIRS_FAILED
    first = time.monotonic() - start
    printed = capsys.readouterr()
    rows = read_rows(out / "results.csv")
    assert [r["id"] for r in rows] == ["case0", "case1", "case2", "bad"]
    assert [r["status"] for r in rows] == ["done", "done", "done", "failed"]
    reason = rows[3]["error"]
    assert str((data / "bad" / "fixed.nii.gz").resolve()) in reason and "\n" not in reason and "corrupt" in reason
    assert float(rows[0]["dice_before"]) > 0 and float(rows[0]["dice_after"]) > 0
    assert all(rows[n]["sdlogj"] and rows[n]["folding_percent"] and rows[n]["seconds"] for n in range(3))
    assert "3 done, 0 skipped" in printed.out and "bad: " in printed.out
    assert "error: 1 of 4 pairs failed: bad" in printed.err
    for n in range(3):
        folder = out / "runs" / f"case{n}"
        assert complete_report(folder) is not None and (folder / "qa.png").is_file()
    assert not (out / "runs" / "bad").exists()
    page = (out / "report.html").read_text()
    assert '<table class="sortable"' in page and page.count("data:image/png;base64,") == 3
    assert "http://" not in page and "https://" not in page
    assert "<li>" in page and "bad" in page  # the failed pair is flagged at the top

    finished = {n: (out / "runs" / f"case{n}" / "report.json").stat().st_mtime_ns for n in range(3)}
    start = time.monotonic()
    assert batch(pairs, out, "--workers", "2") == EXIT_PAIRS_FAILED
    second = time.monotonic() - start
    printed = capsys.readouterr()
    assert "3 skipped" in printed.err and "0 done, 3 skipped" in printed.out
    assert [r["status"] for r in read_rows(out / "results.csv")] == ["skipped", "skipped", "skipped", "failed"]
    assert {n: (out / "runs" / f"case{n}" / "report.json").stat().st_mtime_ns for n in range(3)} == finished
    assert second < 0.5 * first, f"the rerun took {second:.1f} s, the first run {first:.1f} s"


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory):
    """One batch of two pairs in which the worker registering 'victim' dies once while writing its results."""
    pytest.importorskip("distributed")
    root = tmp_path_factory.mktemp("killed")
    data = root / "data"
    pairs = pairs_file(data, [make_pair(data / "victim", seed=3), make_pair(data / "same", seed=4)])
    marker = root / "killed.marker"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(KILL_ONCE_ENV, f"victim={marker}")  # inherited by the worker processes
        code = batch(pairs, root / "out", "--workers", "2")
    return SimpleNamespace(code=code, data=data, out=root / "out", marker=marker)


@pytest.mark.cluster
def test_a_worker_killed_in_the_middle_of_a_pair_is_retried_without_leftovers(killed_run):
    assert killed_run.marker.exists(), "the test hook did not kill a worker"
    assert killed_run.code == 0
    assert [r["status"] for r in read_rows(killed_run.out / "results.csv")] == ["done", "done"]
    runs = killed_run.out / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["same", "victim"]  # no .victim.partial-* staging folder
    assert complete_report(runs / "victim") is not None
    assert {p.name for p in (runs / "victim").iterdir()} == RESULT_FILES | {"qa.png"}


@pytest.mark.cluster
def test_batch_and_register_give_identical_displacements(killed_run, tmp_path, single_thread):  # noqa: F811
    pair = killed_run.data / "same"
    assert main(["register", "--fixed", str(pair / "fixed.nii.gz"), "--moving", str(pair / "moving.nii.gz"),
                 "-o", str(tmp_path / "register"), *FAST]) == 0
    by_batch = sitk.GetArrayFromImage(sitk.ReadImage(str(killed_run.out / "runs" / "same" / "displacement.nii.gz")))
    by_register = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "register" / "displacement.nii.gz")))
    assert np.abs(by_register).max() > 0  # a real deformation, not two zero fields
    assert np.array_equal(by_batch, by_register)


# ---------------------------------------------------------------------------- the pairs file

def _expect_one_line_error(path: Path, match: str) -> None:
    with pytest.raises(InputError, match=match) as caught:
        load_cohort(path)
    assert "\n" not in str(caught.value)


def test_csv_pairs_relative_paths_overrides_and_errors(tmp_path):
    data = tmp_path / "cohort"
    make_pair(data / "a", seed=1)
    make_pair(data / "b", seed=2, labels=True)
    path = data / "pairs.csv"
    path.write_text("id,fixed,moving,fixed_labels,moving_labels,iterations,affine,spacing,preset,fixed_mask\n"
                    "a,a/fixed.nii.gz,a/moving.nii.gz,,,7,false,3,same-modality,b/fixed_seg.nii.gz\n"
                    "b,b/fixed.nii.gz,b/moving.nii.gz,b/fixed_seg.nii.gz,b/moving_seg.nii.gz,,,,,\n")
    cohort = load_cohort(path)
    a, b = cohort.pairs
    assert (a.id, b.id) == ("a", "b")
    assert a.pair.fixed == (data / "a" / "fixed.nii.gz").resolve() and a.pair.fixed_labels is None
    assert a.options == {"iterations": 7, "affine": False, "spacing": 3.0, "preset": "same-modality",
                         "fixed_mask": str((data / "b" / "fixed_seg.nii.gz").resolve())}
    assert b.options == {} and b.pair.moving_labels == (data / "b" / "moving_seg.nii.gz").resolve()

    path.write_text("id,fixed\na,a/fixed.nii.gz\n")
    _expect_one_line_error(path, "the column 'moving' is required")
    path.write_text("id,fixed,moving\na,a/fixed.nii.gz,a/missing.nii.gz\n")
    _expect_one_line_error(path, r"pair 'a': moving file .*missing\.nii\.gz does not exist")
    path.write_text("id,fixed,moving\na,a/fixed.nii.gz,a/moving.nii.gz\na,b/fixed.nii.gz,b/moving.nii.gz\n")
    _expect_one_line_error(path, "pair ids must be unique; repeated: a")
    path.write_text("id,fixed,moving,colour\na,a/fixed.nii.gz,a/moving.nii.gz,red\n")
    _expect_one_line_error(path, r"unknown columns \['colour'\]")
    path.write_text("id,fixed,moving,iterations\na,a/fixed.nii.gz,a/moving.nii.gz,many\n")
    _expect_one_line_error(path, "pair 'a': iterations: expected a whole number")


def test_json_pairs_carry_per_pair_options(tmp_path):
    data = tmp_path / "cohort"
    entry = {**make_pair(data / "a", seed=1), "iterations": 5, "diffeomorphic": True, "preset": "auto"}
    cohort = load_cohort(pairs_file(data, [entry]))
    assert cohort.name == "test-cohort"
    assert cohort.pairs[0].options == {"iterations": 5, "diffeomorphic": True, "preset": "auto"}
    _expect_one_line_error(pairs_file(data, [{**entry, "preset": "lungs"}]), "preset: expected one of auto")


def test_suspicious_results_are_flagged():
    fine = {"id": "a", "status": "done", "folding_percent": 0.0, "similarity_before": -0.5,
            "similarity_after": -0.7, "dice_before": 0.6, "dice_after": 0.8, "kept": "deformable"}
    assert flags(fine) == []
    assert flags({**fine, "status": "failed", "error": "unreadable"}) == ["failed: unreadable"]
    assert any("folding" in f for f in flags({**fine, "folding_percent": 0.5}))
    assert any("similarity loss rose" in f for f in flags({**fine, "similarity_after": -0.4}))
    assert any("Dice fell" in f for f in flags({**fine, "dice_after": 0.5}))
    assert any("refused" in f for f in flags({**fine, "kept": "start"}))


# ---------------------------------------------------------------------------- the QA picture

def test_register_qa_writes_a_small_png(tmp_path, single_thread):  # noqa: F811
    entry = make_pair(tmp_path / "pair", seed=5)
    out = tmp_path / "out"
    assert main(["register", "--fixed", str(tmp_path / entry["fixed"]), "--moving", str(tmp_path / entry["moving"]),
                 "-o", str(out), *FAST, "--qa"]) == 0
    data = (out / "qa.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 2_000 < len(data) < 200_000
    from PIL import Image

    with Image.open(out / "qa.png") as image:
        assert image.size == (640, 640)


def test_qa_picture_marks_folding_and_checks_the_grids():
    fixed = blob(SIZE, seed=1)
    jacobian = sitk.GetImageFromArray(np.where(np.indices((SIZE,) * 3)[0] < 4, -0.5, 1.2).astype(np.float32))
    jacobian.CopyInformation(fixed)
    assert qa_png(fixed, blob(SIZE, seed=2), jacobian, title="folded")[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="on the fixed grid"):
        qa_png(fixed, blob(SIZE - 2, seed=2), jacobian)


@pytest.mark.cluster
def test_ctrl_c_stops_the_cluster_keeps_finished_pairs_and_a_rerun_resumes(tmp_path, dask):
    import signal

    from test_reliability_support import start_cli

    data = tmp_path / "data"
    pairs = pairs_file(data, [make_pair(data / f"case{n}", seed=n) for n in range(4)])
    out = tmp_path / "out"
    slow = ["batch", "--pairs", str(pairs), "-o", str(out), "--workers", "1", "--threads", "1", "--json-progress",
            *FAST[:2], "--iterations", "300", *FAST[4:]]
    run = start_cli(slow, cwd=tmp_path)
    deadline = time.monotonic() + 90
    while '"stage": "pair"' not in run.stdout_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert '"stage": "pair"' in run.stdout_text(), "no pair finished within 90 s"
    run.signal(signal.SIGINT)
    result = run.wait(timeout=60)
    assert result.rc == 130, result.stderr[-2000:]
    assert "run the same command again to resume" in result.stdout + result.stderr
    kept = [r["id"] for r in read_rows(out / "results.csv") if r["status"] == "done"]
    assert 1 <= len(kept) < 4
    assert all(complete_report(out / "runs" / pair_id) is not None for pair_id in kept)
    assert not [p for p in (out / "runs").iterdir() if p.name.startswith(".")]  # no staging folder left

    rerun = start_cli(slow, cwd=tmp_path).wait(timeout=180)
    assert rerun.rc == 0, rerun.stderr[-2000:]
    summary = json.loads(rerun.stdout.strip().splitlines()[-1])
    # a pair a worker was writing when Ctrl-C came may still have been completed (atomically): skipped as well
    assert summary["skipped"] >= len(kept) and summary["done"] + summary["skipped"] == 4 and not summary["failed"]
    assert sorted(r["status"] for r in read_rows(out / "results.csv") if r["id"] in kept) == ["skipped"] * len(kept)
    assert sorted(p.name for p in (out / "runs").iterdir()) == [f"case{n}" for n in range(4)]


@pytest.mark.cluster
def test_batch_runs_on_an_existing_cluster_given_its_scheduler_address(tmp_path, capsys, dask):
    from distributed import LocalCluster

    data = tmp_path / "data"
    pairs = pairs_file(data, [make_pair(data / "case0", seed=0), make_pair(data / "case1", seed=1)])
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        assert batch(pairs, tmp_path / "out", "--scheduler", cluster.scheduler_address) == 0
    assert [r["status"] for r in read_rows(tmp_path / "out" / "results.csv")] == ["done", "done"]
    said = capsys.readouterr().err
    assert cluster.scheduler_address in said and "local Dask cluster" not in said  # that cluster, not a new one
