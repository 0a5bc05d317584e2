"""How good a registration is: metrics, the scores of a transform, expert utilisation, the QA picture.

Modules, in data-flow order
    metrics     Learn2Reg metrics in millimetres: Dice, HD95, Jacobian determinant, SDlogJ, folding, TRE
    evaluation  score a transform on label maps and landmarks (``register`` and ``shmoareg evaluate``)
    experts     expert utilisation: the maps and fractions that make the MoE decisions inspectable
    qa          the QA picture of one registration (checkerboard, difference, Jacobian determinant)
"""
