"""Training SHMoAReg: dataset description, label-to-image synthesis, the training loop, ablation, experts.

Split by dependency: :mod:`.dataset` reads images with SimpleITK and writes a
compressed tensor file (``data.npz``); :mod:`.synthesis` and :mod:`.loop` need only
torch, numpy and the network (which imports MONAI, a pure-Python wheel).
"""
