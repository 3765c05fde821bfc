"""One training run and the machinery it runs on. ``python -m domainbed.scripts.train``
puts the parts together; the launchers, ``sweep`` and the inference tools (``evaluate``,
``export_model``, ``predict``) above it use some of them; nothing below it (datasets,
networks, algorithms, results, lib's shared modules) imports this package.

The run:
    :mod:`.arguments` (the command line and the hparams it resolves to), :mod:`.trainer`
    (the loop), :mod:`.run_folder` (the output folder's life: lock, resume checks, ``done``,
    exit statuses), :mod:`.run_state` (what a checkpoint holds), :mod:`.best_model`
    (``model_best.pt``), :mod:`.run_report` (the record of each checkpoint step and the
    closing summary), :mod:`.tensorboard_log`, :mod:`.provenance` (which code ran).
Data in, numbers out:
    :mod:`.loaders` (batches that depend only on seed and step), :mod:`.input_pipeline` (CPU
    loaders or the device pipeline), :mod:`.evaluation` and :mod:`.metrics` (accuracy, loss,
    calibration; also what ``evaluate`` reports).
Surviving kills, faults and neighbours:
    :mod:`.atomic_files` (atomic writes, verified saves, JSON lines), :mod:`.integrity`
    (is a saved file intact, and safe to load), :mod:`.faults` (the ``DOMAINBED_FAULT`` test
    hook), :mod:`.run_lock` (one run per folder; used by the launchers too),
    :mod:`.preemption` (SIGTERM and SIGINT; used by the launchers and ``sweep`` too),
    :mod:`.tee` (stdout and stderr copied to ``out.txt`` and ``err.txt``).
"""
