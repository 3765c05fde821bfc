"""A launcher's own SIGINT and SIGTERM: the running jobs save, no new job starts.

Each job runs in a session (process group) of its own, so a Ctrl-C at the terminal, or a
signal to the launcher's process group, reaches the launcher only; the launcher forwards
every signal it gets exactly once to each running job's group. The job's ``train`` process
then saves a checkpoint and exits 130 (SIGINT) or 143 (SIGTERM); a second Ctrl-C is
forwarded too and stops it at once. The launcher starts no further job, waits for the
running ones to end, and the sweep exits with the launcher's own signal status. Its jobs
are then *interrupted*, and the same ``sweep launch`` command resumes them.

A scheduler that signals every process of an allocation (Slurm) reaches the jobs directly
as well; a second SIGTERM is harmless to ``train``.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any, Mapping, Sequence

from domainbed.training.preemption import InterruptHandling, exit_status


class LaunchInterrupts(InterruptHandling):
    """Signal handling of a launcher for the ``with`` block (installed from the main thread)."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._children: dict[subprocess.Popen, int] = {}  # process -> signals forwarded to it so far

    @property
    def stopping(self) -> bool:
        """A signal came: start no new job."""
        return bool(self.received)

    @property
    def signum(self) -> int | None:
        return self.received[0] if self.received else None

    @property
    def exit_code(self) -> int:
        """130 after SIGINT, 143 after SIGTERM (the first signal decides); 0 when none came."""
        return exit_status(self.received[0]) if self.received else 0

    def _handle(self, signum: int, frame: Any) -> None:
        self.received.append(signum)
        for proc in list(self._children):
            self._forward(proc)

    def _forward(self, proc: subprocess.Popen) -> None:
        """Send ``proc``'s group every received signal it has not had yet."""
        while self._children.get(proc, len(self.received)) < len(self.received):
            sent = self._children[proc]
            self._children[proc] = sent + 1  # counted before sending: never twice
            try:
                os.killpg(proc.pid, self.received[sent])
            except (ProcessLookupError, PermissionError):
                return  # already gone

    def run(self, argv: Sequence[str], stdout: Any, env: Mapping[str, str]) -> int:
        """Run one job to its end in a session of its own; its exit status (negative: killed)."""
        proc = subprocess.Popen(list(argv), stdout=stdout, stderr=subprocess.STDOUT, env=dict(env),
                                start_new_session=True)
        self._children[proc] = 0
        try:
            self._forward(proc)  # a signal that came while it was starting
            return proc.wait()
        except BaseException:
            # Only a bug or a third-party exception gets here: never leave a job running unseen.
            proc.kill()
            proc.wait()
            raise
        finally:
            self._children.pop(proc, None)
