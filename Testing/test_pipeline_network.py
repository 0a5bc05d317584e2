"""The network path of ``register``: weights loaded by checksum, expert maps and utilisation written."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
import torch

from SHMoAReg import register
from SHMoAReg.network import NetworkConfig, SHMoARegNet
from SHMoAReg.synthetic import deform, phantom, smooth_deformation
from SHMoAReg.weights import save_weights

SMALL = dict(channels=(4, 8, 8, 16), num_heads=4, top_k=2, window=2)


def test_register_with_weights_writes_expert_maps(tmp_path):
    torch.manual_seed(0)
    net = SHMoARegNet(NetworkConfig(**SMALL))
    with torch.no_grad():  # make the gates non-uniform so the maps carry information
        for module in net.modules():
            if module.__class__.__name__ == "DirectionalGate":
                torch.nn.init.normal_(module.logits.weight, std=0.5)
    digest = save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct")
    image, labels = phantom(size=(40, 36, 32), spacing=(3.0, 3.0, 3.0), seed=1)
    truth = smooth_deformation(image, 4.0, mesh_size=3, seed=2)
    out = tmp_path / "out"
    result = register(deform(image, truth), image, out, weights=tmp_path / "tiny.pt", iterations=5, affine=False,
                      spacing=3.0, fixed_labels=deform(labels, truth, labels=True), moving_labels=labels)
    report = json.loads((out / "report.json").read_text())
    assert report["weights"]["sha256"] == digest
    names = sorted(p.name for p in (out / "experts").glob("*.nii.gz"))
    assert names == sorted(f"layer{l}_{d}.nii.gz" for l in (1, 2, 3) for d in "zyx")
    fixed = sitk.ReadImage(str(out / "warped.nii.gz"))
    expert_map = sitk.ReadImage(str(out / "experts" / "layer1_x.nii.gz"))
    assert expert_map.GetSize() == fixed.GetSize()
    values = np.unique(sitk.GetArrayFromImage(expert_map))
    assert set(values.tolist()) <= {0, 1, 2} and len(values) > 1
    usage = json.loads((out / "experts" / "experts.json").read_text())
    assert len(usage["shmoe"]) == 3 and len(usage["moa"]) == 4
    for layer in usage["shmoe"]:
        for direction in layer["directions"].values():
            assert abs(sum(direction["dominant_fraction"]) - 1) < 1e-6
            assert abs(sum(direction["mean_gate"]) - 1) < 1e-4
    for layer in usage["moa"]:
        assert abs(sum(layer["selection_frequency"]) - 2) < 1e-4  # top-2 of 4 heads per token
    assert result.utilisation == usage


def test_network_only_run(tmp_path):
    net = SHMoARegNet(NetworkConfig(**SMALL))
    save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct")
    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    result = register(image, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False, spacing=3.0)
    assert result.report["parameters"]["iterations"] == 0
    assert np.abs(sitk.GetArrayFromImage(result.displacement)).max() < 1.0  # mm: untrained heads start near zero


def test_weights_set_the_default_working_spacing(tmp_path):
    """A network is calibrated in voxels of the spacing it was trained at: without --spacing the run uses the
    weights' ``spacing_mm``, not the preset's 2 mm; an explicit --spacing still wins."""
    net = SHMoARegNet(NetworkConfig(**SMALL))
    save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct", metadata={"spacing_mm": 4.0})
    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    trained = register(image, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False)
    assert trained.report["working_grid"]["spacing_mm"] == 4.0
    chosen = register(image, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False, spacing=3.0)
    assert chosen.report["working_grid"]["spacing_mm"] == 3.0


def test_progress_never_goes_back_with_weights_and_inverse(tmp_path):
    """Every stage reports inside its own share: loading weights belongs to reading, the inverse comes last."""
    net = SHMoARegNet(NetworkConfig(**SMALL))
    save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct")
    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    seen = []
    register(image, image, None, weights=tmp_path / "tiny.pt", iterations=3, affine=True, spacing=3.0,
             inverse=True, progress=lambda stage, value, message: seen.append((value, stage)))
    values = [value for value, _ in seen]
    assert values == sorted(values), seen
    assert {"read", "affine", "optimise", "metrics", "inverse", "done"} <= {stage for _, stage in seen}
