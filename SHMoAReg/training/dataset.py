"""Learn2Reg-style dataset files: schema, validation with clear errors, preprocessing to tensors.

Schema (JSON; paths relative to the JSON file's folder; unknown keys such as
Learn2Reg's ``numTraining`` or ``tensorImageSize`` are ignored)::

    {
      "name": "abdomen-labels",              # optional
      "preset": "abdomen-ct",                # optional default for --preset
      "labels": {"1": "spleen", ...},        # optional label names
      "training":   [{"image": "imagesTr/0001.nii.gz", "label": "labelsTr/0001.nii.gz"}, ...],
      "validation": [{"label": "labelsTr/0021.nii.gz"}, ...],      # optional, held-out subjects
      "images": [{"image": "t1/atlas.nii.gz"}, ...],               # optional, image-only subjects (below)
      "pairs": "all-to-all"                  # or "registration_train" to use only the listed pairs
      "registration_train": [{"fixed": "...", "moving": "..."}],   # optional, paths from "training"
      "registration_val":   [{"fixed": "...", "moving": "..."}]    # optional, paths from "validation"
    }

Every entry needs a ``label`` (label-map-only entries are trained by synthesis,
SynthMorph-style); ``image`` is optional. An ``images`` entry is an unlabelled real image: it is
trained only against itself, as an intra-subject pair with an exactly known displacement (its share of
the samples: ``--image-only-share``), so the network sees real appearance where only label maps
have labels. Preprocessing (:func:`preprocess`) resamples
every subject to an isotropic grid, normalises images as the preset does
(:mod:`SHMoAReg.preprocess.normalize`), crops to the labelled region plus a margin, and
writes one compressed ``.npz`` the torch-only training core reads
(:func:`SHMoAReg.training.synthesis.load_tensors`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..preprocess.content_box import MARGIN_VOXELS

__all__ = ["Subject", "Dataset", "read_dataset", "preprocess"]

PAIR_MODES = ("all-to-all", "registration_train")
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".nhdr")


@dataclass
class Subject:
    label: Path
    image: Path | None = None


@dataclass
class Dataset:
    """A validated dataset description (all paths absolute and existing)."""

    path: Path
    training: list[Subject]
    validation: list[Subject] = field(default_factory=list)
    pairs: str = "all-to-all"
    registration_train: list[tuple[int, int]] = field(default_factory=list)  # (fixed, moving) training indices
    registration_val: list[tuple[int, int]] = field(default_factory=list)  # (fixed, moving) validation indices
    name: str = ""
    preset: str | None = None
    label_names: dict[int, str] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)  # image-only subjects (no label map)


def _fail(path: Path, where: str, message: str) -> InputError:
    return InputError(f"dataset {path}: {where}: {message}")


def _subjects(path: Path, data: dict, key: str, required: bool) -> list[Subject]:
    entries = data.get(key, [])
    if required and not entries:
        raise _fail(path, key, "must be a non-empty list of {\"label\": ..., \"image\": ...} entries")
    if not isinstance(entries, list):
        raise _fail(path, key, f"must be a list, got {type(entries).__name__}")
    subjects, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        if isinstance(entry, str):  # Learn2Reg sometimes lists bare image paths; we need label maps
            raise _fail(path, where, f"expected an object with a 'label' path, got the string {entry!r}")
        if not isinstance(entry, dict) or "label" not in entry:
            raise _fail(path, where, "needs a 'label' (label map path); 'image' is optional")
        files = {}
        for role in ("label", "image"):
            if entry.get(role) is None:
                continue
            if not isinstance(entry[role], str):
                raise _fail(path, f"{where}.{role}", f"must be a path string, got {entry[role]!r}")
            file = (path.parent / entry[role]).resolve()
            if not file.is_file():
                raise _fail(path, f"{where}.{role}", f"file not found: {file}")
            if not file.name.lower().endswith(IMAGE_SUFFIXES):
                raise _fail(path, f"{where}.{role}", f"{file.name}: expected one of {', '.join(IMAGE_SUFFIXES)}")
            files[role] = file
        if files["label"] in seen:
            raise _fail(path, where, f"label map {files['label']} is listed twice")
        seen.add(files["label"])
        subjects.append(Subject(files["label"], files.get("image")))
    return subjects


def _image_only(path: Path, data: dict) -> list[Path]:
    entries = data.get("images", [])
    if not isinstance(entries, list):
        raise _fail(path, "images", f"must be a list of {{\"image\": ...}} entries, got {type(entries).__name__}")
    files = []
    for i, entry in enumerate(entries):
        where = f"images[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
            raise _fail(path, where, "needs an 'image' path")
        file = (path.parent / entry["image"]).resolve()
        if not file.is_file():
            raise _fail(path, f"{where}.image", f"file not found: {file}")
        if not file.name.lower().endswith(IMAGE_SUFFIXES):
            raise _fail(path, f"{where}.image", f"{file.name}: expected one of {', '.join(IMAGE_SUFFIXES)}")
        if file in files:
            raise _fail(path, where, f"image {file} is listed twice")
        files.append(file)
    return files


def _pairs(path: Path, data: dict, key: str, subjects: list[Subject]) -> list[tuple[int, int]]:
    entries = data.get(key, [])
    if not isinstance(entries, list):
        raise _fail(path, key, f"must be a list of {{\"fixed\": ..., \"moving\": ...}}, got {type(entries).__name__}")
    index = {}
    for i, s in enumerate(subjects):
        index[s.label] = i
        if s.image is not None:
            index[s.image] = i
    pairs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not {"fixed", "moving"} <= set(entry):
            raise _fail(path, f"{key}[{i}]", "needs 'fixed' and 'moving' paths")
        pair = []
        for role in ("fixed", "moving"):
            file = (path.parent / str(entry[role])).resolve()
            if file not in index:
                listed = "training" if key == "registration_train" else "validation"
                raise _fail(path, f"{key}[{i}].{role}", f"{entry[role]!r} is not an image or label of the "
                                                       f"'{listed}' list")
            pair.append(index[file])
        pairs.append((pair[0], pair[1]))
    return pairs


def read_dataset(path: str | os.PathLike) -> Dataset:
    """Read and validate a dataset JSON; raises :class:`InputError` naming the offending key."""
    path = Path(path).resolve()
    if not path.is_file():
        raise InputError(f"dataset file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InputError(f"dataset {path}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise InputError(f"dataset {path}: the top level must be a JSON object, got {type(data).__name__}")
    training = _subjects(path, data, "training", required=True)
    validation = _subjects(path, data, "validation", required=False)
    overlap = {s.label for s in training} & {s.label for s in validation}
    if overlap:
        raise _fail(path, "validation", f"{len(overlap)} subject(s) also in 'training' (e.g. {sorted(overlap)[0]})")
    mode = data.get("pairs", "all-to-all")
    if mode not in PAIR_MODES:
        raise _fail(path, "pairs", f"must be one of {', '.join(PAIR_MODES)}, got {mode!r}")
    train_pairs = _pairs(path, data, "registration_train", training)
    if mode == "registration_train" and not train_pairs:
        raise _fail(path, "registration_train", "pairs is 'registration_train' but no pairs are listed")
    names = data.get("labels", {})
    if not isinstance(names, dict):
        raise _fail(path, "labels", "must map label ids to names")
    try:
        label_names = {int(k): str(v) for k, v in names.items()}
    except ValueError:
        raise _fail(path, "labels", "keys must be integer label ids") from None
    return Dataset(path, training, validation, mode, train_pairs, _pairs(path, data, "registration_val", validation),
                   str(data.get("name", path.stem)), data.get("preset"), label_names, _image_only(path, data))


def _load_subject(subject: Subject, spacing: float, modality: str, window, drop_from: int | None):
    """Labels (int32) and normalised image (float32 or None) on an isotropic grid, cropped to the labels."""
    import SimpleITK as sitk
    import torch

    from ..preprocess.grid import resample, working_grid
    from ..io.image_io import read_image, read_labels
    from ..preprocess.normalize import normalize

    labels = read_labels(subject.label, "label map")
    grid = working_grid(labels, spacing)
    label_array = sitk.GetArrayFromImage(resample(labels, grid, None, sitk.sitkNearestNeighbor, 0)).astype(np.int32)
    if drop_from is not None:
        label_array[label_array >= drop_from] = 0
    image_array = None
    if subject.image is not None:
        image = read_image(subject.image, "image")
        if image.GetSize() != labels.GetSize() or not np.allclose(image.GetOrigin(), labels.GetOrigin(), atol=1e-3):
            raise InputError(f"{subject.image}: image and label map {subject.label.name} are not on the same grid")
        on_grid = sitk.GetArrayFromImage(resample(image, grid, None, sitk.sitkLinear, float(np.percentile(
            sitk.GetArrayViewFromImage(image), 0.5)))).astype(np.float32)
        image_array = normalize(torch.from_numpy(on_grid), modality, window).numpy()
    if not (label_array > 0).any():
        raise InputError(f"{subject.label}: the label map has no foreground labels")
    crop, geometry = _crop(label_array > 0, grid, spacing)
    return label_array[crop], None if image_array is None else image_array[crop], geometry


def _crop(foreground: np.ndarray, grid, spacing: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """The box around ``foreground`` (a non-empty (z, y, x) mask on ``grid``) plus the margin ``register`` runs the
    network on, and the cropped grid's geometry (origin 3, direction 9, spacing 1)."""
    found = np.argwhere(foreground)
    low = np.maximum(found.min(0) - MARGIN_VOXELS, 0)
    high = np.minimum(found.max(0) + MARGIN_VOXELS + 1, foreground.shape)
    origin = grid.TransformIndexToPhysicalPoint([int(i) for i in low[::-1]])
    return tuple(slice(a, b) for a, b in zip(low, high)), np.array([*origin, *grid.GetDirection(), spacing],
                                                                    dtype=np.float64)


def _grid_in_direction(image, spacing: float, direction: tuple[float, ...]):
    """An isotropic grid with axes along ``direction`` (9 values, SimpleITK order) that covers ``image``'s extent:
    an image-only subject resampled so that its voxel axes point as the label maps' do."""
    import itertools

    import SimpleITK as sitk

    axes = np.array(direction, dtype=np.float64).reshape(3, 3)
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([c - 0.5 for c in corner])
                        for corner in itertools.product(*[(0, n) for n in image.GetSize()])])
    along = corners @ axes  # coordinates along the grid's axes (columns of the direction matrix)
    low, high = along.min(0), along.max(0)
    size = np.maximum(np.ceil((high - low) / spacing).astype(int), 1)
    grid = sitk.Image([int(n) for n in size], sitk.sitkFloat32)
    grid.SetDirection([float(v) for v in direction])
    grid.SetSpacing([float(spacing)] * 3)
    grid.SetOrigin([float(v) for v in axes @ (low + spacing / 2)])
    return grid


def _load_image_only(file: Path, spacing: float, modality: str, window, direction: tuple[float, ...]):
    """Normalised image (float32) of an image-only subject on an isotropic grid whose axes follow ``direction``,
    cropped to its foreground."""
    import SimpleITK as sitk
    import torch

    from ..preprocess.grid import resample
    from ..io.image_io import read_image
    from ..preprocess.normalize import normalize
    from .synthesis import IMAGE_ONLY_FOREGROUND

    image = read_image(file, "image")
    grid = _grid_in_direction(image, spacing, direction)
    background = float(np.percentile(sitk.GetArrayViewFromImage(image), 0.5))
    on_grid = sitk.GetArrayFromImage(resample(image, grid, None, sitk.sitkLinear, background)).astype(np.float32)
    array = normalize(torch.from_numpy(on_grid), modality, window).numpy()
    if not (array > IMAGE_ONLY_FOREGROUND).any():
        raise InputError(f"{file}: the image has no foreground above {IMAGE_ONLY_FOREGROUND} after normalisation")
    crop, geometry = _crop(array > IMAGE_ONLY_FOREGROUND, grid, spacing)
    return array[crop], geometry


def preprocess(dataset: Dataset, output: str | os.PathLike, spacing: float, modality: str,
               window: tuple[float, float] | None, drop_labels_from: int | None = None,
               progress=None) -> Path:
    """Write ``output`` (.npz, compressed): per subject its labels, optional image and grid.

    Label values are remapped to 1..L (the sorted union over the training subjects;
    the original ids are stored as ``label_values``); anything else becomes 0.
    Keys: ``{split}_{i}_labels`` (int16), ``{split}_{i}_image`` (float16, [0, 1]),
    ``{split}_{i}_geometry`` (origin 3, direction 9, spacing 1) and ``meta`` (JSON); image-only subjects as
    ``images_{i}_image`` and ``images_{i}_geometry`` (``n_images`` of them).
    """
    from ..io.image_io import atomic_path

    arrays, loaded = {}, {}
    subjects = [("training", i, s) for i, s in enumerate(dataset.training)]
    subjects += [("validation", i, s) for i, s in enumerate(dataset.validation)]
    for n, (split, i, subject) in enumerate(subjects):
        loaded[split, i] = _load_subject(subject, spacing, modality, window, drop_labels_from)
        if progress:
            progress(n + 1, len(subjects), subject.label.name)
    values = sorted(set().union(*(np.unique(loaded["training", i][0]).tolist() for i in range(len(dataset.training)))) - {0})
    lookup = np.zeros(max(int(v[0].max()) for v in loaded.values()) + 1, dtype=np.int16)
    lookup[[v for v in values if v < len(lookup)]] = np.arange(1, len(values) + 1, dtype=np.int16)
    for (split, i), (labels, image, geometry) in loaded.items():
        arrays[f"{split}_{i}_labels"] = lookup[labels]
        arrays[f"{split}_{i}_geometry"] = geometry
        if image is not None:
            arrays[f"{split}_{i}_image"] = image.astype(np.float16)
    direction = tuple(loaded["training", 0][2][3:12])  # the first training label map's axes
    for i, file in enumerate(dataset.images):
        image, geometry = _load_image_only(file, spacing, modality, window, direction)
        arrays[f"images_{i}_image"], arrays[f"images_{i}_geometry"] = image.astype(np.float16), geometry
    meta = {"name": dataset.name, "spacing_mm": spacing, "modality": modality, "window": window,
            "label_values": values, "label_names": {str(v): dataset.label_names.get(v, str(v)) for v in values},
            "n_training": len(dataset.training), "n_validation": len(dataset.validation),
            "n_images": len(dataset.images),
            "pairs": dataset.pairs, "registration_train": dataset.registration_train,
            "registration_val": dataset.registration_val, "drop_labels_from": drop_labels_from,
            "sources": {**{f"{split}_{i}": str(s.label) for split, i, s in subjects},
                        **{f"images_{i}": str(file) for i, file in enumerate(dataset.images)}}}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    temporary = atomic_path(output)
    try:
        with open(temporary, "wb") as stream:
            np.savez_compressed(stream, **arrays)
        os.replace(temporary, output)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return output
