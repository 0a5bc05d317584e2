"""Benchmark SHMoAReg against established registration tools on the same pairs.

``shmoareg benchmark`` runs every method on every pair of a suite in its own
subprocess (wall time, CPU time and peak RSS per run), scores the results with
the same code for every method and writes ``results.csv``, a Markdown summary
and PNG plots. See ``docs/benchmark.md``.

Modules
    pairs   the pairs-JSON format (:class:`Pair`, :func:`load_pairs`, :func:`save_pairs`)
    suites  the built-in suites, generated from ``../shared/data``
    peers   one function per method; each returns the fixed->moving displacement in LPS mm
    runner  runs methods x pairs, measures time and memory, computes the metrics
    report  results.csv, summary.md and the plots
    cli     ``add_benchmark_parser`` and ``run_benchmark`` for ``shmoareg benchmark``
"""
