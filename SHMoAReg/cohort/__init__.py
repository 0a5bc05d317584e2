"""Register a cohort of pairs on Dask: ``shmoareg batch`` (docs/cohorts.md).

Modules
    pairs     the pairs file: the benchmark's JSON or a CSV, with per-pair register options
    tasks     :func:`register_pair`, the work of one pair in a Dask worker (standard library at import)
    cluster   a ``LocalCluster`` sized to this machine (GPU workers pinned), or a running cluster
    schedule  submit the pairs (retries, resources), collect a row per pair, cancel on Ctrl-C
    results   the row of a pair from its report.json, complete results, results.csv
    report    report.html: flagged pairs, a sortable table, the QA pictures, all in one file
    progress  a bar, plain lines or JSON lines over the pairs
    cli       the ``batch`` sub-command

Only ``pairs``, ``tasks``, ``results`` and ``progress`` import without Dask's ``distributed``.
"""
