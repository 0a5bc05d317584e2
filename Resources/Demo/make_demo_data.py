"""Make the data of ``shmoareg demo`` from TotalSegmentator's example CT (see README.md beside this file)::

    .venv/bin/python Resources/Demo/make_demo_data.py [SOURCE_FOLDER]

``SOURCE_FOLDER`` (default: ``../shared/data/abdomen-ct`` beside the repository) holds ``example_ct.nii.gz``
(HU, 3 mm) and its label map ``example_seg_fast_force_split.nii.gz``. Writes, next to this script, on one
4 mm isotropic grid with the source's direction:

* ``example_ct_4mm.nii.gz``: the CT, Gaussian-smoothed before linear resampling (sigma
  ``0.5 * sqrt(4^2 - 3^2)`` mm, against aliasing), rounded to int16 HU; voxels outside the body set to
  -1000 HU (air; this removes the table);
* ``example_ct_4mm_labels.nii.gz``: the label map, nearest neighbour, uint8;

both cropped to the body plus 16 mm. The body is the largest connected region above -500 HU with its
holes (lungs, bowel gas) filled in each axial slice, dilated by 2 voxels (8 mm).
"""
from __future__ import annotations

import hashlib
import math
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

HERE = Path(__file__).resolve().parent
DEFAULT_SOURCE = HERE.parents[2] / "shared" / "data" / "abdomen-ct"
SPACING_MM = 4.0
BODY_ABOVE_HU = -500.0
AIR_HU = -1000
DILATION_VOXELS = 2
MARGIN_VOXELS = 2
OUTPUTS = {"image": "example_ct_4mm.nii.gz", "labels": "example_ct_4mm_labels.nii.gz"}


def grid_4mm(image: sitk.Image) -> sitk.Image:
    """An empty 4 mm isotropic grid with ``image``'s origin and direction inside its voxel centres."""
    size = [int(math.floor((n - 1) * s / SPACING_MM + 1e-6)) + 1 for n, s in zip(image.GetSize(), image.GetSpacing())]
    grid = sitk.Image(size, sitk.sitkUInt8)
    grid.SetOrigin(image.GetOrigin())
    grid.SetDirection(image.GetDirection())
    grid.SetSpacing([SPACING_MM] * 3)
    return grid


def body_mask(hu: np.ndarray, axial_axis: int) -> np.ndarray:
    """Boolean ``(D, H, W)`` body: largest region above ``BODY_ABOVE_HU``, holes filled per axial slice
    (``axial_axis``: the array axis along the patient's z), dilated by ``DILATION_VOXELS``."""
    regions, count = ndimage.label(hu > BODY_ABOVE_HU)
    if count == 0:
        raise SystemExit("no voxel above -500 HU: is the source a CT in HU?")
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    body = np.moveaxis(regions == sizes.argmax(), axial_axis, 0)
    body = np.stack([ndimage.binary_fill_holes(slice_) for slice_ in body])
    return ndimage.binary_dilation(np.moveaxis(body, 0, axial_axis), iterations=DILATION_VOXELS)


def crop_box(mask: np.ndarray) -> tuple[slice, ...]:
    """Array slices of ``mask``'s bounding box plus ``MARGIN_VOXELS``, clipped to the array."""
    inside = np.argwhere(mask)
    lower = np.maximum(inside.min(axis=0) - MARGIN_VOXELS, 0)
    upper = np.minimum(inside.max(axis=0) + MARGIN_VOXELS + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lower, upper))


def as_image(array: np.ndarray, grid: sitk.Image, box: tuple[slice, ...]) -> sitk.Image:
    """``array`` (already cropped to ``box``) with ``grid``'s geometry moved to the box's first voxel."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(grid.GetSpacing())
    image.SetDirection(grid.GetDirection())
    image.SetOrigin(grid.TransformIndexToPhysicalPoint([box[2].start, box[1].start, box[0].start]))
    return image


def main(source: Path) -> None:
    ct = sitk.ReadImage(str(source / "example_ct.nii.gz"), sitk.sitkFloat32)
    labels = sitk.ReadImage(str(source / "example_seg_fast_force_split.nii.gz"), sitk.sitkUInt8)
    grid = grid_4mm(ct)
    sigma = [0.5 * math.sqrt(max(SPACING_MM**2 - s**2, 0.0)) for s in ct.GetSpacing()]
    smoothed = sitk.SmoothingRecursiveGaussian(ct, sigma)
    hu = sitk.GetArrayFromImage(sitk.Resample(smoothed, grid, sitk.Transform(), sitk.sitkLinear, float(AIR_HU),
                                              sitk.sitkFloat32))
    label_array = sitk.GetArrayFromImage(sitk.Resample(labels, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                       sitk.sitkUInt8))
    direction = np.array(ct.GetDirection()).reshape(3, 3)
    axial_axis = 2 - int(np.argmax(np.abs(direction[2])))  # index axis closest to z -> array axis
    body = body_mask(hu, axial_axis)
    box = crop_box(body | (label_array > 0))
    hu = np.where(body, np.rint(hu), AIR_HU).clip(-32768, 32767).astype(np.int16)[box]
    outputs = {"image": as_image(hu, grid, box), "labels": as_image(label_array[box], grid, box)}
    for key, image in outputs.items():
        path = HERE / OUTPUTS[key]
        sitk.WriteImage(image, str(path), useCompression=True)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path.name}: size {image.GetSize()}, spacing {SPACING_MM:g} mm, origin "
              f"{tuple(round(o, 2) for o in image.GetOrigin())}, {path.stat().st_size / 1024:.0f} KiB, sha256 {digest}")
    print(f"labels present: {len(np.unique(label_array[box])) - 1}; source labels: "
          f"{len(np.unique(sitk.GetArrayViewFromImage(labels))) - 1}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE)
