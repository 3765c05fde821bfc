"""The fault-injection test hook: :func:`fault_point` fails a run at a named point when
``DOMAINBED_FAULT`` asks for it (docs/robustness.md); unset, it is one environment
lookup and does nothing. :func:`damage_file` damages a file as failing storage does.

The tests kill, stop, crash and damage real training runs through it, at every point where
a file is written (:mod:`domainbed.training.atomic_files`) and at the loop's own points.
"""

from __future__ import annotations

import os
import signal
import sys

FAULT_ENV = "DOMAINBED_FAULT"
STOP_NOTICE = f"{FAULT_ENV}: stopped at"
_fault_hits: dict[str, int] = {}


class InjectedFault(RuntimeError):
    """Raised by :func:`fault_point` with the ``raise`` action."""


def fault_point(name: str, target: str | os.PathLike | None = None) -> None:
    """Test hook: fail here when ``DOMAINBED_FAULT`` names this point.

    ``DOMAINBED_FAULT`` holds one or more comma-separated ``<point>:<n>[:<action>]``. On
    the ``n``-th time (1-based, counted per process) the point is reached, ``action``
    ``kill`` (the default) sends SIGKILL to this process, so nothing after it runs;
    ``term`` sends SIGTERM (a pre-emption notice); ``raise`` raises :class:`InjectedFault`
    (an ordinary crash); ``stop`` prints ``STOP_NOTICE`` and the point on stderr, then sends
    SIGSTOP, so a test can act (start a second process, send a signal) while this one is
    frozen, then SIGCONT it; ``truncate`` and ``flip`` damage ``target``, the file the
    point is about (:func:`damage_file`). Points:
    ``locked``, ``step``, ``eval``, ``after_record``, ``after_checkpoint``, ``before_done``,
    ``after_done`` (train.py), ``append/<file>`` (half a JSON line is on disk),
    ``rename/<file>`` (the temporary file is written, not yet renamed), and for verified
    saves ``written/<file>`` (temporary file written, not yet verified), ``rotated/<file>``
    (the previous file moved aside, the new one not yet in place) and ``saved/<file>``
    (the new file in place).
    """
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    mine = [part.split(":")[1:] for part in spec.split(",") if part.split(":")[0] == name]
    if not mine:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    for fields in mine:
        count, action = (fields + ["", ""])[:2]
        if _fault_hits[name] == int(count or 1):
            _act(name, int(count or 1), action, target)


def _act(name: str, count: int, action: str, target: str | os.PathLike | None) -> None:
    if action in ("", "kill"):
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "term":
        os.kill(os.getpid(), signal.SIGTERM)
    elif action == "stop":
        # Announced first, so that a test can tell this stop from one sent by a job scheduler.
        print(f"{STOP_NOTICE} {name} (occurrence {count})", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGSTOP)
    elif action == "raise":
        raise InjectedFault(f"fault injected at {name} (occurrence {count}) by {FAULT_ENV}")
    elif action in ("truncate", "flip"):
        if target is None:
            raise ValueError(f"{FAULT_ENV}: point {name} has no file to {action}")
        damage_file(target, action)
    else:
        raise ValueError(f"{FAULT_ENV}: unknown action {action!r} at {name}; "
                         "use kill, term, stop, raise, truncate or flip")


DAMAGE_BLOCK = 4096


def damage_file(path: str | os.PathLike, how: str) -> None:
    """Damage ``path`` in place as storage does: ``truncate`` keeps its first half (a partial
    copy, a full quota); ``flip`` inverts the 4 KiB block in its middle (a bad block, bit rot)."""
    size = os.path.getsize(path)
    if how == "truncate":
        os.truncate(path, size // 2)
        return
    if how != "flip":
        raise ValueError(f"unknown damage {how!r}; use truncate or flip")
    start = max(0, size // 2 - DAMAGE_BLOCK // 2)
    with open(path, "r+b") as f:
        f.seek(start)
        block = f.read(DAMAGE_BLOCK)
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in block))
        f.flush()
        os.fsync(f.fileno())


def reset_faults() -> None:
    """Restart the occurrence counts of :func:`fault_point` (one training run = one count)."""
    _fault_hits.clear()
