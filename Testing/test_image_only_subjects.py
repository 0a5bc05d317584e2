"""Image-only training subjects: a real image without a label map, trained as pairs of itself under two transforms
with a known displacement (``"images"`` in a dataset file, ``--image-only-share``). Tiny and fast."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SHMoAReg.errors import InputError
from SHMoAReg.train import main as train_main
from SHMoAReg.training.dataset import preprocess, read_dataset
from SHMoAReg.training.loop import PairDataset
from SHMoAReg.training.synthesis import SynthesisConfig, load_tensors
from test_training import TINY, _label_map

LABEL_DIRECTION = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0, 0.0, -1.0, 0.0)  # FreeSurfer's LIA, as the brain label maps


def _textured_image(path: Path, seed: int = 7) -> None:
    """A textured ellipsoid in air, 60 x 50 x 40 voxels of 2 mm, axial (identity direction, unlike the label maps)."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.normal(size=(1, 1, 6, 6, 6)).astype(np.float32))
    texture = torch.nn.functional.interpolate(coarse, size=(40, 50, 60), mode="trilinear", align_corners=True)[0, 0]
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, n) for n in (40, 50, 60)], indexing="ij")
    body = (z / 0.8) ** 2 + (y / 0.8) ** 2 + (x / 0.8) ** 2 < 1
    array = np.where(body, 100 + 40 * texture.numpy(), 0).astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((2.0, 2.0, 2.0))
    image.SetOrigin((-60.0, -50.0, -40.0))
    sitk.WriteImage(image, str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("data")
    for i in range(5):
        _label_map(folder / f"s{i}.nii.gz", i, LABEL_DIRECTION)
    _textured_image(folder / "t1.nii.gz")
    spec = {"name": "tiny", "preset": "brain-mri", "labels": {"1": "a", "2": "b"},
            "training": [{"label": f"s{i}.nii.gz"} for i in range(3)],
            "validation": [{"label": f"s{i}.nii.gz"} for i in (3, 4)],
            "images": [{"image": "t1.nii.gz"}]}
    (folder / "dataset.json").write_text(json.dumps(spec))
    return folder / "dataset.json"


def test_image_only_entries_are_checked(dataset: Path, tmp_path: Path) -> None:
    assert [p.name for p in read_dataset(dataset).images] == ["t1.nii.gz"]
    spec = json.loads(dataset.read_text())
    for change, message in (({"images": {"image": "t1.nii.gz"}}, "images: must be a list"),
                            ({"images": [{"label": "s0.nii.gz"}]}, r"images\[0\]: needs an 'image' path"),
                            ({"images": [{"image": "gone.nii.gz"}]}, r"images\[0\].image: file not found"),
                            ({"images": [{"image": "t1.nii.gz"}] * 2}, "listed twice")):
        bad = tmp_path / "bad.json"
        text = json.dumps({**spec, **change}).replace('"s', f'"{dataset.parent}/s').replace('"t1', f'"{dataset.parent}/t1')
        bad.write_text(text.replace('"gone', f'"{dataset.parent}/gone'))
        with pytest.raises(InputError, match=message):
            read_dataset(bad)


def test_image_only_subject_is_stored_along_the_label_maps_axes_and_trained_against_itself(dataset: Path,
                                                                                          tmp_path: Path) -> None:
    preprocess(read_dataset(dataset), tmp_path / "data.npz", 4.0, "mri", None)
    data = load_tensors(tmp_path / "data.npz", "training")
    assert (len(data), data.labelled) == (4, 3) and data.image_only(3) and not data.image_only(2)
    with np.load(tmp_path / "data.npz") as stored:
        geometry = stored["images_0_geometry"]
    assert np.allclose(geometry[3:12], LABEL_DIRECTION)  # resampled so that its axes point as the label maps' do
    # the 120 x 100 x 80 mm image (x, y, z) now lies along (x, -z, -y): 80 mm on the array's second axis
    shape = data.images[3].shape
    assert shape[1] < shape[0] and shape[1] < shape[2] and int(data.labels[3].sum()) == 0
    assert len(load_tensors(tmp_path / "data.npz", "validation")) == 2  # the validation split is unchanged

    config = SynthesisConfig(shape=(12, 12, 12), known_displacement_vox=2.0, image_only_share=0.5)
    pairs = PairDataset(data, config, seed=0)
    assert pairs.pairs.count((3, 3)) == 6 and len(pairs) == 12  # 6 inter-subject pairs + as many of the image
    assert all(a < 3 and b < 3 for a, b in pairs.pairs if (a, b) != (3, 3))
    sample = pairs[(len(pairs) - 1, 0)]
    assert float(sample["known"]) == 1.0 and int(sample["fixed_labels"].sum()) == 0
    assert float(sample["displacement"].abs().max()) > 0.1
    assert PairDataset(data, SynthesisConfig(shape=(12, 12, 12)), seed=0).pairs.count((3, 3)) == 0  # share 0: unused


def test_image_only_pair_is_the_image_under_the_known_displacement(dataset: Path, tmp_path: Path) -> None:
    """Without blur, bias and noise, the fixed patch is the moving patch read at x + w(x) (w the stored answer)."""
    from SHMoAReg.optimise.warp import warp_image

    preprocess(read_dataset(dataset), tmp_path / "data.npz", 4.0, "mri", None)
    data = load_tensors(tmp_path / "data.npz", "training")
    config = SynthesisConfig(shape=(16, 16, 16), known_displacement_vox=2.0, image_only_share=0.5,
                             blur_sigma=(0.0, 0.0), bias=0.0, noise=(0.0, 0.0), displacement_vox=0.0)
    sample = PairDataset(data, config, seed=3)[(11, 5)]
    fixed, moving, w = sample["fixed"][None], sample["moving"][None], sample["displacement"][None]
    inner = (..., slice(3, -3), slice(3, -3), slice(3, -3))

    def error(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a[inner] - b[inner]).abs().mean())

    # the body's sharp edge is resampled twice (by the synthesis, then by the warp), so not exactly 0: the point is
    # that w undoes the difference (to 0.53 of it here) and -w doubles it (2.0x)
    assert error(fixed, warp_image(moving, w)) < 0.6 * error(fixed, moving)
    assert error(fixed, warp_image(moving, -w)) > 1.5 * error(fixed, moving)


def test_image_only_share_from_the_command_line(dataset: Path, tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    assert train_main(["train", "--dataset", str(dataset), "-o", str(run), "--steps", "2", "--image-only-share", "0.5",
                       "--known-displacement", "2", *TINY]) == 0
    saved = json.loads((run / "run.json").read_text())
    assert saved["n_image_only_subjects"] == 1 and saved["synthesis"]["image_only_share"] == 0.5
    assert saved["image_only_sources"][0].endswith("t1.nii.gz")
    assert train_main(["train", "--dataset", str(dataset), "-o", str(tmp_path / "bad"), "--steps", "1",
                       "--image-only-share", "0.5", *TINY]) == 2
    assert "give --known-displacement too" in capsys.readouterr().err


def test_a_dataset_without_validation_subjects_validates_on_its_labelled_ones_only(dataset: Path, tmp_path: Path) -> None:
    spec = json.loads(dataset.read_text())
    spec.pop("validation")
    spec = json.loads(json.dumps(spec).replace('"s', f'"{dataset.parent}/s').replace('"t1', f'"{dataset.parent}/t1'))
    (tmp_path / "no_validation.json").write_text(json.dumps(spec))
    run = tmp_path / "run"
    assert train_main(["train", "--dataset", str(tmp_path / "no_validation.json"), "-o", str(run), "--steps", "1",
                       "--image-only-share", "0.5", "--known-displacement", "2", *TINY, "--val-pairs", "6"]) == 0
    pairs = torch.load(run / "val_pairs.pt", weights_only=True)["pairs"].tolist()
    assert len(pairs) == 6 and all(a < 3 and b < 3 for a, b in pairs)  # every labelled pair; the image-only one (3) is not scored

