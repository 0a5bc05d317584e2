"""The QA picture of one registration: a glance that tells where the result can be trusted.

Three rows over three orthogonal slices through the centre of the fixed grid:

1. a checkerboard of the fixed and the warped image (edges that jump between tiles = misalignment),
2. ``|fixed - warped|``; rows 1 and 2 share one robust intensity window (the 1st to 99th percentile
   of the two images together, mapped to [0, 1]),
3. the Jacobian determinant of the transform, a diverging colour map centred on 1 (blue: compression,
   red: expansion, saturated at 0 and 2); folded voxels (``det J <= 0``, the folding of
   :mod:`SHMoAReg.evaluate.metrics`) are painted green.

Slices are cut from the voxel arrays (``sitk.GetArrayFromImage``: axes k, j, i) through their middle
index: columns show the plane across k ("axial" for a usual scan), across j and across i, with the
physical aspect ratio and k upwards; they are not reoriented to a radiological view.

The picture is a PNG of 640 x 640 pixels (100 dpi) reduced to 256 colours, so that it stays well below
200 kB and can be embedded in a report. matplotlib is imported only when a picture is drawn, on its own
Agg canvas (no pyplot, no change of the global backend).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

__all__ = ["checkerboard", "robust_window", "centre_slices", "qa_png", "write_qa_picture", "qa_picture_for_run",
           "QA_FILE"]

QA_FILE = "qa.png"
WINDOW_PERCENTILES = (1.0, 99.0)
FIGURE_INCHES = 6.4
DPI = 100
COLOURS = 256
JACOBIAN_RANGE = (0.0, 2.0)  # the colour map saturates outside; centred on 1
DIFFERENCE_MAX = 0.5  # |fixed - warped| in window units shown at full brightness
PLANES = ("across k", "across j", "across i")


def checkerboard(a: np.ndarray, b: np.ndarray, tiles: int = 8) -> np.ndarray:
    """``a`` and ``b`` (2-D, same shape) in alternating square tiles, ``tiles`` along the longer side."""
    if a.shape != b.shape:
        raise ValueError(f"checkerboard needs two slices of one shape, got {a.shape} and {b.shape}")
    rows, cols = np.indices(a.shape)
    size = max(1, max(a.shape) // tiles)
    return np.where(((rows // size) + (cols // size)) % 2 == 0, a, b)


def robust_window(*arrays: np.ndarray, percentiles: tuple[float, float] = WINDOW_PERCENTILES,
                  max_samples: int = 1_000_000) -> tuple[float, float]:
    """``(low, high)``: the percentiles of the values of all ``arrays`` together (subsampled evenly to
    ``max_samples``); ``high > low`` always."""
    values = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if values.size > max_samples:
        values = values[:: values.size // max_samples + 1]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, percentiles))
    return (low, high) if high > low else (low, low + 1.0)


def centre_slices(array: np.ndarray) -> list[np.ndarray]:
    """The three slices of a ``(k, j, i)`` array through its middle index, across k, j and i, each ready
    for ``imshow`` (rows downwards; k runs upwards in the slices across j and i)."""
    if array.ndim != 3:
        raise ValueError(f"expected a 3-D (k, j, i) array, got shape {array.shape}")
    k, j, i = (n // 2 for n in array.shape)
    return [array[k], array[:, j, :][::-1], array[:, :, i][::-1]]


def _aspects(spacing_ijk: tuple[float, float, float]) -> list[float]:
    """``imshow`` aspect (row spacing / column spacing) of the slices of :func:`centre_slices`."""
    si, sj, sk = spacing_ijk
    return [sj / si, sk / si, sk / sj]


def _check_grids(fixed: sitk.Image, warped: sitk.Image, jacobian: sitk.Image) -> None:
    sizes = {"fixed": fixed.GetSize(), "warped": warped.GetSize(), "jacobian": jacobian.GetSize()}
    if len(set(sizes.values())) != 1 or fixed.GetDimension() != 3:
        raise ValueError(f"the QA picture needs three 3-D images on the fixed grid, got sizes {sizes}")


def _normalised(array: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    low, high = window
    return np.clip((array.astype(np.float32) - low) / (high - low), 0.0, 1.0)


def _draw(figure, fixed: np.ndarray, warped: np.ndarray, determinant: np.ndarray, aspects: list[float],
          title: str) -> None:
    """Fill ``figure`` with the 3 x 3 panels (see the module docstring)."""
    from matplotlib.colors import ListedColormap, TwoSlopeNorm

    window = robust_window(fixed, warped)
    fixed_n, warped_n = _normalised(fixed, window), _normalised(warped, window)
    axes = figure.subplots(3, 3, squeeze=False)
    folding = ListedColormap(["#00c000"])
    norm = TwoSlopeNorm(vmin=JACOBIAN_RANGE[0], vcenter=1.0, vmax=JACOBIAN_RANGE[1])
    difference_image = jacobian_image = None
    for column, (f, w, d, aspect) in enumerate(zip(centre_slices(fixed_n), centre_slices(warped_n),
                                                   centre_slices(determinant), aspects)):
        axes[0, column].imshow(checkerboard(f, w), cmap="gray", vmin=0.0, vmax=1.0, aspect=aspect,
                               interpolation="nearest")
        difference_image = axes[1, column].imshow(np.abs(f - w), cmap="magma", vmin=0.0, vmax=DIFFERENCE_MAX,
                                                  aspect=aspect, interpolation="nearest")
        jacobian_image = axes[2, column].imshow(d, cmap="RdBu_r", norm=norm, aspect=aspect, interpolation="nearest")
        folded = d <= 0
        if folded.any():
            axes[2, column].imshow(np.ma.masked_where(~folded, np.ones_like(d)), cmap=folding, vmin=0, vmax=1,
                                   aspect=aspect, interpolation="nearest")
        axes[0, column].set_title(PLANES[column], fontsize=8)
    for row, label in enumerate(("fixed / warped", "|fixed - warped|", "det J (green: <= 0)")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    for axis in axes.ravel():
        axis.set_xticks([])
        axis.set_yticks([])
    figure.colorbar(difference_image, ax=axes[1, :].tolist(), shrink=0.8, pad=0.02).ax.tick_params(labelsize=7)
    figure.colorbar(jacobian_image, ax=axes[2, :].tolist(), shrink=0.8, pad=0.02).ax.tick_params(labelsize=7)
    folded_percent = 100.0 * float(np.mean(determinant <= 0))
    summary = f"det J min {float(np.min(determinant)):.2f}, folding {folded_percent:.3f} % of voxels"
    figure.suptitle(f"{title}\n{summary}" if title else summary, fontsize=9)


def _png_bytes(figure) -> bytes:
    """The figure as a palette PNG (at most :data:`COLOURS` colours, no dithering)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    rgb = Image.fromarray(np.ascontiguousarray(np.asarray(canvas.buffer_rgba())[..., :3]))
    no_dither = Image.Dither.NONE if hasattr(Image, "Dither") else 0
    buffer = io.BytesIO()
    rgb.quantize(colors=COLOURS, dither=no_dither).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def qa_png(fixed: sitk.Image, warped: sitk.Image, jacobian: sitk.Image, title: str = "") -> bytes:
    """The QA picture (see the module docstring) of a registration as PNG bytes.

    ``fixed``, ``warped`` (the moving image resampled onto the fixed grid) and ``jacobian`` (the Jacobian
    determinant on the fixed grid, as ``register`` writes them) must share one grid; raises ``ValueError``
    naming the three sizes otherwise.
    """
    from matplotlib.figure import Figure

    _check_grids(fixed, warped, jacobian)
    figure = Figure(figsize=(FIGURE_INCHES, FIGURE_INCHES), dpi=DPI, layout="constrained")
    _draw(figure, sitk.GetArrayFromImage(fixed), sitk.GetArrayFromImage(warped),
          sitk.GetArrayFromImage(jacobian).astype(np.float32), _aspects(fixed.GetSpacing()), title)
    return _png_bytes(figure)


def write_qa_picture(fixed: sitk.Image, warped: sitk.Image, jacobian: sitk.Image, path: str | os.PathLike,
                     title: str = "") -> Path:
    """Write :func:`qa_png` to ``path`` atomically (a temporary file beside it, then a rename)."""
    from ..io.image_io import write_atomically

    return write_atomically(path, qa_png(fixed, warped, jacobian, title))


def qa_picture_for_run(run_dir: str | os.PathLike, fixed: sitk.Image, title: str = "") -> Path:
    """``run_dir/qa.png`` from the ``warped.nii.gz`` and ``jacobian.nii.gz`` a ``register`` run wrote there."""
    run_dir = Path(run_dir)
    warped = sitk.ReadImage(str(run_dir / "warped.nii.gz"), sitk.sitkFloat32)
    jacobian = sitk.ReadImage(str(run_dir / "jacobian.nii.gz"), sitk.sitkFloat32)
    return write_qa_picture(fixed, warped, jacobian, run_dir / QA_FILE, title)
