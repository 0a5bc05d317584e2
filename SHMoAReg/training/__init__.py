"""Training SHMoAReg: dataset description, label-to-image synthesis, the training loop, ablation, experts.

Split by dependency: :mod:`.dataset` reads images with SimpleITK and writes a
compressed tensor file (``data.npz``); :mod:`.synthesis` and :mod:`.loop` need only
torch, numpy and the network (which imports MONAI, a pure-Python wheel) plus the
engine's metrics for validation (:mod:`.scores`), and read no image files.
:mod:`.run` turns the ``shmoareg train`` arguments into a run (the command line
itself is :mod:`SHMoAReg.train`); :mod:`.ablation` trains and scores the variants.
"""
