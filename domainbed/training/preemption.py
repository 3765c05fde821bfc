"""SIGTERM (a pre-emption notice, e.g. from Slurm) and SIGINT (Ctrl-C) handled at every
moment of a training run.

What to do depends on the phase. While training, the process holds state newer than the
last checkpoint, so the handler only sets a flag: the loop finishes its step, saves a
checkpoint and returns. During set-up (lock, dataset, resume) and while finishing (the
averaged model, ``model.pt``, ``done``), memory holds nothing that is not on disk already,
so the handler raises :class:`Preempted` at once: set-up of a large dataset can take longer
than the grace period before SIGKILL. Every write is atomic, so leaving in the middle of
one is safe. Once ``done`` is written the notice is ignored: the run is complete.

A second SIGINT is a user who does not want to wait for the checkpoint: it raises at once,
in any phase, and the steps since the last checkpoint are lost (as with SIGKILL). A second
SIGTERM changes nothing: schedulers send it to every process of a job, and a launcher may
forward one more. The exit status tells the signal: 143 for SIGTERM, 130 for SIGINT (the
shell's 128 + signal number). Data-loader workers ignore both signals
(:func:`domainbed.training.loaders.ignore_interrupts`): the main process owns the shutdown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Any, Iterator

PHASES = ("set-up", "training", "finishing", "done")
HANDLED = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    """The shell's convention for a process that stops because of signal ``signum``."""
    return 128 + int(signum)


class Preempted(BaseException):
    """A signal arrived while nothing needed saving (or a second Ctrl-C). A ``BaseException``,
    like ``KeyboardInterrupt``, so that ``except Exception`` clauses do not swallow it."""


class InterruptHandling:
    """Base of a ``with`` block that handles SIGTERM and SIGINT with :meth:`_handle` and puts
    the previous handlers back at its end (only the main thread may install handlers; in any
    other thread the block changes nothing)."""

    _old: dict[int, Any]

    def __enter__(self) -> Any:
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in HANDLED}
        return self

    def __exit__(self, *exc: Any) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}

    def _handle(self, signum: int, frame: Any) -> None:
        raise NotImplementedError


class PreemptionGuard(InterruptHandling):
    """Installs the SIGTERM and SIGINT handlers for the ``with`` block (main thread only);
    see the module doc."""

    def __init__(self) -> None:
        self.requested = False
        self.signum: int | None = None  # the first notice's signal
        self.immediate = False  # a second SIGINT: stop without saving
        self._sigints = 0
        self.phase = "set-up"
        self._pid = os.getpid()
        self._old = {}
        self._raised = False

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "SIGTERM"

    @property
    def exit_code(self) -> int:
        """143 after SIGTERM, 130 after SIGINT."""
        return exit_status(self.signum if self.signum is not None else signal.SIGTERM)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:
            return  # a forked DataLoader worker, before it ignores signals: its parent acts on the notice
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1 and self.phase == "training":  # once done, nothing is left to stop
                self.immediate = True
                self._raise()
        if not self.requested:
            self.requested, self.signum = True, signum
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
        """The message for a run that leaves because of a signal, by phase."""
        name = self.signal_name
        if self.immediate:
            return (f"{name} received twice: stopped at once, without saving; the steps since the last checkpoint "
                    "are lost. Rerun the same command to resume from that checkpoint")
        if self.phase == "finishing":
            return (f"{name} received while finishing: training is complete and its final checkpoint is saved; "
                    "rerun the same command to write the final model")
        return (f"{name} received during set-up, before this process trained: nothing new to save; "
                "rerun the same command to resume")
