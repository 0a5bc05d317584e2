"""SHMoAReg.preprocess.preset_choice: --preset auto picks the preset from the images (CT in HU? head-like field of view?)."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_data
from SHMoAReg.preprocess.preset_choice import AUTO, CHOICES, choose_preset, resolve_preset, summarise_image
from SHMoAReg.preprocess.presets import PRESETS


def _volume(fov_mm, spacing_mm, values) -> sitk.Image:
    """An image over ``fov_mm`` (x, y, z) at isotropic ``spacing_mm``; ``values(x, y, z)`` gets centred mm
    coordinates as (z, y, x)-shaped arrays and returns the intensities."""
    size = [int(round(f / spacing_mm)) for f in fov_mm]
    z, y, x = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing_mm for n in size[::-1]], indexing="ij")
    image = sitk.GetImageFromArray(values(x, y, z).astype(np.float32))
    image.SetSpacing([spacing_mm] * 3)
    image.SetOrigin((-50.0, 20.0, -100.0))
    return image


def _ct(seed: int = 0) -> sitk.Image:
    """An abdomen-like HU volume: air -1000 around a 40 HU body with a -100 HU fat rim and a 400 HU spine."""
    rng = np.random.default_rng(seed)

    def hu(x, y, z):
        out = np.full(x.shape, -1000.0)
        out[(x / 130) ** 2 + (y / 90) ** 2 < 1] = -100.0
        out[(x / 115) ** 2 + (y / 78) ** 2 < 1] = 40.0
        out[x ** 2 + (y - 50) ** 2 < 15 ** 2] = 400.0
        return out + rng.normal(0.0, 10.0, x.shape)
    return _volume((300, 250, 200), 4.0, hu)


def _brain(radii=(75.0, 90.0, 75.0), seed: int = 0) -> sitk.Image:
    """A [0, 1] brain-like ellipsoid (150 x 180 x 150 mm) at 1.5 mm: 'white matter' inside 'grey matter'."""
    rng = np.random.default_rng(seed)

    def t1(x, y, z):
        r = np.sqrt((x / radii[0]) ** 2 + (y / radii[1]) ** 2 + (z / radii[2]) ** 2)
        out = np.where(r < 1, 0.45, 0.0) + np.where(r < 0.8, 0.4, 0.0)
        return np.clip(out + rng.normal(0.0, 0.01, x.shape), 0.0, 1.0)
    return _volume((200, 230, 200), 1.5, t1)


def _torso_mr(radii=(165.0, 115.0), length=400.0, fov=(360, 260, 420), spacing=3.0, seed: int = 0) -> sitk.Image:
    """A [0, 1000] elongated body (elliptic cylinder along z) as an MR might show it."""
    rng = np.random.default_rng(seed)

    def mr(x, y, z):
        body = ((x / radii[0]) ** 2 + (y / radii[1]) ** 2 < 1) & (np.abs(z) < length / 2)
        out = np.where(body, 400.0 + 300.0 * np.cos(x / 40.0) ** 2, 0.0) + np.abs(rng.normal(0.0, 10.0, x.shape))
        return np.clip(out, 0.0, 1000.0)
    return _volume(fov, spacing, mr)


def test_the_choices_are_engine_presets():
    assert set(CHOICES) <= set(PRESETS)


def test_hu_volumes_give_abdomen_ct():
    summary = summarise_image(_ct())
    assert summary.looks_like_ct and summary.low_percentile < -500 and summary.soft_tissue_share > 0.3
    name, reason = choose_preset(_ct(0), _ct(1))
    assert name == "abdomen-ct" and "CT" in reason


def test_brain_like_pair_gives_brain_mri():
    summary = summarise_image(_brain())
    assert not summary.looks_like_ct and summary.looks_like_head
    assert all(120 < e < 190 for e in summary.extent_mm), summary.extent_mm
    name, reason = choose_preset(_brain(), _brain((70.0, 85.0, 72.0), seed=1))
    assert name == "brain-mri", reason


def test_elongated_torso_mr_gives_same_modality():
    assert not summarise_image(_torso_mr()).looks_like_head
    name, reason = choose_preset(_torso_mr(), _torso_mr((160.0, 110.0), seed=1))
    assert name == "same-modality", reason
    # small enough for a head, but elongated (100 x 100 x 240 mm): not a head either
    rod = _torso_mr((50.0, 50.0), 240.0, (140, 140, 260), 4.0)
    assert not summarise_image(rod).looks_like_head
    assert choose_preset(_brain(), rod)[0] == "same-modality"


def test_ct_against_mr_gives_mr_ct_either_way():
    assert choose_preset(_ct(), _torso_mr())[0] == "mr-ct"
    assert choose_preset(_brain(), _ct())[0] == "mr-ct"


def test_resolve_preset_passes_names_through():
    ct = _ct()
    assert resolve_preset("brain-mri", ct, ct) == ("brain-mri", None)
    name, reason = resolve_preset(AUTO, ct, ct)
    assert name == "abdomen-ct" and reason


def test_vector_image_is_refused():
    vector = sitk.Image((4, 4, 4), sitk.sitkVectorFloat32, 3)
    with pytest.raises(ValueError):
        choose_preset(vector, vector)


def test_module_does_not_import_torch():
    code = "import sys, SHMoAReg.preprocess.preset_choice; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.realdata
def test_real_brain_pair_gives_brain_mri():
    folder = shared_data("brain-mri")
    fixed = sitk.ReadImage(str(folder / "vxm_test_scan_t1.nii.gz"), sitk.sitkFloat32)
    moving = sitk.ReadImage(str(folder / "fsaverage_brain.nii.gz"), sitk.sitkFloat32)
    name, reason = choose_preset(fixed, moving)
    assert name == "brain-mri", reason


@pytest.mark.realdata
def test_real_ct_gives_abdomen_ct():
    ct = sitk.ReadImage(str(shared_data("abdomen-ct", "example_ct.nii.gz")), sitk.sitkFloat32)
    name, reason = choose_preset(ct, ct)
    assert name == "abdomen-ct", reason
