"""The demo's shipped data (Resources/Demo) and its failure when the data is missing; the full demo runs with -m slow."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from SHMoAReg.cli.demo import DEMO_DIR, DEMO_FILES, demo_data, run_demo
from SHMoAReg.errors import InputError


def test_demo_data_is_shipped_small_and_on_one_grid():
    paths = demo_data()
    image, labels = (sitk.ReadImage(str(paths[key])) for key in ("image", "labels"))
    assert image.GetPixelID() == sitk.sitkInt16 and labels.GetPixelID() == sitk.sitkUInt8
    assert image.GetSize() == labels.GetSize() and np.allclose(image.GetSpacing(), (4.0, 4.0, 4.0))
    assert np.allclose(image.GetOrigin(), labels.GetOrigin()) and np.allclose(image.GetDirection(), labels.GetDirection())
    assert all(path.stat().st_size < 1_000_000 for path in paths.values())
    hu = sitk.GetArrayViewFromImage(image)
    assert hu.min() >= -1300 and np.percentile(hu, 1) < -500  # HU, with air around the body
    assert len(np.unique(sitk.GetArrayViewFromImage(labels))) > 20
    for name in ("README.md", "TotalSegmentator-LICENSE-Apache-2.0.txt", "make_demo_data.py"):
        assert (DEMO_DIR / name).is_file()


def test_missing_demo_data_fails_with_one_line(tmp_path):
    with pytest.raises(InputError) as error:
        demo_data(tmp_path)
    message = str(error.value)
    assert "\n" not in message and DEMO_FILES["image"] in message and "--phantom" in message


@pytest.mark.slow
def test_real_ct_demo_improves_dice_and_finds_the_field(tmp_path):
    summary = run_demo(tmp_path / "demo", device="cpu")
    assert summary["dice_after"] > summary["dice_before"] + 0.05
    assert summary["displacement_error_mm"] < 0.5 * summary["true_displacement_mm"]
    assert summary["folding_fraction"] < 0.01
