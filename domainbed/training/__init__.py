"""One training run, in parts: the command line (:mod:`.arguments`), the output folder's
life (:mod:`.run_folder`: lock, resume checks, ``done``, exit statuses), the training loop
(:mod:`.trainer`), what a checkpoint holds (:mod:`.run_state`) and what a run reports
(:mod:`.reporting`). ``python -m domainbed.scripts.train`` puts them together."""
