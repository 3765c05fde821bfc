"""SIGTERM (a pre-emption notice, e.g. from Slurm) handled at every moment of a training run.

What to do depends on the phase. While training, the process holds state newer than the
last checkpoint, so the handler only sets a flag: the loop finishes its step, saves a
checkpoint and returns. During set-up (lock, dataset, resume) and while finishing (the
averaged model, ``model.pt``, ``done``), memory holds nothing that is not on disk already,
so the handler raises :class:`Preempted` at once: set-up of a large dataset can take longer
than the grace period before SIGKILL. Every write is atomic, so leaving in the middle of
one is safe. Once ``done`` is written the notice is ignored: the run is complete.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

PHASES = ("set-up", "training", "finishing", "done")


class Preempted(BaseException):
    """SIGTERM arrived while nothing needed saving. A ``BaseException``, like
    ``KeyboardInterrupt``, so that ``except Exception`` clauses do not swallow it."""


class PreemptionGuard:
    """Installs the SIGTERM handler for the ``with`` block (main thread only); see the module doc."""

    def __init__(self) -> None:
        self.requested = False
        self.phase = "set-up"
        self._pid = os.getpid()
        self._old: Any = None
        self._raised = False

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker: its parent acts on the notice
        self.requested = True
        if self.phase in ("set-up", "finishing"):
            self._raise()

    def _raise(self) -> None:
        if not self._raised:  # a second notice while leaving does not interrupt the way out
            self._raised = True
            raise Preempted(self.phase)

    def enter(self, phase: str) -> None:
        """Switch phase; entering a raising phase with a notice pending raises it now."""
        assert phase in PHASES, phase
        self.phase = phase
        if self.requested and phase in ("set-up", "finishing"):
            self._raise()

    @contextlib.contextmanager
    def during(self, phase: str) -> Iterator["PreemptionGuard"]:
        """``enter(phase)`` for a block; the caller enters the next phase after it."""
        self.enter(phase)
        yield self

    def notice(self) -> str:
        """The message for a run that leaves because of SIGTERM, by phase."""
        if self.phase == "finishing":
            return ("SIGTERM received while finishing: training is complete and its final checkpoint is saved; "
                    "rerun the same command to write the final model")
        return ("SIGTERM received during set-up, before this process trained: nothing new to save; "
                "rerun the same command to resume")
