"""One ``train`` process per output folder: an exclusive ``flock`` held for the life of the run.

Two runs in one folder would each append every record (steps ``0, 20, 20, 40, 40, ...``).
The lock is an open file description, so the kernel releases it when the process ends in
any way, SIGKILL included: a killed run never leaves a stale lock behind. The lock file
records who holds it (pid, host, start time) so that a refused process can name the owner;
it is never deleted, since deleting it while another process waits on it would let two
processes lock two different files. On Linux NFS clients ``flock`` is carried by the
server's byte-range locks, so it also holds between hosts that share the folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from domainbed.lib.errors import UserError

LOCK_FILE = ".train.lock"
EXIT_NAME = ".last_exit"  # {"code": exit status of the folder's last run, "host", "time"}


class FolderBusy(UserError):
    """Another live process holds the folder's lock."""


def read_owner(folder: str | os.PathLike) -> dict[str, Any] | None:
    """What the current (or last) holder wrote in the lock file; ``None`` if unreadable."""
    try:
        return json.loads((Path(folder) / LOCK_FILE).read_text())
    except (OSError, ValueError):
        return None


def describe(owner: dict[str, Any] | None) -> str:
    if not owner:
        return "a process that has not yet written its pid"
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"


def folder_in_use(folder: str | os.PathLike) -> bool:
    """Whether a ``train`` process holds ``folder``'s lock now (tested with a shared lock
    held for an instant, which :func:`folder_lock` waits through)."""
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
            return False  # no locks on this file system: folder_lock warned when it started
        raise
    finally:
        os.close(fd)  # releases the shared lock
    return False


def _lock_retrying(fd: int, attempts: int = 20, wait_s: float = 0.05) -> None:
    """``flock(LOCK_EX | LOCK_NB)``, tried for about a second: a launcher checking whether the
    folder is in use holds a shared lock for a moment, which must not refuse this run."""
    for attempt in range(attempts):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if attempt == attempts - 1:
                raise
            time.sleep(wait_s)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Hold ``folder/.train.lock`` exclusively within the block; raises :class:`FolderBusy`.

    Yields the owner record written into the lock file.
    """
    folder = Path(folder)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _lock_retrying(fd)
        except BlockingIOError:
            owner = read_owner(folder)
            kill = f" (kill {owner['pid']} on {owner['host']})" if owner and "pid" in owner else ""
            raise FolderBusy(
                f"{folder} is in use by another train process: {describe(owner)}. Two runs in one folder would "
                f"write every record twice, so this one stops. Wait for that run to end, or stop it{kill}, "
                "then rerun this command to resume."
            ) from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            print(f"warning: cannot lock {folder} ({e.strerror}): this file system has no locks, so a second "
                  "train process in this folder would not be detected", file=sys.stderr)
        owner = {"pid": os.getpid(), "host": socket.gethostname(),
                 "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        data = (json.dumps(owner) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        yield owner
    finally:
        os.close(fd)  # releases the lock


def record_exit(folder: str | os.PathLike, code: int) -> None:
    """Keep the exit status of the folder's last run in ``.last_exit`` (atomically replaced):
    ``sweep status`` tells a failed run from an interrupted one by it."""
    tmp = Path(folder) / f"{EXIT_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps({"code": int(code), "host": socket.gethostname(), "time": time.time()}))
    os.replace(tmp, Path(folder) / EXIT_NAME)


def last_exit(folder: str | os.PathLike) -> int | None:
    """The exit status recorded by :func:`record_exit`, or ``None``."""
    try:
        return int(json.loads((Path(folder) / EXIT_NAME).read_text())["code"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
