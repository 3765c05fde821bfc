"""Train one model: ``python -m domainbed.scripts.train`` with DomainBed's flags.

The output directory receives ``out.txt``/``err.txt`` (copies of stdout/stderr),
``results.jsonl`` (one record per checkpoint, DomainBed's format), ``tensorboard/``,
``model.pt`` and finally ``done``. Rerunning the same command resumes from the newest
intact checkpoint (``checkpoint.pt``, else the previous one, ``checkpoint.prev.pt``): model,
optimizer, scaler, RNG states and step, with no duplicated or partial record. SIGTERM (sent
by SLURM before pre-emption) exits 143 and SIGINT (Ctrl-C) 130 at any moment, after saving
a checkpoint if it came during training; a second Ctrl-C stops at once, without saving.
Data-loader workers ignore both: the main process owns the shutdown. Every file is replaced atomically and checkpoints are verified once on
disk, so a kill or a damaged file loses at most the steps since the last good checkpoint;
one ``train`` process at a time holds the output folder (docs/robustness.md lists
each failure and what is kept).

Exit statuses: 0 done, 1 storage fault, 2 user error (one ``error:`` line, no traceback),
3 diverged, 130 interrupted (SIGINT), 143 pre-empted (SIGTERM); any other exception is a bug and keeps its traceback. The parts
live in :mod:`domainbed.training`: arguments, the output folder's life, the trainer.
"""

from __future__ import annotations

from typing import Sequence

from domainbed.training.arguments import build_parser, resolve_hparams, validate_args
from domainbed.training.faults import reset_faults
from domainbed.training.preemption import PreemptionGuard
from domainbed.training.run_folder import (
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_PREEMPTED,
    EXIT_STORAGE,
    EXIT_USER_ERROR,
    run_in_folder,
    user_message,
)
from domainbed.training.trainer import Trainer

__all__ = ["EXIT_DIVERGED", "EXIT_INTERRUPTED", "EXIT_PREEMPTED", "EXIT_STORAGE", "EXIT_USER_ERROR", "Trainer", "build_parser", "main",
           "resolve_hparams", "user_message", "validate_args"]


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    reset_faults()
    with PreemptionGuard() as preempt:  # from the start: SIGTERM or SIGINT at any moment ends cleanly
        code = run_in_folder(args, preempt, validate_args, lambda out: Trainer(args, out, preempt).run())
    if code:
        raise SystemExit(code)


if __name__ == "__main__":
    main()
