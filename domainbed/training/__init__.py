"""One training run, in three parts: the command line (:mod:`.arguments`), the output
folder's life (:mod:`.run_folder`: lock, resume checks, ``done``, exit statuses) and the
training loop (:mod:`.trainer`, with its checkpoint state in :mod:`.run_state`).
``python -m domainbed.scripts.train`` puts them together."""
