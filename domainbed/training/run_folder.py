"""The life of an output folder around one training run: lock, resume checks, ``done``,
and how the run ends (its exit status and its one-line message).

One ``train`` process at a time holds the folder (:func:`~domainbed.training.run_lock.folder_lock`).
A rerun with other arguments is refused; a rerun of a finished run only checks it. Exit
statuses: 0 done, 1 storage fault (rerun to resume), 2 user error (a one-line message, no
traceback), 3 diverged, 143 pre-empted by SIGTERM, 130 interrupted by SIGINT (Ctrl-C). Any other exception is a bug: it keeps
its traceback (in ``err.txt`` too) and propagates, and the folder stays without ``done``.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from typing import Callable

from domainbed.lib.errors import UserError
from domainbed.training.atomic_files import StorageError, atomic_write_text, clean_temp_files
from domainbed.training.faults import fault_point
from domainbed.training.integrity import DAMAGED_SUFFIX, DamagedFile, load_verified
from domainbed.training.preemption import Preempted, PreemptionGuard
from domainbed.training.run_lock import folder_lock, record_exit
from domainbed.training.tee import tee_output

EXIT_STORAGE = 1
EXIT_CRASHED = 1  # an exception that is a bug (it keeps its traceback), as Python's own status
EXIT_USER_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PREEMPTED = 143  # SIGTERM (128 + 15)
EXIT_INTERRUPTED = 130  # SIGINT, Ctrl-C (128 + 2)
CHECKPOINT, PREVIOUS_CHECKPOINT = "checkpoint.pt", "checkpoint.prev.pt"
# Arguments that may differ between a run and its resumption.
RESUME_IGNORED = {"output_dir", "device", "num_workers"}


class Diverged(RuntimeError):
    """The loss became NaN or infinite."""


def user_message(e: BaseException) -> str:
    """The message of a user error. Errors raised inside DataLoader workers come back with
    the worker's traceback in their text; keep only the original message."""
    text = str(e)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text


def check_resume_args(out: Path, args: argparse.Namespace) -> None:
    """Refuse to resume a directory that was started with different arguments."""
    path = out / "args.json"
    mine = {k: v for k, v in vars(args).items() if k not in RESUME_IGNORED}
    if path.exists():
        theirs = {k: v for k, v in json.loads(path.read_text()).items() if k not in RESUME_IGNORED}
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        if diff:
            details = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in diff)
            raise UserError(
                f"{out} holds a run started with different arguments ({details}). "
                "Use another --output_dir, or delete that directory to start over."
            )
    else:
        atomic_write_text(path, json.dumps(vars(args), indent=2, sort_keys=True))


def remove_checkpoints(out: Path) -> None:
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        (out / name).unlink(missing_ok=True)
        (out / (name + DAMAGED_SUFFIX)).unlink(missing_ok=True)


def mark_done(out: Path) -> None:
    """The marker that the run is complete; written after everything else it produced."""
    (out / "done").write_text("done\n")


def check_finished(out: Path) -> int:
    """A rerun of a finished run: clean what a kill after ``done`` left, and check ``model.pt``."""
    remove_checkpoints(out)
    clean_temp_files(out)
    model = out / "model.pt"
    if model.exists():
        try:
            load_verified(model)
        except DamagedFile as e:
            raise UserError(
                f"{out} is done, but {model} is damaged ({e.reason}). results.jsonl is complete and untouched. "
                "The final checkpoint was deleted when the run finished, so only training again rebuilds the "
                f"model: rm {out / 'done'} {model}, then rerun this command (it trains from step 0 and writes "
                "the same records)."
            ) from None
    print(f"{out} is already done; nothing to do")
    return 0


def run_in_folder(args: argparse.Namespace, preempt: PreemptionGuard, validate: Callable[[argparse.Namespace], None],
                  train: Callable[[Path], int]) -> int:
    """Validate, hold the output folder's lock, then ``train(out)`` (or check a finished run);
    returns the exit status. Only expected endings become a status; a bug propagates."""
    try:
        validate(args)
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        with folder_lock(out):
            fault_point("locked")
            if (out / "done").exists():
                return check_finished(out)
            check_resume_args(out, args)
            code = EXIT_CRASHED
            try:
                with tee_output(out / "out.txt", out / "err.txt"):
                    code = _train_reporting_errors(train, out, preempt)
                    return code
            finally:
                record_exit(out, code)  # a bug's traceback propagates as "crashed" (1)
    except Preempted:
        print(preempt.notice(), file=sys.stderr)
        return preempt.exit_code
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _train_reporting_errors(train: Callable[[Path], int], out: Path, preempt: PreemptionGuard) -> int:
    """Train; expected failures become one ``error:`` line (in err.txt too) and an exit status."""
    try:
        return train(out)
    except Preempted:
        print(preempt.notice(), file=sys.stderr)
        return preempt.exit_code
    except UserError as e:
        print(f"error: {user_message(e)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except StorageError as e:
        print(f"error: {e}; rerun the same command to resume from the last intact checkpoint", file=sys.stderr)
        return EXIT_STORAGE
    except BaseException:
        traceback.print_exc()  # keep the crash in err.txt (still teed here); the job stays incomplete
        raise
