"""The network runs on the images' content plus a margin (SHMoAReg.preprocess.content_box): the box, the field
continued outside it, and a wider field of view of empty background leaving the network's answer unchanged."""
from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk
import torch

from SHMoAReg import register
from SHMoAReg.network import NetworkConfig, SHMoARegNet
from SHMoAReg.preprocess.content_box import CONTENT_THRESHOLD, box_grid, content_box, crop, uncrop
from SHMoAReg.synthetic import deform, phantom, smooth_deformation
from SHMoAReg.weights import save_weights

SMALL = dict(channels=(4, 8, 8, 16), num_heads=4, top_k=2, window=2)


def _image(size=(20, 24, 28)) -> torch.Tensor:
    return torch.zeros((1, 1, *size))


def test_box_is_the_content_of_both_images_plus_the_margin_clipped_to_the_grid():
    fixed, moving = _image(), _image()
    fixed[0, 0, 8:11, 10:13, 12:15] = 1.0
    moving[0, 0, 9:12, 4:6, 12:14] = 1.0  # a 2-voxel slab: its corners' 3x3x3 mean is 8/27
    box = content_box(fixed, moving, margin=2)
    assert box == (slice(6, 14), slice(2, 15), slice(10, 17))
    assert content_box(fixed, moving, margin=24) == (slice(0, 20), slice(0, 24), slice(0, 28))
    # nothing above the threshold: the whole grid
    faint = _image() + CONTENT_THRESHOLD / 2
    assert content_box(faint, faint) == (slice(0, 20), slice(0, 24), slice(0, 28))
    # isolated noise voxels do not count: the 3x3x3 mean of one bright voxel is 1/27
    noisy = fixed.clone()
    noisy[0, 0, 0, 0, 0] = noisy[0, 0, 19, 23, 27] = 1.0
    assert content_box(noisy, moving, margin=2) == box
    # never shorter than min_size: grown about its centre, kept inside the grid
    assert content_box(fixed, margin=0, min_size=9) == (slice(5, 14), slice(7, 16), slice(9, 18))
    corner = _image()
    corner[0, 0, 0:3, 0:3, 25:28] = 1.0
    assert content_box(corner, margin=0, min_size=9) == (slice(0, 9), slice(0, 9), slice(19, 28))
    assert content_box(corner, margin=0, min_size=99) == (slice(0, 20), slice(0, 24), slice(0, 28))


def test_uncrop_continues_the_field_by_its_faces_and_box_grid_places_the_box():
    field = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(1, 2, 3, 4, 5)
    box = (slice(1, 3), slice(0, 4), slice(2, 4))
    whole = uncrop(crop(field, box), box, field.shape[2:])
    assert whole.shape == field.shape
    assert torch.equal(crop(whole, box), crop(field, box))
    assert torch.equal(whole[:, :, 0], whole[:, :, 1]) and torch.equal(whole[..., 4], whole[..., 3])
    assert torch.equal(whole[..., 0], whole[..., 2])
    assert uncrop(field, tuple(slice(0, n) for n in field.shape[2:]), field.shape[2:]) is field

    grid = sitk.Image([5, 4, 3], sitk.sitkFloat32)  # (i, j, k) = array (k, j, i) = (3, 4, 5)
    grid.SetSpacing((2.0, 3.0, 4.0))
    grid.SetOrigin((10.0, -5.0, 7.0))
    grid.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    part = box_grid(grid, box)
    assert part.GetSize() == (2, 4, 2)
    for index in [(0, 0, 0), (1, 3, 1)]:
        whole_index = (index[0] + 2, index[1] + 0, index[2] + 1)
        assert np.allclose(part.TransformIndexToPhysicalPoint(index), grid.TransformIndexToPhysicalPoint(whole_index))


def _padded(image: sitk.Image, voxels: int) -> sitk.Image:
    return sitk.ConstantPad(image, [voxels] * 3, [voxels] * 3, -1000.0)


def test_a_wider_field_of_view_of_air_leaves_the_networks_field_unchanged(tmp_path):
    """The same pair with 10 and with 30 voxels of air around it (3 mm, the network's grid): the network sees the
    same box, so the field it returns agrees at every voxel of the smaller image. Without the box the network's
    instance normalisation would average over three times the voxels, mostly air, and answer differently."""
    torch.manual_seed(0)
    net = SHMoARegNet(NetworkConfig(**SMALL))
    save_weights(net, tmp_path / "tiny.pt", preset="abdomen-ct")
    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    moved = deform(image, smooth_deformation(image, 4.0, mesh_size=3, seed=3))
    fields, boxes = [], []
    for voxels in (10, 30):
        result = register(_padded(moved, voxels), _padded(image, voxels), tmp_path / f"out{voxels}",
                          weights=tmp_path / "tiny.pt", iterations=0, affine=False, spacing=3.0, network_passes=1,
                          preset="abdomen-ct")
        fields.append(sitk.GetArrayFromImage(result.displacement))
        report = json.loads((tmp_path / f"out{voxels}" / "report.json").read_text())
        boxes.append(report["network"]["box"])
        experts = sitk.ReadImage(str(tmp_path / f"out{voxels}" / "experts" / "layer1_x.nii.gz"))
        assert experts.GetSize() == tuple(boxes[-1]["size"])  # maps cover the box, on the fixed grid (3 mm too)
    assert boxes[0]["size"] == boxes[1]["size"]
    assert [i + 20 for i in boxes[0]["index"]] == boxes[1]["index"]
    assert all(n < total for n, total in zip(boxes[1]["size"], _padded(image, 30).GetSize()))
    inner = fields[1][20:-20, 20:-20, 20:-20]
    assert inner.shape == fields[0].shape
    assert np.abs(fields[0]).max() > 1e-3  # the untrained network moves something (by up to ~0.01 mm)
    np.testing.assert_allclose(inner, fields[0], rtol=0, atol=1e-6)


def test_instance_optimisation_works_on_the_content_and_spends_its_voxel_budget_there(tmp_path, monkeypatch):
    """Instance optimisation alone on the same pair with 10 and with 30 voxels of air around it: it runs on the
    same box around the content (its field agrees at every voxel of the smaller image), and with a voxel budget
    that the wider field of view would exceed, both get the spacing the content needs, not the coarser one the
    whole field of view would."""
    import dataclasses
    import math

    from SHMoAReg.preprocess import presets
    from SHMoAReg.preprocess.grid_rules import working_grid_size, working_spacing

    image, _ = phantom(size=(32, 30, 28), spacing=(3.0, 3.0, 3.0))
    moved = deform(image, smooth_deformation(image, 4.0, mesh_size=3, seed=3))
    options = dict(weights="none", iterations=12, affine=False, preset="abdomen-ct")

    def run(voxels: int, name: str):
        result = register(_padded(moved, voxels), _padded(image, voxels), tmp_path / name, **options)
        return result, json.loads((tmp_path / name / "report.json").read_text())["working_grid"]

    (narrow, narrow_grid), (wide, wide_grid) = run(10, "narrow"), run(30, "wide")
    assert narrow_grid["spacing_mm"] == wide_grid["spacing_mm"] == 3.0  # the preset's 2 mm, never finer than 3 mm
    assert narrow_grid["box"]["size"] == wide_grid["box"]["size"]
    assert [i + 20 for i in narrow_grid["box"]["index"]] == wide_grid["box"]["index"]
    assert all(n < total for n, total in zip(wide_grid["box"]["size"], wide_grid["size"]))
    fields = [sitk.GetArrayFromImage(r.displacement) for r in (narrow, wide)]
    assert np.abs(fields[0]).max() > 0.5  # it registers something (mm)
    np.testing.assert_allclose(fields[1][20:-20, 20:-20, 20:-20], fields[0], rtol=0, atol=1e-4)

    budget = 40**3
    monkeypatch.setitem(presets.PRESETS, "abdomen-ct",
                        dataclasses.replace(presets.PRESETS["abdomen-ct"], max_working_voxels=budget))
    spacings = []
    for voxels, name in ((10, "narrow-budget"), (30, "wide-budget")):
        padded = _padded(image, voxels)
        whole = working_spacing(None, 2.0, 3.0, padded.GetSize(), padded.GetSpacing(), budget)
        _, grid = run(voxels, name)
        spacings.append(grid["spacing_mm"])
        assert math.prod(grid["box"]["size"]) <= 1.25 * budget
        assert math.prod(working_grid_size(padded.GetSize(), padded.GetSpacing(), whole)) <= budget
    assert spacings[1] < whole  # the whole field of view would have been optimised more coarsely
    assert abs(spacings[0] - spacings[1]) <= 0.2


def test_a_small_object_on_a_coarse_grid_gets_a_box_instance_optimisation_can_work_on():
    """A 60 mm cube in 200 mm of air at --spacing 13: the content and its 2-voxel margin span 7 voxels, fewer than
    instance optimisation's 9 (its grid is pooled by 2 and smoothed over 3 control points): the box is grown to 9."""
    array = np.full((40, 40, 40), -1000.0, np.float32)
    array[14:26, 14:26, 14:26] = 40.0
    fixed = sitk.GetImageFromArray(array)
    fixed.SetSpacing((5.0, 5.0, 5.0))
    moving = sitk.GetImageFromArray(np.roll(array, 1, axis=2))
    moving.CopyInformation(fixed)
    result = register(fixed, moving, None, weights="none", preset="abdomen-ct", spacing=13.0, affine=False,
                      iterations=20)
    assert result.report["working_grid"]["box"]["size"] == [9, 9, 9]
    assert result.report["deformable_check"]["kept"] == "deformable"
