"""Synchronising a test with the processes it starts on events, never on sleeps.

A :class:`Channel` is a named pipe (FIFO) that the test holds open for reading and writing
for as long as it lives, so a process never blocks opening it:

* a process *reports* an event by writing one line into it (``report`` in
  :data:`JOB_SIDE`), and the test waits for those lines (:meth:`Channel.wait_lines`);
* a process *waits at a gate* by reading one byte from it (``pass_gate``), and the test
  lets every waiting and later process through with :meth:`Channel.open`.

Both sides wait in ``select`` with a generous deadline, and fail loudly when it passes: an
assertion in the test, an exit message (so a failed job) in a process.
"""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

DEADLINE_S = 60.0

# The process side, pasted at the top of the ``python -c`` programs and fake trainers.
JOB_SIDE = '''
import os, select, sys, time

def report(path, line):
    """Write one line into the test's channel (non-blocking open: fails if nobody listens)."""
    fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, (line + "\\n").encode())
    finally:
        os.close(fd)

def pass_gate(path, deadline_s=60.0):
    """Take one byte from the gate channel: returns once the test has opened the gate."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        deadline = time.monotonic() + deadline_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                sys.exit(f"the test did not open the gate {path} within {deadline_s} s")
            try:
                token = os.read(fd, 1)
            except BlockingIOError:
                continue  # another process took the byte first: wait for the next one
            if not token:
                sys.exit(f"the gate {path} was closed before it opened")
            return
    finally:
        os.close(fd)
'''


class Channel:
    """A FIFO at ``path`` held open by the test (see the module doc)."""

    def __init__(self, path: Path):
        os.mkfifo(path)
        self.path = path
        # Read-write: the test is a writer too, so processes never see end-of-file or block on open.
        self._fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        self._buffer = b""

    def wait_lines(self, n: int, what: str, deadline_s: float = DEADLINE_S) -> list[str]:
        """The next ``n`` lines processes reported; fails the test after ``deadline_s``."""
        deadline = time.monotonic() + deadline_s
        while self._buffer.count(b"\n") < n:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out after {deadline_s} s waiting for {what} (got {self._buffer!r})"
            if select.select([self._fd], [], [], left)[0]:
                try:
                    self._buffer += os.read(self._fd, 65536)
                except BlockingIOError:
                    pass
        lines = self._buffer.split(b"\n")
        self._buffer = b"\n".join(lines[n:])
        return [line.decode() for line in lines[:n]]

    def open(self, passes: int = 1000) -> None:
        """Let ``passes`` processes through the gate, those waiting now and those to come."""
        os.write(self._fd, b"." * passes)

    def close(self) -> None:
        os.close(self._fd)
