"""Every stage earns its place (issue: the affine stage made a blob pair worse than doing nothing).

``register`` compares the identity, a centre-of-mass translation and the affine before the deformable
stage and keeps the best; after it, a deformable result that makes the similarity worse is refused and
reported. Both are checked end to end here, with default settings.
"""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
import torch

from SHMoAReg import register
from SHMoAReg.network import NetworkConfig, SHMoARegNet
from SHMoAReg.weights import save_weights

from test_start_choice import SHIFT_MM, _blobs  # the pair: two Gaussian blobs, 32x36x40 at 2 mm


def _mean_abs(a: sitk.Image, b: sitk.Image) -> float:
    return float(np.abs(sitk.GetArrayViewFromImage(a) - sitk.GetArrayViewFromImage(b)).mean())


def test_blob_pair_with_default_settings_is_much_better_than_before(tmp_path):
    fixed, moving = _blobs(), _blobs(SHIFT_MM)
    result = register(fixed, moving, tmp_path / "out", device="cpu")
    before, after = _mean_abs(moving, fixed), _mean_abs(result.warped, fixed)
    assert after < 0.25 * before, (before, after, result.report["start"])
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    start = report["start"]
    assert set(start["similarity_loss"]) == {"identity", "centre of mass", "affine"}
    assert start["similarity_loss"][start["kept"]] == min(start["similarity_loss"].values())
    assert report["deformable_check"]["kept"] == "deformable"
    assert report["preset"]["chosen_automatically"] and report["preset"]["reason"]


def test_a_deformable_result_that_makes_things_worse_is_refused(tmp_path):
    """A network with wild random heads predicts a displacement that ruins the match: the run keeps the
    start transform, says so in the report, and the warped image is the one of the start alone."""
    torch.manual_seed(0)
    net = SHMoARegNet(NetworkConfig(channels=(4, 8, 8, 16), num_heads=4, top_k=2, window=2, use_shmoe=False))
    with torch.no_grad():
        for name, parameter in net.named_parameters():
            if name.startswith("heads."):
                parameter.normal_(0.0, 3.0)
    save_weights(net, tmp_path / "wild.pt", preset="same-modality", metadata={"spacing_mm": 2.0})
    fixed, moving = _blobs(), _blobs(SHIFT_MM)
    result = register(fixed, moving, None, weights=tmp_path / "wild.pt", iterations=0, affine=False,
                      preset="same-modality", device="cpu")
    check = result.report["deformable_check"]
    assert check["kept"] == "start" and check["loss_deformable"] > check["loss_start"]
    assert "kept the start transform" in check["reason"]
    assert np.abs(sitk.GetArrayViewFromImage(result.displacement)).max() == 0.0
    assert _mean_abs(result.warped, fixed) == _mean_abs(moving, fixed)
