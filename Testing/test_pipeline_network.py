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
    # the maps cover the fixed voxels inside the box the network ran on (here network grid = fixed grid, 3 mm)
    assert list(expert_map.GetSize()) == report["network"]["box"]["size"]
    assert all(n <= total for n, total in zip(expert_map.GetSize(), fixed.GetSize()))
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


def test_weights_set_the_network_grid_and_instance_optimisation_refines(tmp_path):
    """A network is calibrated in voxels of the spacing it was trained at: it runs on the weights'
    ``spacing_mm`` grid; instance optimisation then works on the preset's (or --spacing) grid; network only
    (--iterations 0) stays on the network's grid."""
    net = SHMoARegNet(NetworkConfig(**SMALL))
    save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct", metadata={"spacing_mm": 4.0})
    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    alone = register(image, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False)
    assert alone.report["network_grid"]["spacing_mm"] == 4.0
    assert alone.report["working_grid"]["spacing_mm"] == 4.0
    refined = register(image, image, None, weights=tmp_path / "tiny.pt", iterations=2, affine=False)
    assert refined.report["network_grid"]["spacing_mm"] == 4.0
    assert refined.report["working_grid"]["spacing_mm"] == 3.0  # the preset's 2 mm, never finer than the image
    chosen = register(image, image, None, weights=tmp_path / "tiny.pt", iterations=2, affine=False, spacing=3.5)
    assert chosen.report["working_grid"]["spacing_mm"] == 3.5


def test_after_the_network_the_preset_runs_few_coarse_iterations_and_all_fine_ones(tmp_path):
    """The preset's iterations after the network (25): 10 on the coarse scale, the 15 that instance optimisation
    alone runs on the finest; without weights the preset's 80 go mostly to the coarse scale."""
    net = SHMoARegNet(NetworkConfig(**SMALL))
    save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct", metadata={"spacing_mm": 4.0})
    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    moved = deform(image, smooth_deformation(image, 3.0, mesh_size=3, seed=4))
    after = register(moved, image, None, weights=tmp_path / "tiny.pt", affine=False, preset="abdomen-ct")
    assert [level["planned"] for level in after.report["instance_optimisation"]] == [10, 15]
    alone = register(moved, image, None, weights="none", affine=False, preset="abdomen-ct")
    assert [level["planned"] for level in alone.report["instance_optimisation"]] == [65, 15]


def test_field_to_grid_keeps_a_known_displacement_in_mm(tmp_path):
    """A smooth field on a 4 mm grid moved onto a 2 mm grid keeps its values in mm (voxel units rescaled)."""
    from SHMoAReg.preprocess.grid import working_grid
    from SHMoAReg.pipeline import field_to_grid

    image, _ = phantom(size=(32, 30, 28), spacing=(2.0, 2.0, 2.0))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # rotated axes: the conversion must use them
    coarse, fine = working_grid(image, 4.0), working_grid(image, 2.0)
    shape = coarse.GetSize()[::-1]
    field = torch.zeros((1, 3, *shape), dtype=torch.float64)
    z = torch.arange(shape[0], dtype=torch.float64)
    field[0, 0] = 0.5 + 0.05 * z.view(-1, 1, 1)  # voxels of the coarse grid along array axis 0 (= index k)
    field[0, 2] = -0.25
    moved = field_to_grid(field, coarse, fine)
    assert tuple(moved.shape[2:]) == tuple(fine.GetSize()[::-1])
    # at a fine voxel whose centre lies on a coarse voxel centre the mm displacement is the same
    k = 4  # fine index 2k = coarse index k along every axis (same origin, spacing ratio 2)
    assert torch.allclose(moved[0, :, 2 * k, 2 * k, 2 * k] / 2, field[0, :, k, k, k], atol=1e-6)


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


def test_network_passes_are_reported_and_checked(tmp_path):
    """The preset's 3 passes at most, what was kept and the similarity after each pass in report.json; a
    diffeomorphic run makes one pass; --network-passes 0 and --network-flips 3 are refused before anything runs;
    mirroring changes the prediction of an untrained (not mirror-symmetric) network."""
    import pytest

    from SHMoAReg.errors import InputError

    net = SHMoARegNet(NetworkConfig(**SMALL))
    save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct")
    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    moved = deform(image, smooth_deformation(image, 4.0, mesh_size=3, seed=3))
    report = register(moved, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False,
                      spacing=3.0).report
    assert report["parameters"]["network_passes"] == 3
    passes, losses = report["network"]["passes"], report["network"]["similarity_loss"]
    assert 1 <= passes <= 3 and len(losses) in (passes + 1, passes + 2)
    assert all(losses[k] < losses[k - 1] for k in range(2, passes + 1))  # every pass after the first improved
    one = register(moved, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False, spacing=3.0,
                   network_passes=1).report
    box = one["network"].pop("box")
    assert one["network"] == {"passes": 1, "similarity_loss": [], "folding_percent": [], "refused": None}
    assert all(0 <= i and 0 < n and i + n <= total
               for i, n, total in zip(box["index"], box["size"], one["network_grid"]["size"]))
    assert len(report["network"]["folding_percent"]) >= 1
    diffeomorphic = register(moved, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False,
                             spacing=3.0, diffeomorphic=True).report
    assert diffeomorphic["parameters"]["network_passes"] == 1
    with pytest.raises(InputError, match="network-passes"):
        register(moved, image, None, weights=tmp_path / "tiny.pt", network_passes=0)
    assert report["parameters"]["network_flips"] == 4  # the network's field is the result: 4 mirrorings
    refined = register(moved, image, None, weights=tmp_path / "tiny.pt", iterations=2, affine=False, spacing=3.0)
    assert refined.report["parameters"]["network_flips"] == 1  # instance optimisation follows: none
    mirrored = register(moved, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False, spacing=3.0,
                        network_flips=4, network_passes=1)
    assert mirrored.report["parameters"]["network_flips"] == 4
    single = register(moved, image, None, weights=tmp_path / "tiny.pt", iterations=0, affine=False, spacing=3.0,
                      network_passes=1, network_flips=1)
    assert not np.array_equal(sitk.GetArrayFromImage(mirrored.displacement), sitk.GetArrayFromImage(single.displacement))
    velocity = register(moved, image, None, weights=tmp_path / "tiny.pt", iterations=2, affine=False, spacing=3.0,
                        diffeomorphic=True, network_flips=2)  # mirrored velocities averaged, then integrated
    assert velocity.velocity is not None and velocity.report["parameters"]["network_flips"] == 2
    with pytest.raises(InputError, match="network-flips"):
        register(moved, image, None, weights=tmp_path / "tiny.pt", network_flips=3)


def test_the_folding_limit_on_network_passes_holds_where_the_network_is_the_result(tmp_path, monkeypatch):
    """--iterations 0: further passes may not fold more than MAX_FOLDING; with instance optimisation after the
    network (which removes folds) the passes answer to the similarity alone."""
    import math

    from SHMoAReg.network.recursive import MAX_FOLDING
    from SHMoAReg.pipeline import stages

    limits = []
    real = stages.recursive_prediction

    def spy(*args, **kwargs):
        limits.append(kwargs["max_folding"])
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "recursive_prediction", spy)
    save_weights(SHMoARegNet(NetworkConfig(**SMALL)), tmp_path / "tiny.pt", preset="abdomen-ct")
    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    moved = deform(image, smooth_deformation(image, 4.0, mesh_size=3, seed=3))
    for iterations in (0, 3):
        register(moved, image, None, weights=tmp_path / "tiny.pt", iterations=iterations, affine=False, spacing=3.0)
    assert limits == [MAX_FOLDING, math.inf]
