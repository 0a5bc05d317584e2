"""Unusable network weights: one exact message each, exit code 2, nothing written, and no code run.

Each case runs through ``load_weights``, the Python API and ``python -m SHMoAReg register --weights``.
The pickled-code cases hold a pickle whose loading with ``weights_only=False`` would create a
marker file: the tests check that the file is refused *and* that the marker never appears.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from SHMoAReg.errors import WeightsError
from SHMoAReg.network import NetworkConfig, SHMoARegNet
from SHMoAReg.weights import available_weights, load_weights, save_weights, sha256_of
from test_reliability_support import FAST, cli_args, good_pair, run_cli, snapshot
from test_reliability_support import single_thread  # noqa: F401 - a fixture, used by pytestmark

SMALL = NetworkConfig(channels=(4, 8), transformer_levels=(1,), blocks_per_stage=1, window=2, num_heads=2,
                      flow_levels=(1,))

pytestmark = pytest.mark.usefixtures("single_thread")


class _Code:
    """Unpickling this object runs ``exec(source)`` - the attack ``weights_only=True`` prevents."""

    def __init__(self, source: str) -> None:
        self.source = source

    def __reduce__(self):
        return exec, (self.source,)


def _marker_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').write('code ran')"


def _valid(folder: Path, preset: str = "abdomen-ct") -> Path:
    torch.manual_seed(0)
    path = folder / "small.pt"
    save_weights(SHMoARegNet(SMALL), path, preset)
    return path


def _missing(folder: Path) -> tuple[Path, str]:
    names = ", ".join(available_weights()) or "none"
    return folder / "nothing.pt", (f"weights {str(folder / 'nothing.pt')!r}: no such file, and no shipped weights of "
                                   f"that name (available: {names}); train some with `shmoareg train` or run without "
                                   f"--weights")


def _checksum(folder: Path) -> tuple[Path, str]:
    path = _valid(folder)
    actual = sha256_of(path)
    path.with_name(path.name + ".sha256").write_text("0" * 64 + "  small.pt\n")
    return path, (f"{path}: checksum mismatch (expected {'0' * 64}, file has {actual}); the file is corrupt or was "
                  f"replaced")


def _shape(folder: Path) -> tuple[Path, str]:
    path = _valid(folder)
    checkpoint = torch.load(path, weights_only=True)
    key = sorted(checkpoint["state_dict"])[0]
    shape = tuple(checkpoint["state_dict"][key].shape)
    checkpoint["state_dict"][key] = torch.zeros(1)
    path.with_name(path.name + ".sha256").unlink()
    torch.save(checkpoint, path)
    return path, (f"{path}: weights do not fit the SHMoAReg architecture their file describes: 1 of another shape "
                  f"(e.g. {key}: file (1,) vs model {shape})")


def _architecture(folder: Path) -> tuple[Path, str]:
    path = _valid(folder)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["config"]["channels"] = [4, 8, 16]  # a deeper network than the tensors describe
    path.with_name(path.name + ".sha256").unlink()
    torch.save(checkpoint, path)
    expected = SHMoARegNet(NetworkConfig(**checkpoint["config"])).state_dict()
    missing = sorted(set(expected) - set(checkpoint["state_dict"]))
    shapes = sorted(k for k in set(expected) & set(checkpoint["state_dict"])
                    if tuple(expected[k].shape) != tuple(checkpoint["state_dict"][k].shape))
    details = f"{len(missing)} missing (e.g. {missing[0]})"
    if shapes:
        k = shapes[0]
        details += (f"; {len(shapes)} of another shape (e.g. {k}: file {tuple(checkpoint['state_dict'][k].shape)} "
                    f"vs model {tuple(expected[k].shape)})")
    return path, f"{path}: weights do not fit the SHMoAReg architecture their file describes: {details}"


def _preset(folder: Path) -> tuple[Path, str]:
    path = _valid(folder, preset="brain-mri")
    return path, f"{path}: weights were trained for preset 'brain-mri', not 'abdomen-ct'"


def _text(folder: Path) -> tuple[Path, str]:
    path = folder / "notes.pt"
    path.write_text("these are not weights\n")
    return path, f"{path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)"


def _other_checkpoint(folder: Path) -> tuple[Path, str]:
    path = folder / "other.pt"
    torch.save({"weight": torch.zeros(3)}, path)
    return path, f"{path}: not an SHMoAReg weights file (no 'shmoareg-weights' format tag)"


def _refused(path: Path, names: str) -> str:
    return (f"{path}: refused: the file would import {names} when unpickled (code or Python objects, not only "
            f"tensors); it was read with weights_only=True and nothing in it was run")


def _code_in_checkpoint(folder: Path) -> tuple[Path, str]:
    path = folder / "evil.pt"
    torch.save({"format": "shmoareg-weights", "config": _Code(_marker_code(folder / "PWNED"))}, path)
    return path, _refused(path, "builtins.exec")


def _code_in_pickle(folder: Path) -> tuple[Path, str]:
    path = folder / "evil-pickle.pt"
    path.write_bytes(pickle.dumps(_Code(_marker_code(folder / "PWNED")), protocol=4))
    return path, _refused(path, "builtins.exec")


def _code_in_text_pickle(folder: Path) -> tuple[Path, str]:
    path = folder / "evil-protocol0.pt"
    path.write_bytes(f"cos\nsystem\n(S'touch {folder / 'PWNED'}'\ntR.".encode())
    return path, _refused(path, "os.system")


CASES = {"missing file": _missing, "wrong checksum": _checksum, "tensor of another shape": _shape,
         "config of another architecture": _architecture, "another preset": _preset, "not a checkpoint": _text,
         "checkpoint of something else": _other_checkpoint, "pickled code in a torch checkpoint": _code_in_checkpoint,
         "pickled code (protocol 4)": _code_in_pickle, "pickled code (protocol 0, os.system)": _code_in_text_pickle}


@pytest.fixture(autouse=True)
def _no_extra_weights(monkeypatch):
    monkeypatch.delenv("SHMOAREG_WEIGHTS_DIR", raising=False)


@pytest.mark.parametrize("name", CASES)
def test_load_weights_refuses(name: str, tmp_path: Path) -> None:
    path, message = CASES[name](tmp_path)
    with pytest.raises(WeightsError) as error:
        load_weights(path, preset="abdomen-ct")
    assert str(error.value) == message
    assert not (tmp_path / "PWNED").exists(), "the pickled code must not run"


@pytest.mark.parametrize("name", CASES)
def test_register_refuses_weights(name: str, tmp_path: Path) -> None:
    from SHMoAReg import register

    (tmp_path / "in").mkdir()
    fixed, moving = good_pair(tmp_path / "in")
    weights, message = CASES[name](tmp_path / "in")
    before = snapshot(tmp_path / "in")
    with pytest.raises(WeightsError) as error:
        register(fixed, moving, tmp_path / "out", weights=weights, iterations=2, affine=False, device="cpu",
                 preset="abdomen-ct")
    assert str(error.value) == message
    assert sorted(os.listdir(tmp_path)) == ["in"] and snapshot(tmp_path / "in") == before

    result = run_cli(cli_args(fixed, moving, tmp_path / "out", weights=weights, preset="abdomen-ct") + FAST, cwd=tmp_path)
    assert (result.rc, result.last_line) == (2, f"error: {message}"), result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["in"] and snapshot(tmp_path / "in") == before
    assert not (tmp_path / "in" / "PWNED").exists(), "the pickled code must not run"


def test_valid_small_weights_load(tmp_path: Path) -> None:
    model, info = load_weights(_valid(tmp_path), preset="abdomen-ct")
    assert info.preset == "abdomen-ct" and not model.training


def test_the_same_weights_get_the_same_checksum(tmp_path: Path) -> None:
    """Shipping a run twice, under any file name, gives the same bytes: a checksum names the weights, not the save."""
    torch.manual_seed(0)
    model = SHMoARegNet(SMALL)
    first = save_weights(model, tmp_path / "a" / "abdomen-ct.pt", preset="abdomen-ct", metadata={"step": 3})
    again = save_weights(model, tmp_path / "b" / "other-name.pt", preset="abdomen-ct", metadata={"step": 3})
    assert first == again == sha256_of(tmp_path / "b" / "other-name.pt")
    assert sorted(os.listdir(tmp_path / "a")) == ["abdomen-ct.pt", "abdomen-ct.pt.sha256"], "no temporary left behind"
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert save_weights(model, tmp_path / "c.pt", preset="abdomen-ct", metadata={"step": 3}) != first
    loaded, _ = load_weights(tmp_path / "b" / "other-name.pt", preset="abdomen-ct")
    assert loaded.state_dict().keys() == model.state_dict().keys()
