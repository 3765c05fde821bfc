"""Launchers that run jobs on this machine: ``dummy``, ``local`` and ``multi_gpu``.

* ``dummy``     prints each command and runs nothing;
* ``local``     runs the jobs one after another;
* ``multi_gpu`` runs one job per visible GPU at a time (``CUDA_VISIBLE_DEVICES`` per job).

Each job is claimed right before it runs (:mod:`domainbed.launchers.claims`), so several
launches on one sweep share the work and never run a job twice. Ctrl-C or SIGTERM lets the
running jobs save and starts no new one (:mod:`domainbed.launchers.interrupts`).

Threads: every job gets ``OMP_NUM_THREADS`` (and MKL's) from :func:`threads_per_job`: the
cores this process may use that the machine's load leaves free, divided among the jobs that
run at once, at least 1. On a node shared with other work, threads beyond the free cores
make every step wait for the slowest thread (a step 30x slower was measured on 2 cores).
``--threads_per_job N``, or ``OMP_NUM_THREADS`` set in the environment, overrides it.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from queue import Queue
from typing import Any, Sequence

from domainbed.launchers.claims import INTERRUPTED_EXITS, LOG_NAME, claim, log_tail, release
from domainbed.launchers.interrupts import LaunchInterrupts
from domainbed.launchers.registry import Job, LauncherOptions, LaunchSummary, register_launcher
from domainbed.training.run_lock import record_exit

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask, e.g. a Slurm or cgroup allocation)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_job(jobs_at_once: int, override: int | None = None) -> int:
    """Threads for each of ``jobs_at_once`` jobs; see the module doc for the rule."""
    if override is not None:
        return override
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    cores = usable_cores()
    busy = round(os.getloadavg()[0]) if hasattr(os, "getloadavg") else 0
    free = max(1, cores - busy)
    return max(1, free // max(1, jobs_at_once))


def thread_env(threads: int) -> dict[str, str]:
    return {name: str(threads) for name in THREAD_VARIABLES}


def run_claimed(job: Job, token: str, interrupts: LaunchInterrupts, extra_env: dict[str, str] | None = None) -> int:
    """Run a claimed job to its end, record its exit status, release it; the exit status."""
    env = {**os.environ, **(extra_env or {})}
    code = -1
    try:
        with open(Path(job.output_dir) / LOG_NAME, "ab") as log:
            code = interrupts.run(job.argv, log, env)
        return code
    finally:
        record_exit(job.output_dir, code)
        release(job.output_dir, token)


def count_exit(summary: LaunchSummary, bar: Any, job: Job, code: int) -> None:
    """Add one finished job to ``summary``: a signal's stop is an interruption, not a failure."""
    summary.started += 1
    if code in INTERRUPTED_EXITS or code < 0:
        summary.interrupted += 1
    elif code != 0:
        summary.failed += 1
        _report_failure(bar, job, code)


def progress_bar(total: int, options: LauncherOptions, desc: str) -> Any:
    """A tqdm bar over ``total`` jobs, silent when ``options.progress`` is off."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="job", disable=not options.progress)


def _report_failure(bar: Any, job: Job, code: int) -> None:
    tail = log_tail(job.output_dir)
    bar.write(f"FAILED (exit {code}): {job.command}\n  see {Path(job.output_dir) / LOG_NAME}\n{tail}")


@register_launcher("dummy")
def dummy_launcher(jobs: Sequence[Job], options: LauncherOptions) -> LaunchSummary:
    """Print each command, run nothing (to check a sweep before spending compute)."""
    for job in jobs:
        print(f"Dummy launcher: {job.command}")
    return LaunchSummary()


def _announce_threads(threads: int, jobs_at_once: int, options: LauncherOptions) -> None:
    source = "--threads_per_job" if options.threads_per_job is not None else (
        "OMP_NUM_THREADS" if "OMP_NUM_THREADS" in os.environ else f"{usable_cores()} cores less the load")
    print(f"{jobs_at_once} job(s) at once, {threads} thread(s) each ({source})")


@register_launcher("local")
def local_launcher(jobs: Sequence[Job], options: LauncherOptions) -> LaunchSummary:
    """Run jobs one after another here; a failing job does not stop the others, a signal does."""
    summary = LaunchSummary()
    threads = threads_per_job(1, options.threads_per_job)
    _announce_threads(threads, 1, options)
    with LaunchInterrupts() as interrupts, progress_bar(len(jobs), options, "local") as bar:
        for job in jobs:
            if interrupts.stopping:
                break
            token = claim(job)
            if token is None:
                summary.skipped += 1
            else:
                count_exit(summary, bar, job, run_claimed(job, token, interrupts, thread_env(threads)))
            bar.update(1)
            bar.set_postfix(failed=summary.failed, skipped=summary.skipped)
        summary.signal = interrupts.signum
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
    import torch  # here, not at the top: only this launcher needs it, and it costs a second to import

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

    threads = threads_per_job(len(gpus), options.threads_per_job)
    _announce_threads(threads, len(gpus), options)

    def work(job: Job) -> int | None:
        gpu = free.get()
        try:
            if interrupts.stopping:
                return None
            token = claim(job)
            if token is None:
                return None
            return run_claimed(job, token, interrupts, {"CUDA_VISIBLE_DEVICES": gpu, **thread_env(threads)})
        finally:
            free.put(gpu)

    summary = LaunchSummary()
    with LaunchInterrupts() as interrupts, progress_bar(len(jobs), options, f"multi_gpu x{len(gpus)}") as bar, \
            ThreadPoolExecutor(len(gpus)) as pool:
        futures = {pool.submit(work, job): job for job in jobs}
        for future in as_completed(futures):
            code = future.result()
            if code is None:
                summary.skipped += not interrupts.stopping
            else:
                count_exit(summary, bar, futures[future], code)
            bar.update(1)
            bar.set_postfix(failed=summary.failed, skipped=summary.skipped)
        summary.signal = interrupts.signum
    return summary
