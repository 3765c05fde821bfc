"""The pieces of ``python -m domainbed.scripts.sweep``, one concept per module.

* :mod:`~domainbed.sweep.jobs` — from parsed arguments to :class:`~domainbed.launchers.Job`
  objects: test-env sets, seeds (``--paired_seeds`` included), the job-folder hash, and
  the three job states read from the folders;
* :mod:`~domainbed.sweep.options` — the flags, their parsing and validation;
* :mod:`~domainbed.sweep.sweep_file` — ``--sweep NAME``: find the JSON file (checkout or
  installed wheel) and read it through the same flags.

The sub-commands (``launch``, ``delete_incomplete``, ``status``) and ``main(argv)`` are in
the script itself.

Who uses it: ``domainbed.scripts.sweep`` only.
"""
