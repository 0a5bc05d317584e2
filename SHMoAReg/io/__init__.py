"""Reading and writing: what enters the engine is checked where it enters; what leaves it is written at once.

Modules, in data-flow order
    validation  checks SimpleITK does not make: raw image headers before SimpleITK reads them, and a
                fixed/moving pair (overlap, working grid, memory) before a run
    image_io    reading images (files and DICOM series) safely; writing files atomically
    landmarks   landmark files (CSV, Slicer ``.fcsv`` and ``.mrk.json``) as ``(N, 3)`` LPS mm
    outputs     the output folder: refuse to clobber results, write everything at once

Nothing is imported here, so ``SHMoAReg.io.image_io`` loads without torch (the Slicer module's
transform tools use it through :mod:`SHMoAReg.toolkit` in Slicer's own process).
"""
