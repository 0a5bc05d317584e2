"""Teacher fields (training/teacher.py) and the inter-subject pairs they supervise (training/synthesis.py)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SHMoAReg.labels import one_hot
from SHMoAReg.optimise.warp import warp_labels
from SHMoAReg.train import main as train_main
from SHMoAReg.training.loop import _known_epe
from SHMoAReg.training.scores import mean_dice
from SHMoAReg.training.synthesis import (SynthesisConfig, TensorData, _inside, displaced_coordinates, make_pair,
                                         teacher_pair_coordinates)
from SHMoAReg.training.teacher import TeacherConfig, load_teachers, teacher_displacement

META = {"label_values": [1, 2, 3], "label_names": ["a", "b", "c"]}


def _blobs(shape=(28, 30, 32), shift=(0.0, 0.0, 0.0), squeeze: float = 1.0) -> torch.Tensor:
    """Three ellipsoids; ``shift`` moves them (voxels, z y x), ``squeeze`` scales them along x."""
    z, y, x = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    labels = torch.zeros(shape, dtype=torch.long)
    for label, (cz, cy, cx, r) in enumerate(((12, 12, 10, 6), (16, 18, 20, 5), (10, 20, 22, 4)), start=1):
        inside = ((z - cz - shift[0]) / r) ** 2 + ((y - cy - shift[1]) / r) ** 2 + ((x - cx - shift[2]) / (r * squeeze)) ** 2
        labels[inside < 1] = label
    return labels


def _dice(fixed: torch.Tensor, moving: torch.Tensor, displacement: torch.Tensor) -> float:
    warped = warp_labels(one_hot(moving[None], 3), displacement[None]).argmax(dim=1)[0]
    return mean_dice(fixed.numpy(), warped.numpy(), 3)


def test_teacher_recovers_a_known_shift_between_two_subjects() -> None:
    fixed = _blobs()
    moving = _blobs(shift=(2.0, -3.0, 4.0), squeeze=1.3)  # moved and stretched along x
    displacement, scores = teacher_displacement(fixed, moving, 3, TeacherConfig(iterations=(40, 30, 20)))
    assert displacement.shape == (3, *fixed.shape)
    assert scores["dice_before"] < 0.95 and scores["dice"] > 0.9 and scores["folding"] < 0.001
    organ = fixed == 1  # its centre moves by the shift exactly (the stretch is about each blob's own centre)
    mean = displacement[:, organ].mean(dim=1)
    assert torch.allclose(mean, torch.tensor([2.0, -3.0, 4.0]), atol=0.6), mean


def test_teacher_pair_gives_the_answer_through_the_random_patch_transforms() -> None:
    fixed, moving = _blobs(), _blobs(shift=(3.0, 2.0, -3.0))
    data = TensorData([fixed, moving], [None, None], META)
    mesh = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in fixed.shape], indexing="ij"))
    truth = torch.tensor([3.0, 2.0, -3.0])[:, None, None, None].expand_as(mesh).clone()  # phi(y) = y + shift, exactly
    config = SynthesisConfig(shape=(24, 24, 24), rotation_deg=8, scale=0.08, translation_vox=3, displacement_vox=2,
                             known_displacement_vox=3, background_classes=0)
    for seed in range(3):
        pair = make_pair(data, 0, 1, config, torch.Generator().manual_seed(seed), teachers={(0, 1): truth})
        assert pair["known"] == 1 and 0.5 < pair["known_mask"].mean() <= 1
        before = mean_dice(pair["fixed_labels"].numpy(), pair["moving_labels"].numpy(), 3)
        after = _dice(pair["fixed_labels"], pair["moving_labels"], pair["displacement"])
        assert after > 0.85 and after > before + 0.2, (seed, before, after)  # labels resampled twice, nearest
    # exactly: the moving patch's sampling map read at x + u(x) is phi(S(x)) = S(x) + shift wherever both lie inside
    fixed_map, moving_map, u, mask = teacher_pair_coordinates(data, 0, 1, truth, config, torch.Generator().manual_seed(7))
    read = displaced_coordinates(moving_map, u, 0)
    inside = (_inside(torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in config.shape],
                                                 indexing="ij"), dim=-1) + u.permute(1, 2, 3, 0), config.shape) > 0)
    assert inside.float().mean() > 0.7
    error = (read - fixed_map - torch.tensor([3.0, 2.0, -3.0]))[inside].norm(dim=-1)
    assert float(error.max()) < 1e-3, float(error.max())
    # without a teacher for the pair, an inter-subject pair has no answer
    pair = make_pair(data, 1, 0, config, torch.Generator().manual_seed(0), teachers={(0, 1): truth})
    assert pair["known"] == 0 and pair["known_mask"].sum() == 0 and pair["displacement"].abs().max() == 0


def test_known_epe_counts_only_the_masked_voxels() -> None:
    u = torch.zeros(2, 3, 4, 4, 4)
    answer = torch.zeros(2, 3, 4, 4, 4)
    answer[:, 0, :2] = 3.0  # 3 voxels wrong in the first half
    mask = torch.zeros(2, 4, 4, 4)
    mask[0, :2] = 1  # pair 0 counts only the wrong half, pair 1 everything
    mask[1] = 1
    batch = {"known": torch.tensor([1.0, 1.0]), "displacement": answer, "known_mask": mask}
    assert float(_known_epe(u, batch)) == pytest.approx((3.0 + 1.5) / 2, abs=1e-3)
    batch["known"] = torch.tensor([0.0, 1.0])
    assert float(_known_epe(u, batch)) == pytest.approx(1.5, abs=1e-3)


def _label_file(path: Path, labels: torch.Tensor) -> None:
    image = sitk.GetImageFromArray(labels.numpy().astype(np.uint8))
    image.SetSpacing((4.0, 4.0, 4.0))
    sitk.WriteImage(image, str(path))


def test_train_with_teacher_and_init_weights(tmp_path: Path, capsys) -> None:
    for i, shift in enumerate(((0, 0, 0), (2, -1, 1), (-1, 2, 0), (1, 1, -2), (0, -2, 2))):
        _label_file(tmp_path / f"s{i}.nii.gz", _blobs(shift=shift, squeeze=1 + 0.15 * i))
    spec = {"name": "tiny", "preset": "abdomen-ct", "labels": {"1": "a", "2": "b", "3": "c"},
            "training": [{"label": f"s{i}.nii.gz"} for i in range(3)],
            "validation": [{"label": f"s{i}.nii.gz"} for i in (3, 4)]}
    (tmp_path / "d.json").write_text(json.dumps(spec))
    tiny = ["--dataset", str(tmp_path / "d.json"), "--spacing", "4", "--patch", "16", "16", "16", "--val-pairs", "2",
            "--device", "cpu", "--steps-per-epoch", "1", "--steps", "1", "--known-displacement", "2"]
    assert train_main(["train", "-o", str(tmp_path / "a"), "--teacher", "1", *tiny]) == 0
    fields, summary = load_teachers(tmp_path / "a" / "teacher.npz")
    assert sorted(fields) == [(0, 1), (1, 2), (2, 0)] and summary["dice"] > summary["dice_before"]
    best = tmp_path / "a" / "best.pt"
    from SHMoAReg.weights import load_weights

    assert load_weights(best)[1].metadata["teacher"]["pairs"] == 3
    assert train_main(["train", "-o", str(tmp_path / "b"), "--init-weights", str(best), *tiny]) == 0
    capsys.readouterr()
    assert train_main(["train", "-o", str(tmp_path / "c"), "--init-weights", str(best), "--variant", "plain", *tiny]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "is not the one this run trains" in error[0]
