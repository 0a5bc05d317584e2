"""The result as a transform: displacement fields <-> ITK transforms, in physical space (LPS mm, fixed -> moving).

Modules
    field_transform  a displacement field on a grid as a SimpleITK image or ``DisplacementFieldTransform``,
                     composed with the affine pre-alignment; any transform back to a displacement field;
                     reading and writing transform files

Applying, inverting and converting transforms (``shmoareg apply``, ``invert``, ``convert``) is
:mod:`SHMoAReg.toolkit`.
"""
