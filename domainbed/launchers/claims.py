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
``.lock`` file by hand in that case. A claim made for a scheduler (Slurm) records it, and
counts as ``remote`` until the job releases it: the submitting process ends long before
the job runs, so its pid says nothing.

**Relaunch.** When a job stops, ``train`` and then its launcher record the exit status in
``.last_exit`` (:func:`~domainbed.training.run_lock.record_exit`), and the launcher removes
``.lock``. An Incomplete job is then in one of these conditions (:func:`job_condition`):

* ``running``     a live or remote claim, or a ``train`` process holds the run folder's lock;
* ``failed``      it exited with an error (an exit status other than 130 / 143 after SIGINT /
  SIGTERM): relaunching would fail again, so only ``delete_incomplete`` retries it;
* ``interrupted`` anything else that stopped: a signal, a killed launcher or node. Its
  folder keeps the last checkpoint, and rerunning the job resumes from it, so ``launch``
  claims it again (:func:`reclaim`) instead of skipping it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from domainbed.launchers.registry import Job
from domainbed.training.run_lock import folder_in_use, last_exit

LOCK_NAME = ".lock"
LOG_NAME = "launcher.log"  # the child's stdout+stderr; the trainer keeps its own out.txt/err.txt
_CLAIM_PREFIX = ".claim-"
_TAIL_LINES = 20

_RECLAIM_MUTEX = ".reclaim.flock"
INTERRUPTED_EXITS = (130, 143)  # SIGINT, SIGTERM: the run saved a checkpoint and stopped

LockStatus = Literal["none", "live", "stale", "remote"]
JobCondition = Literal["not launched", "done", "running", "failed", "interrupted"]


def _lock_record(token: str, scheduler: str | None = None) -> bytes:
    record: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "token": token, "time": time.time()}
    if scheduler:
        record["scheduler"] = scheduler
    return json.dumps(record).encode()


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
    if owner.get("host") != socket.gethostname() or owner.get("scheduler"):
        return "remote"
    return "live" if _pid_alive(int(owner.get("pid", -1))) else "stale"


def claim(job: Job, scheduler: str | None = None) -> str | None:
    """Atomically make ``job`` ours: a Not launched job, or an interrupted one (see the
    module doc); returns the claim token, or ``None`` when the job is not ours to run
    (another launch owns it, or it is done, running or failed).
    """
    job_dir = Path(job.output_dir)
    if job_dir.exists():
        return reclaim(job, scheduler)
    job_dir.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    staging = job_dir.parent / f"{_CLAIM_PREFIX}{token}"
    staging.mkdir()
    fd = os.open(staging / LOCK_NAME, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    try:
        os.write(fd, _lock_record(token, scheduler))
    finally:
        os.close(fd)
    try:
        # The lock inside makes ``staging`` non-empty, so a concurrent winner's folder is never replaced.
        os.rename(staging, job_dir)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        return None
    return token


def refresh_lock(job_dir: Path, token: str, scheduler: str | None = None) -> None:
    """Record this process as the owner of an already-claimed job (a Slurm node taking over)."""
    tmp = Path(job_dir) / f"{LOCK_NAME}.{os.getpid()}.tmp"
    tmp.write_bytes(_lock_record(token, scheduler))
    os.replace(tmp, Path(job_dir) / LOCK_NAME)


def is_failure(code: int | None) -> bool:
    """An error exit: positive and not a signal's orderly stop (130, 143). A negative status
    (killed by a signal, e.g. SIGKILL) is an interruption, not an error of the run."""
    return code is not None and code > 0 and code not in INTERRUPTED_EXITS


def job_condition(job_dir: Path) -> JobCondition:
    """What a job folder says about the job (see the module doc)."""
    job_dir = Path(job_dir)
    if not job_dir.exists():
        return "not launched"
    if (job_dir / "done").exists():
        return "done"
    if lock_status(job_dir) in ("live", "remote") or folder_in_use(job_dir):
        return "running"
    if is_failure(last_exit(job_dir)):
        return "failed"
    return "interrupted"


def reclaim(job: Job, scheduler: str | None = None) -> str | None:
    """Claim an interrupted job again, so that rerunning it resumes from its checkpoint.

    Launches on one sweep decide under an exclusive ``flock`` of ``.reclaim.flock``: the
    first to hold it finds the job interrupted and records itself in ``.lock``; any later
    one finds the job running and leaves it.
    """
    job_dir = Path(job.output_dir)
    try:
        fd = os.open(job_dir / _RECLAIM_MUTEX, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        return None  # deleted meanwhile (delete_incomplete)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return None  # another launch is claiming it right now
        if job_condition(job_dir) != "interrupted":
            return None
        token = uuid.uuid4().hex
        refresh_lock(job_dir, token, scheduler)
        return token
    finally:
        os.close(fd)


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
