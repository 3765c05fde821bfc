"""The ``slurm`` launcher: a submitit job array; pre-empted jobs are requeued and resume.

Jobs are claimed at submission (:mod:`domainbed.launchers.claims`), so queued jobs count
as Incomplete. On pre-emption or time-out submitit calls
:meth:`SubmititTrainJob.checkpoint`: the trainer gets SIGTERM (it saves
``OUTPUT_DIR/checkpoint`` and exits) and a fresh copy of the job is requeued, which
resumes from that checkpoint. Settings come from ``--slurm_*`` flags, then
``DOMAINBED_SLURM_*`` environment variables, then defaults; ``--slurm_local`` (or
``DOMAINBED_SUBMITIT_LOCAL=1``) runs the same code through submitit's local executor.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from domainbed.launchers.claims import INTERRUPTED_EXITS, LOG_NAME, claim, log_tail, refresh_lock, release
from domainbed.launchers.local import progress_bar
from domainbed.launchers.registry import Job, LauncherOptions, LaunchSummary, register_launcher
from domainbed.training.run_lock import record_exit


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


class SubmititTrainJob(Checkpointable):
    """A picklable callable submitit runs on a node: the training command as a subprocess."""

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
        code: int | None = None
        try:
            with open(job_dir / LOG_NAME, "ab") as log:
                self._proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
                # Poll instead of wait(): a blocking wait holds Popen's lock, which the
                # pre-emption handler (checkpoint) would need to reap the trainer.
                while (code := self._proc.poll()) is None:
                    time.sleep(0.2)
        finally:
            if code is not None:  # None: submitit is requeuing this job (pre-emption), which continues it
                record_exit(job_dir, code)
            release(job_dir, self.token)
        if code in INTERRUPTED_EXITS:
            # scancel (or a node's shutdown) signals every process of the job: the trainer saved.
            raise RuntimeError(f"training was interrupted (exit {code}) and saved a checkpoint; relaunch the sweep "
                               f"to resume it: {shlex.join(self.argv)}")
        if code != 0:
            raise RuntimeError(f"training exited with code {code}: {shlex.join(self.argv)}\n{log_tail(job_dir)}")
        return self.output_dir

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Let the trainer save its checkpoint, then resubmit a fresh copy of this job."""
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


def make_executor(folder: Path, options: LauncherOptions) -> submitit.Executor:
    """A submitit executor configured from ``options`` and the environment (see the module doc)."""
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

    With submitit's local executor (tests, laptops) or ``--slurm_wait`` it waits and
    counts failures.
    """
    summary = LaunchSummary()
    if not jobs:
        return summary
    sweep_dir = Path(jobs[0].output_dir).parent
    executor = make_executor(Path(options.submitit_dir or sweep_dir / ".submitit"), options)
    claimed: list[SubmititTrainJob] = []
    resumed: set[str] = set()  # interrupted jobs claimed again: their folders hold checkpoints
    for job in jobs:
        existed = Path(job.output_dir).exists()
        token = claim(job, scheduler="slurm")
        if token is None:
            summary.skipped += 1
        else:
            claimed.append(SubmititTrainJob(job.argv, job.output_dir, token))
            if existed:
                resumed.add(str(job.output_dir))
    if not claimed:
        return summary
    try:
        with executor.batch():
            submitted = [executor.submit(fn) for fn in claimed]
    except BaseException:
        for fn in claimed:  # nothing ran: give the jobs back so a later launch can claim them
            if fn.output_dir in resumed:
                release(Path(fn.output_dir), fn.token)  # keep the checkpoint it resumes from
            else:
                shutil.rmtree(fn.output_dir, ignore_errors=True)
        raise
    summary.started = len(submitted)
    print(f"Submitted {len(submitted)} jobs (submitit logs in {executor.folder}).")
    if options.slurm_wait or isinstance(executor, submitit.LocalExecutor):
        with progress_bar(len(submitted), options, "slurm") as bar:
            for sub in submitted:
                try:
                    sub.result()
                except Exception as error:  # a failed job must not hide the others' results
                    summary.failed += 1
                    bar.write(f"FAILED: job {sub.job_id}: {error}")
                bar.update(1)
    return summary
