"""The built-in benchmark suites, generated as pairs files from ``../shared/data``.

``tiny``            one small synthetic pair (no data needed): the smoke test.
``ct-deformed``     the real abdominal CT (3 mm) against 2 known smooth deformations of
                    itself (random affine + stationary-velocity field): organ Dice and
                    field error in mm.
``abdomen-synth``   inter-subject abdominal pairs synthesised from the Learn2Reg/BTCV
                    organ label maps (one random intensity per label shared by the two
                    images of a pair, blur, bias field, noise), 4 pairs at 4 mm, cropped
                    to the organs: organ Dice, HD95.
``brain``           the VoxelMorph test scan and fsaverage (T1, FreeSurfer aseg), both
                    directions, at 2 mm, scored on the 30 VoxelMorph structures.
``abdomen-heldout`` 4 inter-subject pairs of the held-out abdominal subjects 0027-0030 (never seen by
                    the shipped weights), synthesised like abdomen-synth at the native 2 mm grid.
``abdomen-native``  the same 4 pairs on the whole 192x160x256 grid at 2 mm, not cropped (the size of a
                    Learn2Reg AbdomenCTCT pair): speed and memory at a realistic size.
``brain-native``    the ``brain`` pairs at the T1s' own 1 mm (cropped to the brain + 8 mm, about 150x180x150):
                    the brain at the size a user gives it.
``ct-wide``         the ``ct-deformed`` pairs (the same deformations) in a field of view 120 mm wider on each side
                    in-plane, the rest air, as a large reconstruction holds a body: does the result depend on air?
``all``             ct-deformed + abdomen-synth + brain.

Every generated file goes under the output folder; the data folder is only read.
A fixed ``seed`` makes every suite identical from run to run.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from ..transforms.field_transform import field_image, transform_to_displacement
from .pairs import Pair, Suite, save_pairs

__all__ = ["SUITES", "SUITE_GROUPS", "default_data_dir", "build_suites", "random_deformation"]

SUITES = ("tiny", "ct-deformed", "abdomen-synth", "brain", "abdomen-heldout", "abdomen-native", "brain-native",
          "ct-wide")
SUITE_GROUPS = {"all": ("ct-deformed", "abdomen-synth", "brain")}


def default_data_dir() -> Path:
    """``$SHMOAREG_DATA``, else ``shared/data`` beside the repository (``../shared/data`` from its root)."""
    if os.environ.get("SHMOAREG_DATA"):
        return Path(os.environ["SHMOAREG_DATA"])
    return Path(__file__).resolve().parents[3] / "shared" / "data"


# --- known deformations ------------------------------------------------------------------

def _compose_field(field: np.ndarray, grid: sitk.Image) -> np.ndarray:
    """``u(x) + u(x + u(x))`` for a (D, H, W, 3) LPS-mm field on ``grid`` (the field composed with itself)."""
    from ..preprocess.grid import resample  # here: it imports torch, which `shmoareg --help` does not need

    image = field_image(field, grid)
    # nearest-value extrapolation: no artificial zero displacement beyond the border
    return field + sitk.GetArrayFromImage(resample(image, image, sitk.DisplacementFieldTransform(sitk.Image(image)),
                                                   extrapolate=True))


def _exponential(velocity: np.ndarray, grid: sitk.Image, steps: int = 7) -> sitk.Image:
    """The displacement of ``exp(v)`` by scaling and squaring, as a vector image on ``grid``."""
    field = velocity / 2.0**steps
    for _ in range(steps):
        field = _compose_field(field, grid)
    return field_image(field, grid)


def random_deformation(grid: sitk.Image, rng: np.random.Generator, max_mm: float = 10.0,
                       control_mm: float = 50.0, rotation_deg: float = 3.0, translation_mm: float = 5.0,
                       scaling: float = 0.03) -> tuple[sitk.Transform, sitk.Transform]:
    """A random smooth invertible map ``T`` of ``grid``'s space and its inverse, ``(T, T^-1)``.

    ``T = A o exp(v)``: a stationary velocity field ``v`` (random vectors on a
    ``control_mm`` lattice, cubic upsampling, largest vector ``max_mm``) followed by a
    random affine ``A`` about the grid centre. ``T^-1 = exp(-v) o A^-1``. The fields cover
    ``grid`` plus a margin, so that ``A^-1`` never leaves them for points of ``grid``.
    """
    reach = 3 * max_mm + translation_mm + (rotation_deg * math.pi / 180 + scaling) * np.linalg.norm(
        np.array(grid.GetSize()) * grid.GetSpacing()) / 2
    pad = [int(math.ceil(reach / s)) for s in grid.GetSpacing()]
    padded = sitk.Image([n + 2 * p for n, p in zip(grid.GetSize(), pad)], sitk.sitkUInt8)
    padded.SetSpacing(grid.GetSpacing())
    padded.SetDirection(grid.GetDirection())
    padded.SetOrigin(grid.TransformIndexToPhysicalPoint([-p for p in pad]))
    centre = grid.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2.0 for n in grid.GetSize()])
    grid = padded
    shape = sitk.GetArrayViewFromImage(grid).shape[:3]
    extent = np.array(shape) * np.array(grid.GetSpacing()[::-1])
    coarse = [max(3, int(math.ceil(e / control_mm)) + 1) for e in extent]
    velocity = np.stack([ndimage.zoom(rng.standard_normal(coarse), np.array(shape) / coarse, order=3)[
        :shape[0], :shape[1], :shape[2]] for _ in range(3)], axis=-1)
    velocity *= max_mm / np.linalg.norm(velocity, axis=-1).max()
    forward, backward = _exponential(velocity, grid), _exponential(-velocity, grid)

    angles = np.deg2rad(rng.uniform(-rotation_deg, rotation_deg, 3))
    rotation = sitk.Euler3DTransform(centre, *angles)
    matrix = np.array(rotation.GetMatrix()).reshape(3, 3) @ np.diag(1.0 + rng.uniform(-scaling, scaling, 3))
    affine = sitk.AffineTransform(matrix.ravel().tolist(), rng.uniform(-translation_mm, translation_mm, 3).tolist(),
                                  centre)
    # sitk.CompositeTransform([t1, t2]) maps x to t1(t2(x))
    transform = sitk.CompositeTransform([affine, sitk.DisplacementFieldTransform(forward)])
    inverse = sitk.CompositeTransform([sitk.DisplacementFieldTransform(backward), affine.GetInverse()])
    return transform, inverse


def _deformed_pair(fixed: sitk.Image, fixed_labels: sitk.Image, folder: Path, pair_id: str,
                   rng: np.random.Generator, preset: str, **deformation) -> Pair:
    """Write ``fixed`` and its copy deformed by a known ``T`` (moving = fixed o T^-1) into ``folder``."""
    transform, inverse = random_deformation(fixed, rng, **deformation)
    background = float(sitk.GetArrayViewFromImage(fixed).min())
    moving = sitk.Resample(fixed, fixed, inverse, sitk.sitkLinear, background)
    moving_labels = sitk.Resample(fixed_labels, fixed, inverse, sitk.sitkNearestNeighbor, 0)
    truth = transform_to_displacement(transform, fixed)
    files = {"fixed": fixed, "moving": moving, "fixed_labels": fixed_labels, "moving_labels": moving_labels,
             "true_displacement": sitk.Cast(truth, sitk.sitkVectorFloat32)}
    return Pair(id=pair_id, preset=preset, **_write_all(files, folder / pair_id))


def _write_all(images: dict[str, sitk.Image], folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, image in images.items():
        paths[key] = folder / f"{key}.nii.gz"
        sitk.WriteImage(image, str(paths[key]), useCompression=True)
    return paths


# --- resampling helpers ------------------------------------------------------------------

def _resample_iso(image: sitk.Image, spacing: float, labels: bool = False,
                  lower: tuple[int, ...] | None = None, upper: tuple[int, ...] | None = None) -> sitk.Image:
    """``image`` on an isotropic ``spacing`` grid with its direction, over index box [lower, upper]."""
    lower = np.zeros(3) if lower is None else np.asarray(lower, float)
    upper = np.array(image.GetSize(), float) - 1 if upper is None else np.asarray(upper, float)
    size = [int(math.floor((u - l) * s / spacing)) + 1 for l, u, s in zip(lower, upper, image.GetSpacing())]
    origin = image.TransformContinuousIndexToPhysicalPoint(lower.tolist())
    if labels:
        return sitk.Resample(image, size, sitk.Transform(), sitk.sitkNearestNeighbor, origin, [spacing] * 3,
                             image.GetDirection(), 0, image.GetPixelID())
    sigma = [0.5 * math.sqrt(max(spacing**2 - s**2, 0.0)) for s in image.GetSpacing()]
    smoothed = sitk.SmoothingRecursiveGaussian(sitk.Cast(image, sitk.sitkFloat32), sigma) if max(sigma) > 0 \
        else sitk.Cast(image, sitk.sitkFloat32)
    return sitk.Resample(smoothed, size, sitk.Transform(), sitk.sitkLinear, origin, [spacing] * 3,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def _foreground_box(maps: list[sitk.Image], margin_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Index box (i, j, k) holding every voxel > 0 of ``maps`` (one shared grid) plus a margin."""
    inside = np.argwhere(np.any([sitk.GetArrayViewFromImage(m) > 0 for m in maps], axis=0))[:, ::-1]
    margin = margin_mm / np.array(maps[0].GetSpacing())
    lower = np.maximum(inside.min(0) - margin, 0)
    upper = np.minimum(inside.max(0) + margin, np.array(maps[0].GetSize()) - 1)
    return lower, upper


def _normalise(image: sitk.Image) -> sitk.Image:
    """Intensities scaled so the 99.5th percentile is 1 (0 stays 0)."""
    top = float(np.percentile(sitk.GetArrayViewFromImage(image), 99.5))
    return sitk.Cast(image, sitk.sitkFloat32) / max(top, 1e-6)


# --- the suites --------------------------------------------------------------------------

def _tiny(data_dir: Path, folder: Path, rng: np.random.Generator) -> Suite:
    shape = (24, 28, 32)  # (D, H, W)
    grid = sitk.Image(shape[::-1], sitk.sitkFloat32)
    grid.SetSpacing((3.0, 3.0, 3.0))
    grid.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))  # LPS-flipped, like a NIfTI from RAS
    grid.SetOrigin((40.0, 30.0, -20.0))
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.uint8)
    labels[(k / 0.8) ** 2 + (j / 0.8) ** 2 + (i / 0.85) ** 2 < 1] = 1  # "body"
    labels[((k - 0.1) / 0.35) ** 2 + ((j + 0.3) / 0.3) ** 2 + ((i + 0.3) / 0.35) ** 2 < 1] = 2
    labels[((k + 0.2) / 0.3) ** 2 + ((j - 0.3) / 0.35) ** 2 + ((i - 0.35) / 0.3) ** 2 < 1] = 3
    intensity = np.array([0.0, 0.4, 0.9, 0.7])[labels] + 0.02 * rng.standard_normal(shape)
    fixed = sitk.GetImageFromArray(ndimage.gaussian_filter(intensity, 0.7).astype(np.float32))
    fixed.CopyInformation(grid)
    fixed_labels = sitk.GetImageFromArray(labels)
    fixed_labels.CopyInformation(grid)
    pair = _deformed_pair(fixed, fixed_labels, folder, "tiny-0", rng, "generic", max_mm=7.0, control_mm=40.0,
                          rotation_deg=2.0, translation_mm=3.0, scaling=0.02)
    return Suite("tiny", [pair], "one 24x28x32 synthetic pair (3 ellipsoids) with a known deformation")


def _ct_deformed(data_dir: Path, folder: Path, rng: np.random.Generator, count: int = 2) -> Suite:
    ct = sitk.ReadImage(str(data_dir / "abdomen-ct" / "example_ct.nii.gz"), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(data_dir / "abdomen-ct" / "example_seg_fast_force_split.nii.gz"), sitk.sitkUInt8)
    pairs = [_deformed_pair(ct, labels, folder, f"ct-def-{n}", rng, "abdomen-ct", max_mm=12.0, control_mm=60.0)
             for n in range(count)]
    return Suite("ct-deformed", pairs, "abdominal CT (122x101x112, 3 mm) vs known smooth deformations of itself "
                 "(affine: 3 deg, 5 mm, 3 %; SVF up to 12 mm); all TotalSegmentator labels")


def _synthesise(labels: sitk.Image, table: np.ndarray, spacing: float, rng: np.random.Generator,
                lower: np.ndarray, upper: np.ndarray) -> sitk.Image:
    """A CT-like image from a label map: ``table[label]``, blur, downsampling (to the index box), bias, noise."""
    array = table[sitk.GetArrayViewFromImage(labels).astype(np.int64)].astype(np.float32)
    image = sitk.GetImageFromArray(ndimage.gaussian_filter(array, 1.0))
    image.CopyInformation(labels)
    image = _resample_iso(image, spacing, lower=lower, upper=upper)
    shape = sitk.GetArrayViewFromImage(image).shape
    bias = np.exp(ndimage.zoom(0.1 * rng.standard_normal((4, 4, 4)), np.array(shape) / 4, order=3))
    array = sitk.GetArrayFromImage(image) * bias[:shape[0], :shape[1], :shape[2]]
    array += 0.03 * rng.standard_normal(shape)
    out = sitk.GetImageFromArray(array.astype(np.float32))
    out.CopyInformation(image)
    return out


def _synthesised_pairs(files: list[tuple[Path, Path]], folder: Path, rng: np.random.Generator,
                       spacing: float, crop_mm: float | None = 24.0) -> list[Pair]:
    """One pair per (fixed, moving) label-map file: a CT-like image synthesised from each (:func:`_synthesise`,
    one intensity table per pair), both cropped to one box around their organs + ``crop_mm`` (None: the label
    maps' whole grid)."""
    pairs = []
    for fixed_file, moving_file in files:
        table = np.concatenate([[rng.uniform(0.0, 0.2)], rng.uniform(0.2, 1.0, 13)])  # shared by the pair
        maps = {"fixed": sitk.ReadImage(str(fixed_file), sitk.sitkUInt8),
                "moving": sitk.ReadImage(str(moving_file), sitk.sitkUInt8)}
        lower, upper = (None, None) if crop_mm is None else \
            _foreground_box(list(maps.values()), crop_mm)  # both on one grid: crop both to the same box
        images = {}
        for role, labels in maps.items():
            images[role] = _synthesise(labels, table, spacing, rng, lower, upper)
            images[f"{role}_labels"] = _resample_iso(labels, spacing, True, lower, upper)
        pair_id = f"abd-{fixed_file.name[:4]}-{moving_file.name[:4]}"
        pairs.append(Pair(id=pair_id, preset="same-modality", **_write_all(images, folder / pair_id)))
    return pairs


def _abdomen_synth(data_dir: Path, folder: Path, rng: np.random.Generator, count: int = 4,
                   spacing: float = 4.0) -> Suite:
    files = sorted((data_dir / "abdomen-labels").glob("*.nii.gz"))
    if len(files) < 2 * count:
        raise FileNotFoundError(f"{data_dir / 'abdomen-labels'}: need {2 * count} label maps, found {len(files)}")
    chosen = rng.choice(len(files), size=2 * count, replace=False)
    pairs = _synthesised_pairs([(files[chosen[2 * n]], files[chosen[2 * n + 1]]) for n in range(count)], folder, rng,
                               spacing)
    return Suite("abdomen-synth", pairs, f"inter-subject abdominal pairs synthesised from Learn2Reg/BTCV organ "
                 f"labels ({spacing:g} mm, cropped to the organs + 24 mm, 13 organs; intensity table shared "
                 f"within a pair)")


HELD_OUT_ABDOMEN = ("0027", "0028", "0029", "0030")
"""The abdominal label maps that the shipped ``abdomen-ct`` weights never saw (their validation subjects)."""


def _abdomen_heldout(data_dir: Path, folder: Path, rng: np.random.Generator, spacing: float = 2.0) -> Suite:
    files = [data_dir / "abdomen-labels" / f"{name}.nii.gz" for name in HELD_OUT_ABDOMEN]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"held-out abdominal label maps not found: {', '.join(map(str, missing))}")
    order = [(0, 1), (1, 0), (2, 3), (3, 2)]
    pairs = _synthesised_pairs([(files[a], files[b]) for a, b in order], folder, rng, spacing)
    return Suite("abdomen-heldout", pairs, f"inter-subject abdominal pairs of the 4 subjects the shipped weights "
                 f"never saw ({', '.join(HELD_OUT_ABDOMEN)}), synthesised like abdomen-synth at the native "
                 f"{spacing:g} mm grid, cropped to the organs + 24 mm")


def _abdomen_native(data_dir: Path, folder: Path, rng: np.random.Generator) -> Suite:
    files = [data_dir / "abdomen-labels" / f"{name}.nii.gz" for name in HELD_OUT_ABDOMEN]
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"held-out abdominal label maps not found: {', '.join(map(str, missing))}")
    order = [(0, 1), (1, 0), (2, 3), (3, 2)]
    pairs = _synthesised_pairs([(files[a], files[b]) for a, b in order], folder, rng, 2.0, crop_mm=None)
    return Suite("abdomen-native", pairs, f"the abdomen-heldout pairs ({', '.join(HELD_OUT_ABDOMEN)}) on the label "
                 f"maps' whole native grid, 192x160x256 voxels at 2 mm (Learn2Reg AbdomenCTCT's size), not cropped")


def _brain(data_dir: Path, folder: Path, rng: np.random.Generator, spacing: float = 2.0,
           name: str = "brain") -> Suite:
    brain = data_dir / "brain-mri"
    eval_labels = [int(v) for v in json.loads((brain / "vxm_eval_labels.json").read_text())]
    subjects = {}
    for subject, image_file, label_file in (("fsaverage", "fsaverage_brain.nii.gz", "fsaverage_aseg.nii.gz"),
                                             ("vxm", "vxm_test_scan_t1.nii.gz", "vxm_test_scan_aseg.nii.gz")):
        image = sitk.ReadImage(str(brain / image_file), sitk.sitkFloat32)
        labels = sitk.ReadImage(str(brain / label_file), sitk.sitkUInt8 if subject == "vxm" else sitk.sitkInt16)
        lower, upper = _foreground_box([image], 8.0)  # the skull-stripped brain + 8 mm
        subjects[subject] = {"image": _normalise(_resample_iso(image, spacing, lower=lower, upper=upper)),
                             "labels": sitk.Cast(_resample_iso(labels, spacing, True, lower, upper), sitk.sitkUInt8)}
    pairs = []
    for fixed, moving in (("fsaverage", "vxm"), ("vxm", "fsaverage")):
        images = {"fixed": subjects[fixed]["image"], "moving": subjects[moving]["image"],
                  "fixed_labels": subjects[fixed]["labels"], "moving_labels": subjects[moving]["labels"]}
        pair_id = f"brain-{fixed}-{moving}"
        pairs.append(Pair(id=pair_id, preset="brain-mri", labels=eval_labels, **_write_all(images, folder / pair_id)))
    return Suite(name, pairs, f"VoxelMorph test scan <-> fsaverage T1 ({spacing:g} mm, cropped to the brain), "
                 "30 VoxelMorph aseg structures")


def _brain_native(data_dir: Path, folder: Path, rng: np.random.Generator) -> Suite:
    return _brain(data_dir, folder, rng, spacing=1.0, name="brain-native")


def _ct_wide(data_dir: Path, folder: Path, rng: np.random.Generator, pad_mm: float = 120.0) -> Suite:
    narrow = _ct_deformed(data_dir, folder / "ct-deformed", rng)
    pairs = []
    for pair in narrow.pairs:
        images = {}
        for key in ("fixed", "moving", "fixed_labels", "moving_labels", "true_displacement"):
            image = sitk.ReadImage(str(getattr(pair, key)))
            pad = [round(pad_mm / s) for s in image.GetSpacing()[:2]] + [0]  # in-plane (i, j)
            air = float(sitk.GetArrayViewFromImage(image).min()) if key in ("fixed", "moving") else 0.0
            if image.GetNumberOfComponentsPerPixel() > 1:  # the known field: 0 outside the CT, never scored there
                images[key] = sitk.Compose([sitk.ConstantPad(sitk.VectorIndexSelectionCast(image, c), pad, pad, 0.0)
                                            for c in range(image.GetNumberOfComponentsPerPixel())])
            else:
                images[key] = sitk.ConstantPad(image, pad, pad, air)
        pair_id = pair.id.replace("ct-def", "ct-wide")
        pairs.append(Pair(id=pair_id, preset=pair.preset, **_write_all(images, folder / pair_id)))
    return Suite("ct-wide", pairs, f"the ct-deformed pairs (the same deformations) with {pad_mm:g} mm of air added "
                 f"on each side in-plane (a wider reconstruction of the same body)")


_BUILDERS = {"tiny": _tiny, "ct-deformed": _ct_deformed, "abdomen-synth": _abdomen_synth, "brain": _brain,
             "abdomen-heldout": _abdomen_heldout, "abdomen-native": _abdomen_native,
             "brain-native": _brain_native, "ct-wide": _ct_wide}
_DRAWN_AS = {"ct-wide": "ct-deformed"}
"""Suites whose pairs are drawn with another suite's random numbers (the same deformations)."""


def build_suites(name: str, output_dir: str | Path, data_dir: str | Path | None = None, seed: int = 0) -> list[Suite]:
    """Generate suite ``name`` (or a group such as ``all``) under ``output_dir/pairs/`` and return it.

    Each suite's pairs file is ``output_dir/pairs/<suite>/pairs.json``, reusable with ``--pairs``.
    """
    names = SUITE_GROUPS.get(name, (name,))
    unknown = [n for n in names if n not in _BUILDERS]
    if unknown:
        raise ValueError(f"unknown suite {name!r}; expected one of {list(SUITES) + list(SUITE_GROUPS)}")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
    if any(n != "tiny" for n in names) and not data_dir.is_dir():
        raise FileNotFoundError(f"data folder {data_dir} not found (set --data-dir or SHMOAREG_DATA)")
    suites = []
    for suite_name in names:
        folder = Path(output_dir) / "pairs" / suite_name
        rng = np.random.default_rng([seed, SUITES.index(_DRAWN_AS.get(suite_name, suite_name))])
        suite = _BUILDERS[suite_name](data_dir, folder, rng)
        suite.source = save_pairs(suite, folder / "pairs.json")
        suites.append(suite)
    return suites
