"""Job claims: why two launches never run the same job.

A job is *Not launched* while its folder does not exist. A launcher claims a job by
building a private folder ``SWEEP/.claim-<uuid>`` that holds a ``.lock`` file (created
with ``O_CREAT | O_EXCL``), then renaming it onto the job folder. ``rename`` is atomic and
fails when the target exists and is not empty, so exactly one of several concurrent
launches (processes, threads or hosts sharing the folder over NFS) wins; the others skip
the job and count it. Claiming right before running (not all at once up front) lets two
``local`` launches on the same sweep share the work.

``.lock`` records ``host``, ``pid`` and a ``token`` naming the claim, and is removed when
the job stops. It never blocks a claim (the folder does); it tells ``status`` and
``delete_incomplete`` whether an incomplete job is still running:

* ``live``   the owner is a running process on this host: the job is running;
* ``stale``  the owner is on this host and its pid is dead (a launcher that was killed):
  the lock is ignored, i.e. broken, and the job counts as stopped;
* ``remote`` the owner is on another host (a Slurm node): liveness cannot be checked here.

A reused pid can make a stale lock look live until that process ends; delete the
``.lock`` file by hand in that case.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from domainbed.launchers.registry import Job

LOCK_NAME = ".lock"
LOG_NAME = "launcher.log"  # the child's stdout+stderr; the trainer keeps its own out.txt/err.txt
_CLAIM_PREFIX = ".claim-"
_TAIL_LINES = 20

LockStatus = Literal["none", "live", "stale", "remote"]


def _lock_record(token: str) -> bytes:
    return json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token, "time": time.time()}).encode()


def read_lock(job_dir: Path) -> dict[str, Any] | None:
    """The owner recorded in ``job_dir/.lock``, or ``None`` when there is no readable lock."""
    try:
        return json.loads((Path(job_dir) / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def lock_status(job_dir: Path) -> LockStatus:
    """Whether the job in ``job_dir`` is held by a running process (see the module doc)."""
    owner = read_lock(job_dir)
    if owner is None:
        return "none"
    if owner.get("host") != socket.gethostname():
        return "remote"
    return "live" if _pid_alive(int(owner.get("pid", -1))) else "stale"


def claim(job: Job) -> str | None:
    """Atomically move ``job`` from Not launched to ours; returns the claim token or ``None``.

    ``None`` means the job folder already exists: another launch owns the job, or it was
    launched before (then ``sweep`` reports it as Done or Incomplete).
    """
    job_dir = Path(job.output_dir)
    if job_dir.exists():
        return None
    job_dir.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    staging = job_dir.parent / f"{_CLAIM_PREFIX}{token}"
    staging.mkdir()
    fd = os.open(staging / LOCK_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, _lock_record(token))
    finally:
        os.close(fd)
    try:
        # The lock inside makes ``staging`` non-empty, so a concurrent winner's folder is never replaced.
        os.rename(staging, job_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return None
    return token


def refresh_lock(job_dir: Path, token: str) -> None:
    """Record this process as the owner of an already-claimed job (a Slurm node taking over)."""
    tmp = Path(job_dir) / f"{LOCK_NAME}.{os.getpid()}.tmp"
    tmp.write_bytes(_lock_record(token))
    os.replace(tmp, Path(job_dir) / LOCK_NAME)


def release(job_dir: Path, token: str) -> None:
    """Remove the lock if it is still ours (a requeued copy may have taken it over)."""
    owner = read_lock(job_dir)
    if owner is not None and owner.get("token") == token:
        (Path(job_dir) / LOCK_NAME).unlink(missing_ok=True)


def log_tail(job_dir: Path, lines: int = _TAIL_LINES) -> str:
    """The last ``lines`` lines of the job's ``launcher.log`` ("" when there is none)."""
    try:
        text = (Path(job_dir) / LOG_NAME).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
