"""The ``shmoareg`` command line (the console script ``shmoareg = "SHMoAReg.cli:main"``).

Modules
    main              the parser, the ``register``, ``evaluate``, ``demo`` and ``info`` commands, exit codes,
                      signals; it adds the plug-in commands of :data:`~.main.PLUGIN_COMMANDS`
    evaluate_command  ``shmoareg evaluate``: metrics of an existing transform on labels and landmarks
    demo              ``shmoareg demo``: a registration with a known answer
    toolkit_cli       ``shmoareg apply``, ``invert`` and ``convert`` (a plug-in)

The other plug-ins live with their work: :mod:`SHMoAReg.train` (``train``, ``experts``),
:mod:`SHMoAReg.benchmark.cli` (``benchmark``) and :mod:`SHMoAReg.cohort.cli` (``batch``).
What :mod:`.main` exports is importable from here (standard library and torch-free engine modules only).
"""
from .main import EXIT_PAIRS_FAILED, add_common_options, add_register_options, build_parser, main, register_kwargs

__all__ = ["main", "build_parser", "add_common_options", "add_register_options", "register_kwargs",
           "EXIT_PAIRS_FAILED"]
