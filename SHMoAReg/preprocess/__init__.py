"""From the pair as read to the pair the deformable stage works on: preset, working grid, start, intensities.

Modules, in data-flow order
    presets        the defaults that suit one kind of image
    preset_choice  ``--preset auto``: a preset from what the two images look like
    grid_rules     the working grid of a run and the memory it needs (standard library only)
    grid           the working grid and resampling onto it
    affine         affine pre-alignment with SimpleITK
    start_choice   the transform the deformable stage starts from (identity, centre of mass, affine), and
                   the check that the deformable result is better than its start
    normalize      intensity normalisation to [0, 1] per modality

``presets``, ``preset_choice`` and ``grid_rules`` import no torch: the Slicer module imports them in
Slicer's own process. Nothing is imported here, so that stays true.
"""
