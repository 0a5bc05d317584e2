"""Training: dataset validation, one step, resume after interruption, DDP (gloo, 2 processes). Tiny and fast."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SHMoAReg.errors import InputError, RegistrationCancelled
from SHMoAReg.train import main as train_main
from SHMoAReg.training.checkpoint import load_state
from SHMoAReg.training.dataset import read_dataset
from SHMoAReg.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--spacing", "4", "--patch", "16", "16", "16", "--val-pairs", "2", "--device", "cpu", "--steps-per-epoch", "1"]


def _label_map(path: Path, seed: int, direction: tuple[float, ...] | None = None) -> None:
    """Two ellipsoids on a 20^3 grid of 4 mm (identity axes unless ``direction`` is given)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, 20)] * 3, indexing="ij")
    labels = np.zeros((20, 20, 20), np.uint8)
    for label, centre in ((1, (-0.3, 0, 0)), (2, (0.35, 0.1, 0))):
        c = np.array(centre) + rng.uniform(-0.1, 0.1, 3)
        labels[((z - c[0]) / 0.35) ** 2 + ((y - c[1]) / 0.45) ** 2 + ((x - c[2]) / 0.5) ** 2 < 1] = label
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((4.0, 4.0, 4.0))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for i in range(5):
        _label_map(folder / f"s{i}.nii.gz", i)
    spec = {"name": "tiny", "preset": "abdomen-ct", "labels": {"1": "a", "2": "b"},
            "training": [{"label": f"s{i}.nii.gz"} for i in range(3)],
            "validation": [{"label": f"s{i}.nii.gz"} for i in (3, 4)]}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder / "dataset.json"


def test_dataset_validation(dataset: Path, tmp_path: Path) -> None:
    parsed = read_dataset(dataset)
    assert len(parsed.training) == 3 and len(parsed.validation) == 2 and parsed.label_names[1] == "a"
    spec = json.loads(dataset.read_text())
    cases = [({"training": []}, "training: must be a non-empty list"),
             ({"training": [{"image": "s0.nii.gz"}]}, "training[0]: needs a 'label'"),
             ({"training": [{"label": "missing.nii.gz"}]}, "training[0].label: file not found"),
             ({"validation": spec["training"][:1]}, "also in 'training'"),
             ({"pairs": "random"}, "pairs: must be one of"),
             ({"registration_val": [{"fixed": "s0.nii.gz", "moving": "s3.nii.gz"}]}, "not an image or label of the 'validation'")]
    for change, message in cases:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps({**spec, **change}).replace('"s', f'"{dataset.parent}/s'))
        with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
            read_dataset(bad)
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        read_dataset(tmp_path / "broken.json")


def test_one_training_step(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train_main(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "1", *TINY]) == 0
    for name in ("data.npz", "val_pairs.pt", "last.pt", "best.pt", "best.pt.sha256", "metrics.csv", "learning_curve.png"):
        assert (run / name).is_file(), name
    model, info = load_weights(run / "best.pt")
    assert info.metadata["spacing_mm"] == 4.0 and info.metadata["step"] == 1 and info.preset == "abdomen-ct"
    output = model(torch.rand(1, 1, 16, 16, 16), torch.rand(1, 1, 16, 16, 16))
    assert output.displacement.shape == (1, 3, 16, 16, 16) and torch.isfinite(output.displacement).all()
    assert train_main(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "1", *TINY]) == 2  # refuses to clobber


def test_cascade_steps_from_the_command_line(dataset: Path, tmp_path: Path, monkeypatch) -> None:
    from SHMoAReg.training import loop

    calls = []
    original = loop.cascade_output
    monkeypatch.setattr(loop, "cascade_output", lambda *a: calls.append(1) or original(*a))
    run = tmp_path / "run"
    assert train_main(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "4", "--cascade-share", "0.5",
                       *TINY]) == 0
    assert load_state(run / "last.pt")["state"]["step"] == 4 and len(calls) == 2  # steps 2 and 4
    assert json.loads((run / "run.json").read_text())["train"]["cascade_share"] == 0.5


def test_folding_penalty_enters_the_loss_only_with_its_weight():
    """``--w-folding`` adds ``w * folding_loss(u)`` to the loss (the term is not even computed at weight 0, the
    default); the run records its weight and the model card names the penalty."""
    from types import SimpleNamespace

    from SHMoAReg.optimise.regularisers import folding_loss
    from SHMoAReg.training.loop import TrainConfig, losses

    coarse = torch.randn(1, 3, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    u = 3.0 * torch.nn.functional.interpolate(coarse, size=(12, 12, 12), mode="trilinear", align_corners=True)
    labels = torch.zeros(1, 12, 12, 12, dtype=torch.long)
    labels[:, 3:9, 3:9, 3:9] = 1
    zero = torch.zeros(())
    output = SimpleNamespace(displacement=u, balance_loss=zero, gate_balance_loss=zero, z_loss=zero)
    batch = {"fixed": torch.rand(1, 1, 12, 12, 12), "moving": torch.rand(1, 1, 12, 12, 12),
             "fixed_labels": labels, "moving_labels": labels}
    off = losses(output, batch, TrainConfig(), num_labels=1)
    on = losses(output, batch, TrainConfig(w_folding=10.0), num_labels=1)
    assert off["folding"].item() == 0.0 and folding_loss(u).item() > 0
    assert on["folding"].item() == pytest.approx(folding_loss(u).item())
    assert on["loss"].item() == pytest.approx(off["loss"].item() + 10.0 * on["folding"].item(), rel=1e-5)


def test_folding_penalty_from_the_command_line_to_the_model_card(dataset: Path, tmp_path: Path) -> None:
    from SHMoAReg.training.ship import main as ship_main

    run, shipped = tmp_path / "run", tmp_path / "weights"
    assert train_main(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "1", "--w-folding", "5",
                       *TINY]) == 0
    assert json.loads((run / "run.json").read_text())["train"]["w_folding"] == 5.0
    assert "train_folding" in (run / "metrics.csv").read_text().splitlines()[0]
    assert ship_main([str(run), "--name", "w", "--command", "shmoareg train ...", "--output-dir", str(shipped)]) == 0
    assert "`5.0 *` folding penalty" in (shipped / "w.md").read_text()


def test_training_progress_in_a_log_file_is_not_redrawn_every_step(dataset: Path, tmp_path: Path, capsys) -> None:
    """Off a terminal (a run in the background with a log) the bar redraws every 30 s, not at every step."""
    run = tmp_path / "run"
    one_epoch = [*TINY[:-1], "8"]  # --steps-per-epoch 8
    assert train_main(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "8", *one_epoch]) == 0
    drawn = capsys.readouterr().err.count("/8 [")
    assert 1 <= drawn <= 3, f"the progress bar was drawn {drawn} times for 8 steps"


def test_validation_passes_from_the_command_line(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    assert train_main(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "1", "--validation-passes", "2",
                       *TINY]) == 0
    header, row = (run / "metrics.csv").read_text().splitlines()[:2]
    value = float(row.split(",")[header.split(",").index("val_dice_passes")])
    assert 0.0 < value <= 1.0


def test_resume_after_interrupt(dataset: Path, tmp_path: Path) -> None:
    from SHMoAReg.train import add_parser
    import argparse

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    run = tmp_path / "run"
    args = parser.parse_args(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "2", *TINY])
    with pytest.raises(RegistrationCancelled, match="--resume"):
        args.func(args, lambda: True)  # cancel after the first step
    saved = load_state(run / "last.pt")["state"]
    assert saved["step"] == 1 and not saved["history"]
    args = parser.parse_args(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "2", "--resume", *TINY])
    assert args.func(args, lambda: False) == 0
    state = load_state(run / "last.pt")["state"]
    assert state["step"] == 2 and [row["step"] for row in state["history"]] == [1, 2]
    assert (run / "metrics.csv").read_text().count("\n") == 3


def test_ddp_gloo_two_processes(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
               "SHMoAReg.train", "train", "--dataset", str(dataset), "-o", str(run), "--steps", "1", *TINY]
    done = subprocess.run(command, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace",
                          timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2 and len(info["history"]) == 1
    assert (run / "best.pt").is_file()


def test_registration_train_mode_limits_the_training_pairs():
    """A dataset in "registration_train" mode trains on its listed pairs only; the default is all-to-all."""
    from SHMoAReg.training.loop import PairDataset
    from SHMoAReg.training.synthesis import SynthesisConfig, TensorData

    labels = [torch.zeros(4, 4, 4, dtype=torch.long) for _ in range(3)]
    meta = {"label_values": [1], "pairs": "registration_train", "registration_train": [[0, 2], [1, 0]]}
    listed = PairDataset(TensorData(labels, [None] * 3, meta), SynthesisConfig(), seed=0)
    assert listed.pairs == [(0, 2), (1, 0)]
    every = PairDataset(TensorData(labels, [None] * 3, {**meta, "pairs": "all-to-all"}), SynthesisConfig(), seed=0)
    assert len(every) == 6


def _small_pair_dataset():
    from SHMoAReg.training.loop import PairDataset
    from SHMoAReg.training.synthesis import SynthesisConfig, TensorData

    labels = []
    for shift in range(2):
        volume = torch.zeros(16, 16, 16, dtype=torch.long)
        volume[4 + shift:11, 5:12, 4:10 + shift] = 1
        labels.append(volume)
    meta = {"label_values": [1], "label_names": {}, "pairs": "all-to-all"}
    return PairDataset(TensorData(labels, [None, None], meta), SynthesisConfig(shape=(8, 8, 8)), seed=0)


def test_a_pair_seen_twice_in_one_epoch_is_two_different_samples():
    """An epoch longer than the pair list draws a new sample at each visit (seeding by the pair index alone repeated
    the same few samples all epoch), and the same (pair, draw) is the same sample again (resume)."""
    from SHMoAReg.training.loop import _epoch_batches

    dataset = _small_pair_dataset()
    first, again, other = dataset[(0, 0)], dataset[(0, 0)], dataset[(0, 2)]
    assert torch.equal(first["fixed"], again["fixed"])
    assert not torch.equal(first["fixed"], other["fixed"])
    dataset.epoch = 1
    assert not torch.equal(first["fixed"], dataset[(0, 0)]["fixed"])
    # the DataLoader workers make exactly the batches the training process would
    order = [(k % 2, k) for k in range(4)]
    here = list(_epoch_batches(dataset, order, 2, 0, torch.device("cpu")))
    workers = list(_epoch_batches(dataset, order, 2, 1, torch.device("cpu")))
    assert len(here) == len(workers) == 2
    for a, b in zip(here, workers):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_cosine_rate_follows_the_time_limit_when_that_runs_out_first():
    from SHMoAReg.training.loop import TrainConfig, learning_rate

    config = TrainConfig(learning_rate=1e-3, lr_schedule="cosine", time_limit_min=1.0)
    assert learning_rate(config, 0, 1000, seconds=0.0) == 1e-3
    assert abs(learning_rate(config, 10, 1000, seconds=30.0) - 1e-3 * (0.01 + 0.99 * 0.5)) < 1e-12
    assert abs(learning_rate(config, 10, 1000, seconds=90.0) - 1e-5) < 1e-12
    untimed = TrainConfig(learning_rate=1e-3, lr_schedule="cosine")
    assert learning_rate(untimed, 999, 1000, seconds=1e6) == learning_rate(config, 999, 1000, seconds=0.0)


def test_validation_dice_scores_every_label_of_the_fixed_map():
    """A label the warp lost counts 0; a label absent from the fixed map is not scored."""
    from SHMoAReg.training.scores import mean_dice

    fixed = np.zeros((4, 4, 4), np.int64)
    fixed[:2], fixed[2:, :2] = 1, 2
    lost = np.where(fixed == 2, 0, fixed)
    assert mean_dice(fixed, lost, 2) == 0.5
    assert mean_dice(fixed, fixed, 3) == 1.0


def test_validation_jacobian_matches_torch_central_differences():
    """SDlogJ and folding through SHMoAReg.evaluate.metrics equal those of det(I + grad u) from torch.gradient with channel c
    differentiated along axis c (the training loop's former formula; SDlogJ with the population sd)."""
    from SHMoAReg.evaluate.metrics import jacobian_scores

    u = 0.4 * torch.randn(3, 6, 5, 4, generator=torch.Generator().manual_seed(0))
    rows = [torch.stack(torch.gradient(u[c], dim=(0, 1, 2)), dim=-1) for c in range(3)]
    det = torch.linalg.det((torch.stack(rows, dim=-2) + torch.eye(3)).double()).float()
    spread, folding = jacobian_scores(u.numpy())
    assert spread == pytest.approx(float(det.clamp(1e-9, 1e9).log().std(correction=0)), rel=1e-5)
    assert folding == pytest.approx(float((det <= 0).float().mean()), abs=1e-7)


def test_one_hot_channels_and_shape_check():
    from SHMoAReg.labels import one_hot

    labels = torch.tensor([[[[0, 2]]]])
    encoded = one_hot(labels, 2)
    assert encoded.shape == (1, 3, 1, 1, 2) and encoded.dtype == torch.float32
    assert encoded[0, :, 0, 0, 1].tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match=r"\(B, D, H, W\)"):
        one_hot(labels[0], 2)


def test_t1_brain_contrast_prior_keeps_tissue_order_and_shares_tissue_intensity():
    from SHMoAReg.training.contrast import draw_lookup

    values = [2, 41, 3, 42, 4, 43, 999]  # white matter L/R, cortex L/R, ventricles L/R, an unknown id
    for seed in range(20):
        lookup = draw_lookup("t1-brain", values, torch.Generator().manual_seed(seed))
        assert lookup[0] == lookup[1] and lookup[2] == lookup[3] and lookup[4] == lookup[5]  # one tissue, one value
        assert lookup[0] > lookup[2] > lookup[4] >= 0  # white matter > cortex > CSF on T1
        assert 0.0 <= float(lookup[6]) <= 1.5
    with pytest.raises(ValueError, match="unknown contrast prior"):
        draw_lookup("t2-heart", values, torch.Generator())


def test_contrast_prior_renders_a_skull_stripped_t1_from_labels():
    from SHMoAReg.training.synthesis import SynthesisConfig, TensorData, make_pair

    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, 24)] * 3, indexing="ij")
    radius = (z ** 2 + y ** 2 + x ** 2).sqrt()
    labels = torch.zeros((24, 24, 24), dtype=torch.long)
    labels[radius < 0.9] = 2  # cortex (id 3) shell ...
    labels[radius < 0.7] = 1  # ... around white matter (id 2) ...
    labels[radius < 0.25] = 3  # ... around a ventricle (id 4)
    data = TensorData([labels], [None], {"label_values": [2, 3, 4]})
    config = SynthesisConfig(shape=(20, 20, 20), contrast_prior="t1-brain", contrast_prior_prob=1.0, noise=(0.0, 0.0),
                             blur_sigma=(0.3, 0.3), bias=0.0, rotation_deg=0, scale=0, translation_vox=0,
                             displacement_vox=0)
    pair = make_pair(data, 0, 0, config, torch.Generator().manual_seed(0))
    image, classes = pair["fixed"][0], pair["fixed_labels"]
    mean = {c: float(image[classes == c].mean()) for c in range(4)}
    assert mean[1] > mean[2] > mean[3] and mean[1] > mean[0]  # WM > cortex > CSF, dark outside the brain
    assert mean[0] < 0.1


def test_ablation_scores_every_variant_on_known_fields_of_held_out_subjects(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ablation"
    assert train_main(["train", "--ablation", "--dataset", str(dataset), "-o", str(run), "--steps", "1",
                       "--known-displacement", "2", *TINY]) == 0
    result = json.loads((run / "ablation.json").read_text())
    assert set(result["results"]) == {"plain", "moa", "shmoe", "full"}
    assert result["known_epe_before_mm"] > 0  # the identity's error is the known field's mean length
    for scores in result["results"].values():
        assert scores["known_epe_mm"] is not None and np.isfinite(scores["known_epe_mm"])
    assert "known-field error mm" in (run / "ablation.md").read_text(encoding="utf-8")


def test_expert_tables_name_classes_by_their_original_label_ids():
    from SHMoAReg.training.expert_analysis import label_name

    names = {"2": "Left-Cerebral-White-Matter", "3": "Left-Cerebral-Cortex", "41": "Right-Cerebral-White-Matter"}
    values = [2, 3, 41]  # classes 1, 2, 3 of the preprocessed label maps
    assert [label_name(c, values, names) for c in (1, 2, 3)] == list(names.values())
    assert label_name(5, [], {"5": "gall bladder"}) == "gall bladder"  # ids already 1..L (abdomen): unchanged


def test_compare_runs_only_the_configurations_asked_and_tabulates_without_the_reference():
    from SHMoAReg.training.compare import CONFIGS, REFERENCE, select_configs, table

    assert list(select_configs(None)) == list(CONFIGS)
    chosen = select_configs(["default", "alone"])
    assert list(chosen) == ["weights alone (--iterations 0)",
                            "weights + the preset's short instance optimisation (default)"]  # CONFIGS' order
    assert REFERENCE not in chosen
    row = {"dice": [0.4, 0.6], "dice_before": [0.2, 0.3], "sdlogj": [0.1, 0.2], "folding": [0.0, 0.001],
           "seconds": [8.0, 10.0], "field_error_mm": [None, None]}
    text = table({name: dict(row) for name in chosen})
    lines = text.splitlines()
    assert lines[2].startswith("| no registration | 0.250 ± 0.050")
    assert lines[3] == f"| {next(iter(chosen))} | 0.500 ± 0.100 |  | 0.150 | 0.050 | 9.0 |  |  |  |"
    reference = dict(row, seconds=[16.0, 20.0], command_seconds=[20.0, 30.0])
    with_reference = table({**{name: dict(row, command_seconds=[12.0, 13.0]) for name in chosen}, REFERENCE: reference})
    assert with_reference.splitlines()[3].endswith("| 9.0 | 0.50 | 12.5 | 0.50 |")


def test_device_shim_gives_simpleitks_jacobian_scores():
    """Testing/device/train_variants.py trains where SimpleITK is missing by shimming it: the one thing training uses
    it for, the unit grid of the validation Jacobian, gives the same SDlogJ and folding as SimpleITK itself."""
    import subprocess
    import sys

    from SHMoAReg.evaluate.metrics import jacobian_scores

    generator = torch.Generator().manual_seed(0)
    field = torch.nn.functional.interpolate(torch.randn(1, 3, 5, 4, 6, generator=generator) * 3, size=(20, 16, 24),
                                            mode="trilinear")[0].numpy()
    real = jacobian_scores(field)
    assert real[1] > 0  # the field folds somewhere, so folding is compared too
    root = Path(__file__).resolve().parents[1]
    code = ("import sys, json, torch; sys.path[:0] = [sys.argv[1], sys.argv[2]]; import train_variants as tv; "
            "print(json.dumps(tv.install_shims(block=True))); "
            "from SHMoAReg.evaluate.metrics import jacobian_scores; import SimpleITK; "
            "assert 'train_variants' in type(SimpleITK.Image([3, 3, 3], 0)).__module__; "
            "g = torch.Generator().manual_seed(0); "
            "u = torch.nn.functional.interpolate(torch.randn(1, 3, 5, 4, 6, generator=g) * 3, size=(20, 16, 24), "
            "mode='trilinear')[0].numpy(); print(json.dumps(jacobian_scores(u)))")
    done = subprocess.run([sys.executable, "-c", code, str(root / "Testing" / "device"), str(root)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    shimmed, scores = [json.loads(line) for line in done.stdout.split("\n")[:2]]
    assert shimmed == ["SimpleITK"]
    assert scores == list(real)


def test_ship_the_final_weights_of_a_run(dataset: Path, tmp_path: Path) -> None:
    from SHMoAReg.training.ship import main as ship_main
    from SHMoAReg.weights import load_weights

    run, shipped = tmp_path / "run", tmp_path / "weights"
    shipped.mkdir()
    assert train_main(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "3", "--lr", "0.05", *TINY]) == 0
    final = load_state(run / "last.pt")["model"]
    for checkpoint in ("best", "last"):
        assert ship_main([str(run), "--name", checkpoint, "--command", "shmoareg train ...", "--checkpoint", checkpoint,
                          "--output-dir", str(shipped)]) == 0
    model, info = load_weights(shipped / "last.pt")
    assert info.metadata["step"] == 3 and info.metadata["checkpoint"] == "last"
    for key, value in model.state_dict().items():
        assert torch.allclose(value, final[key].float(), atol=1e-2, rtol=1e-2), key  # stored as float16
    card = (shipped / "last.md").read_text()
    assert "| last checkpoint | step 3 " in card
    started = json.loads((run / "run.json").read_text())["load_avg_at_command_start"]
    assert len(started) == 3 and f"load average {started[0]:.2f} when the command started" in card
    best_step = load_weights(shipped / "best.pt")[1].metadata["step"]
    assert f"| best checkpoint | step {best_step} " in (shipped / "best.md").read_text()
