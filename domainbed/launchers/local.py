"""Launchers that run jobs on this machine: ``dummy``, ``local`` and ``multi_gpu``.

* ``dummy``     prints each command and runs nothing;
* ``local``     runs the jobs one after another;
* ``multi_gpu`` runs one job per visible GPU at a time (``CUDA_VISIBLE_DEVICES`` per job).

Each job is claimed right before it runs (:mod:`domainbed.launchers.claims`), so several
launches on one sweep share the work and never run a job twice.
"""

from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from queue import Queue
from typing import Any, Sequence

from domainbed.launchers.claims import LOG_NAME, claim, log_tail, release
from domainbed.launchers.registry import Job, LauncherOptions, LaunchSummary, register_launcher


def run_claimed(job: Job, token: str, extra_env: dict[str, str] | None = None) -> int:
    """Run a claimed job to completion, release it, and return the exit code."""
    env = {**os.environ, **(extra_env or {})}
    try:
        with open(Path(job.output_dir) / LOG_NAME, "ab") as log:
            return subprocess.run(job.argv, stdout=log, stderr=subprocess.STDOUT, env=env, check=False).returncode
    finally:
        release(job.output_dir, token)


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


@register_launcher("local")
def local_launcher(jobs: Sequence[Job], options: LauncherOptions) -> LaunchSummary:
    """Run jobs one after another here; a failing job does not stop the others."""
    summary = LaunchSummary()
    with progress_bar(len(jobs), options, "local") as bar:
        for job in jobs:
            token = claim(job)
            if token is None:
                summary.skipped += 1
            else:
                summary.started += 1
                code = run_claimed(job, token)
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

    def work(job: Job) -> int | None:
        token = claim(job)
        if token is None:
            return None
        gpu = free.get()
        try:
            return run_claimed(job, token, {"CUDA_VISIBLE_DEVICES": gpu})
        finally:
            free.put(gpu)

    summary = LaunchSummary()
    with progress_bar(len(jobs), options, f"multi_gpu x{len(gpus)}") as bar, ThreadPoolExecutor(len(gpus)) as pool:
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
