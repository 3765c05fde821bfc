"""Command launchers: the ways a sweep's training runs get executed.

A launcher is a function ``launcher(jobs, options) -> LaunchSummary`` registered under a
name with :func:`register_launcher`; ``sweep launch --command_launcher NAME`` looks it up
with :func:`get_launcher`. Built in:

* ``dummy``     prints each command and runs nothing;
* ``local``     runs the jobs one after another on this machine;
* ``multi_gpu`` runs one job per visible GPU at a time (``CUDA_VISIBLE_DEVICES`` per job);
* ``slurm``     submits a job array through submitit; pre-empted jobs are requeued and
  the trainer resumes from its checkpoint.

Claiming (why two launches never run the same job)
---------------------------------------------------
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
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from queue import Queue
from typing import Any, Callable, Literal, Sequence

from domainbed.lib.registry import Registry

try:  # submitit is needed only by the slurm launcher; keep the other launchers usable without it
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover - exercised only where submitit is not installed
    _Checkpointable = object  # type: ignore[assignment,misc]

LOCK_NAME = ".lock"
LOG_NAME = "launcher.log"  # the child's stdout+stderr; the trainer keeps its own out.txt/err.txt
_CLAIM_PREFIX = ".claim-"
_TAIL_LINES = 20

LockStatus = Literal["none", "live", "stale", "remote"]


@dataclass(frozen=True)
class Job:
    """One training run: its full command (``argv[0]`` is the Python executable) and folder."""

    argv: list[str]
    output_dir: Path
    train_args: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The command as one line a user can paste into a shell."""
        return shlex.join(self.argv)


@dataclass
class LauncherOptions:
    """Settings a launcher may read; ``None`` means "use the environment or a default"."""

    progress: bool = True
    slurm_partition: str | None = None
    slurm_time: int | None = None  # minutes
    slurm_gpus: int | None = None  # per node
    slurm_cpus: int | None = None  # per task
    slurm_mem: float | None = None  # GB
    slurm_array_parallelism: int | None = None
    slurm_local: bool = False
    slurm_wait: bool = False
    submitit_dir: Path | None = None


@dataclass
class LaunchSummary:
    """What a launcher did: jobs it started, that failed, and that another launch owned."""

    started: int = 0
    failed: int = 0
    skipped: int = 0

    def __str__(self) -> str:
        return f"{self.started} started, {self.failed} failed, {self.skipped} skipped (claimed by another launch)"


Launcher = Callable[[Sequence[Job], LauncherOptions], LaunchSummary]
_LAUNCHERS: Registry[Launcher] = Registry("command launcher", plural="launchers")


def register_launcher(name: str) -> Callable[[Launcher], Launcher]:
    """Decorator registering a launcher under ``name``; a duplicate name raises."""
    return _LAUNCHERS.register(name)


def launcher_names() -> list[str]:
    """Names of every registered launcher, sorted."""
    return _LAUNCHERS.names()


def get_launcher(name: str) -> Launcher:
    """The launcher registered as ``name``; the error lists the valid names."""
    return _LAUNCHERS.get(name)


# ----------------------------------------------------------------------------- locks


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


def _log_tail(job_dir: Path, lines: int = _TAIL_LINES) -> str:
    try:
        text = (Path(job_dir) / LOG_NAME).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ----------------------------------------------------------------------------- running


def _run_claimed(job: Job, token: str, extra_env: dict[str, str] | None = None) -> int:
    """Run a claimed job to completion, release it, and return the exit code."""
    env = {**os.environ, **(extra_env or {})}
    try:
        with open(Path(job.output_dir) / LOG_NAME, "ab") as log:
            return subprocess.run(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    finally:
        release(job.output_dir, token)


def _progress(jobs: Sequence[Job], options: LauncherOptions, desc: str) -> Any:
    from tqdm import tqdm

    return tqdm(total=len(jobs), desc=desc, unit="job", disable=not options.progress)


def _report_failure(bar: Any, job: Job, code: int) -> None:
    tail = _log_tail(job.output_dir)
    bar.write(f"FAILED (exit {code}): {job.command}\n  see {Path(job.output_dir) / LOG_NAME}\n{tail}")


@register_launcher("dummy")
def dummy_launcher(jobs: Sequence[Job], options: LauncherOptions) -> LaunchSummary:
    """Print each command, run nothing (to check a sweep before spending compute)."""
    for job in jobs:
        print(f"Dummy launcher: {job.command}")
    return LaunchSummary()


@register_launcher("local")
def local_launcher(jobs: Sequence[Job], options: LauncherOptions) -> LaunchSummary:
    """Run jobs one after another here; a failing job does not stop the others."""
    summary = LaunchSummary()
    with _progress(jobs, options, "local") as bar:
        for job in jobs:
            token = claim(job)
            if token is None:
                summary.skipped += 1
            else:
                summary.started += 1
                code = _run_claimed(job, token)
                if code != 0:
                    summary.failed += 1
                    _report_failure(bar, job, code)
            bar.update(1)
            bar.set_postfix(failed=summary.failed, skipped=summary.skipped)
    return summary


def visible_gpus() -> list[str]:
    """GPU ids a job may be pinned to: ``CUDA_VISIBLE_DEVICES`` if set, else every CUDA device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        gpus: list[str] = []
        for entry in (e.strip() for e in env.split(",")):
            if not entry or entry.startswith("-"):
                break  # CUDA ignores everything from the first invalid entry on ("-1" hides all)
            gpus.append(entry)
        return gpus
    try:
        import torch
    except ImportError:
        return []
    return [str(i) for i in range(torch.cuda.device_count())]


@register_launcher("multi_gpu")
def multi_gpu_launcher(jobs: Sequence[Job], options: LauncherOptions) -> LaunchSummary:
    """Run one job per visible GPU at a time, each child seeing only its GPU."""
    gpus = visible_gpus()
    if not gpus:
        raise SystemExit(
            "multi_gpu launcher: no GPU is visible (torch.cuda.device_count() is 0 or CUDA_VISIBLE_DEVICES "
            "hides them all). Use --command_launcher local on a CPU machine."
        )
    free: Queue[str] = Queue()
    for gpu in gpus:
        free.put(gpu)

    def work(job: Job) -> int | None:
        token = claim(job)
        if token is None:
            return None
        gpu = free.get()
        try:
            return _run_claimed(job, token, {"CUDA_VISIBLE_DEVICES": gpu})
        finally:
            free.put(gpu)

    summary = LaunchSummary()
    with _progress(jobs, options, f"multi_gpu x{len(gpus)}") as bar, ThreadPoolExecutor(len(gpus)) as pool:
        futures = {pool.submit(work, job): job for job in jobs}
        for future in as_completed(futures):
            code = future.result()
            if code is None:
                summary.skipped += 1
            else:
                summary.started += 1
                if code != 0:
                    summary.failed += 1
                    _report_failure(bar, futures[future], code)
            bar.update(1)
            bar.set_postfix(failed=summary.failed, skipped=summary.skipped)
    return summary


# ----------------------------------------------------------------------------- slurm


def _terminate(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the trainer (it checkpoints and exits), SIGKILL after ``grace_s``.

    Reaps with ``os.waitpid`` rather than ``Popen.wait``: this runs inside a signal
    handler that may have interrupted a ``Popen.poll`` holding Popen's internal lock.
    """
    if proc.returncode is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(proc.pid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid:
            return
        time.sleep(0.1)
    proc.kill()
    try:
        os.waitpid(proc.pid, 0)
    except ChildProcessError:
        pass


class SubmititTrainJob(_Checkpointable):
    """A picklable callable submitit runs on a node: the training command as a subprocess.

    On pre-emption or time-out submitit calls :meth:`checkpoint`: the trainer gets
    SIGTERM (it saves ``OUTPUT_DIR/checkpoint`` and exits), and a fresh copy of this
    callable is returned for requeueing; the rerun resumes from that checkpoint.
    """

    def __init__(self, argv: Sequence[str], output_dir: str | Path, token: str, grace_s: float = 120.0):
        self.argv = list(argv)
        self.output_dir = str(output_dir)
        self.token = token
        self.grace_s = grace_s
        self._proc: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_proc"] = None  # a process handle is neither picklable nor meaningful elsewhere
        return state

    def __call__(self) -> str:
        job_dir = Path(self.output_dir)
        job_dir.mkdir(parents=True, exist_ok=True)
        refresh_lock(job_dir, self.token)
        try:
            with open(job_dir / LOG_NAME, "ab") as log:
                self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
                # Poll instead of wait(): a blocking wait holds Popen's lock, which the
                # pre-emption handler (checkpoint) would need to reap the trainer.
                while (code := self._proc.poll()) is None:
                    time.sleep(0.2)
        finally:
            release(job_dir, self.token)
        if code != 0:
            raise RuntimeError(f"training exited with code {code}: {shlex.join(self.argv)}\n{_log_tail(job_dir)}")
        return self.output_dir

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """Let the trainer save its checkpoint, then resubmit a fresh copy of this job."""
        from submitit.helpers import DelayedSubmission

        if self._proc is not None:
            _terminate(self._proc, self.grace_s)
        return DelayedSubmission(type(self)(self.argv, self.output_dir, self.token, self.grace_s))


def _env_value(flag_value: Any, env_name: str, cast: Callable[[str], Any], default: Any) -> Any:
    """Flag if given, else the ``DOMAINBED_SLURM_*`` environment variable, else ``default``."""
    if flag_value is not None:
        return flag_value
    raw = os.environ.get(env_name)
    if raw is None or raw == "":
        return default
    try:
        return cast(raw)
    except ValueError:
        raise ValueError(f"environment variable {env_name}={raw!r} is not a valid {cast.__name__}") from None


def _make_executor(folder: Path, options: LauncherOptions) -> Any:
    import submitit

    local = options.slurm_local or os.environ.get("DOMAINBED_SUBMITIT_LOCAL") == "1"
    params: dict[str, Any] = {
        "timeout_min": _env_value(options.slurm_time, "DOMAINBED_SLURM_TIME", int, 24 * 60),
        "gpus_per_node": _env_value(options.slurm_gpus, "DOMAINBED_SLURM_GPUS", int, 0 if local else 1),
        "cpus_per_task": _env_value(options.slurm_cpus, "DOMAINBED_SLURM_CPUS", int, 8),
        "mem_gb": _env_value(options.slurm_mem, "DOMAINBED_SLURM_MEM", float, None),
        "name": "domainbed",
    }
    params = {k: v for k, v in params.items() if v is not None}
    if local:
        # submitit's LocalExecutor runs the same pickled callables and signal handling on this machine.
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(**params)
        return executor
    if submitit.SlurmExecutor.affinity() < 0:
        raise SystemExit(
            "slurm launcher: Slurm was not found (no srun on PATH). Run on a Slurm login node, pass "
            "--slurm_local (or set DOMAINBED_SUBMITIT_LOCAL=1) to run through submitit locally, "
            "or use --command_launcher local."
        )
    slurm: dict[str, Any] = {
        "slurm_partition": _env_value(options.slurm_partition, "DOMAINBED_SLURM_PARTITION", str, None),
        "slurm_array_parallelism": _env_value(
            options.slurm_array_parallelism, "DOMAINBED_SLURM_ARRAY_PARALLELISM", int, None
        ),
    }
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
    executor.update_parameters(**params, **{k: v for k, v in slurm.items() if v is not None})
    return executor


@register_launcher("slurm")
def slurm_launcher(jobs: Sequence[Job], options: LauncherOptions) -> LaunchSummary:
    """Submit the jobs as one submitit job array; requeue on pre-emption.

    Jobs are claimed at submission, so queued jobs count as Incomplete. With submitit's
    local executor (tests, laptops) or ``--slurm_wait`` it waits and counts failures.
    """
    import submitit

    summary = LaunchSummary()
    if not jobs:
        return summary
    sweep_dir = Path(jobs[0].output_dir).parent
    executor = _make_executor(Path(options.submitit_dir or sweep_dir / ".submitit"), options)
    claimed: list[SubmititTrainJob] = []
    for job in jobs:
        token = claim(job)
        if token is None:
            summary.skipped += 1
        else:
            claimed.append(SubmititTrainJob(job.argv, job.output_dir, token))
    if not claimed:
        return summary
    try:
        with executor.batch():
            submitted = [executor.submit(fn) for fn in claimed]
    except BaseException:
        for fn in claimed:  # nothing ran: give the jobs back so a later launch can claim them
            shutil.rmtree(fn.output_dir, ignore_errors=True)
        raise
    summary.started = len(submitted)
    print(f"Submitted {len(submitted)} jobs (submitit logs in {executor.folder}).")
    wait = options.slurm_wait or isinstance(executor, submitit.LocalExecutor)
    if wait:
        with _progress(submitted, options, "slurm") as bar:
            for sub in submitted:
                try:
                    sub.result()
                except Exception as error:  # a failed job must not hide the others' results
                    summary.failed += 1
                    bar.write(f"FAILED: job {sub.job_id}: {error}")
                bar.update(1)
    return summary
