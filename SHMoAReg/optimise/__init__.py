"""Instance optimisation: fit a displacement to one image pair, and the terms it minimises.

Modules, in data-flow order
    loss_names             the names of the similarity and smoothness terms (torch-free: the presets and
                           the Slicer module use them)
    mind                   MIND-SSC descriptors (similarity across modalities)
    regularisers           smoothness of a displacement: diffusion and bending energy
    losses                 similarity (LNCC, MIND-SSC), smoothness and label terms (also used in training)
    warp                   warping and displacement-field utilities (also used by the network and the toolkit)
    instance_optimisation  the coarse-to-fine Adam fit of a displacement

Nothing is imported here, so ``SHMoAReg.optimise.loss_names`` loads without torch.
"""
