"""Draw ``SHMoARegistration.png``, the extension's catalogue picture, from a real run of the module's Logic.

The Logic (real MRML scene from ``slicer-core``, real engine) registers the abdominal CT of
``../shared/data/abdomen-ct`` (TotalSegmentator test CT, Apache-2.0) to a known deformation of itself
(``Testing/slicer_realdata_check.py``); the panels are drawn from the output nodes' voxels with
matplotlib. It is a picture of the module's results, not a capture of Slicer's window (no GUI here)::

    .venv/bin/python Resources/Screenshots/make_screenshot.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1] / "Testing"))
import slicer_realdata_check as check  # noqa: E402


def draw(fixed, moving, result, figures, path: Path = HERE / "SHMoARegistration.png") -> None:
    import slicer

    arrays = {name: slicer.util.arrayFromVolume(node).astype(float)
              for name, node in (("fixed", fixed), ("moving", moving), ("warped", result.warped_volume),
                                 ("jacobian", result.jacobian))}
    k = arrays["fixed"].shape[0] // 2  # an axial slice through the middle
    window = dict(cmap="gray", vmin=-300, vmax=500)
    panels = [("Fixed CT", arrays["fixed"][k], window),
              ("Moving (known deformation)", arrays["moving"][k], window),
              ("Warped moving", arrays["warped"][k], window),
              ("|fixed - moving| before", np.abs(arrays["fixed"][k] - arrays["moving"][k]), dict(cmap="magma", vmin=0, vmax=400)),
              ("|fixed - warped| after", np.abs(arrays["fixed"][k] - arrays["warped"][k]), dict(cmap="magma", vmin=0, vmax=400)),
              ("Jacobian determinant", arrays["jacobian"][k], dict(cmap="coolwarm", vmin=0.7, vmax=1.3))]
    fig, axes = plt.subplots(2, 3, figsize=(12, 8.2))
    for axis, (title, image, style) in zip(axes.ravel(), panels):
        axis.imshow(image[::-1], **style)  # rows from anterior at the top
        axis.set_title(title, fontsize=11)
        axis.axis("off")
    fig.suptitle(f"SHMoA Registration in 3D Slicer's MRML scene: organ Dice {figures['dice_mean_before']:.3f} -> "
                 f"{figures['dice_mean_after']:.3f}, field error {figures['displacement_error_mm_mean']:.2f} mm "
                 f"(known field mean {figures['known_displacement_mm_mean']:.2f} mm), folding "
                 f"{100 * figures['folding_fraction']:.2f} %", fontsize=11)
    fig.text(0.5, 0.01, "Drawn from the output nodes of the module's Logic (warped volume, Jacobian); CT: "
             "TotalSegmentator test data, Apache-2.0.", ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.03, 1, 0.95))
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    if not check.data_available():
        sys.exit(f"needs ../shared/data/abdomen-ct ({check.CT})")
    print(check.run_check(device="cpu", on_result=draw))
