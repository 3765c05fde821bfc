"""Run a DomainBed-style sweep: ``launch``, ``delete_incomplete`` or ``status``.

    python -m domainbed.scripts.sweep launch --datasets PACS --algorithms ERM ERM_FTLP \\
        --data_dir DATA --output_dir SWEEP --command_launcher local
    python -m domainbed.scripts.sweep status --sweep ftlp_paper --data_dir DATA --output_dir SWEEP

Jobs are datasets x algorithms x test-env sets x hparams seeds ``[n_hparams_from,
n_hparams)`` x trials (:mod:`domainbed.sweep.jobs` says how test-env sets, seeds, job
folders and job states are made). The hash of a job folder keeps ``data_dir`` as DomainBed
does: launch, status and delete_incomplete must be given the same ``--data_dir`` string.
``launch`` starts only Not launched jobs, so rerunning it is safe; ``delete_incomplete``
removes Incomplete folders so the next launch retries them.

``--sweep FILE`` (a path, or a name under ``sweeps/``) is a JSON object whose keys are
this script's flag names (``datasets``, ``n_hparams``...) plus ``description``. Flags
given on the command line win over the file; ``--hparams`` is merged key by key over the
file's ``hparams`` (:mod:`domainbed.sweep.options`, :mod:`domainbed.sweep.sweep_file`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

from domainbed.launchers import Job, LauncherOptions, get_launcher, lock_status
from domainbed.lib.registry import Registry
from domainbed.sweep import options
from domainbed.sweep.jobs import JobState, build_jobs, job_state

Command = Callable[[argparse.Namespace, list[Job]], int]
COMMANDS: Registry[Command] = Registry("sweep command")
command = COMMANDS.register  # @command("name") registers a sub-command


def build_parser() -> argparse.ArgumentParser:
    """The command line: the sub-commands below and the flags of :mod:`domainbed.sweep.options`."""
    return options.build_parser(COMMANDS, description=__doc__.split("\n\n")[0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Flags over the sweep file's values over the defaults, validated."""
    return options.parse_args(build_parser(), argv)


def confirm(message: str) -> bool:
    """Print ``message`` and ask y/n on stdin; anything but yes (or end of input) is no."""
    print(message)
    try:
        answer = input("Are you sure? (y/n) ")
    except EOFError:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def _print_counts(jobs: list[Job]) -> None:
    counts = Counter(job_state(job) for job in jobs)
    print(
        f"{len(jobs)} jobs: {counts[JobState.DONE]} done, {counts[JobState.INCOMPLETE]} incomplete, "
        f"{counts[JobState.NOT_LAUNCHED]} not launched."
    )


def launcher_options(args: argparse.Namespace) -> LauncherOptions:
    """The launcher settings carried by the parsed flags."""
    return LauncherOptions(
        progress=not args.no_progress,
        slurm_partition=args.slurm_partition,
        slurm_time=args.slurm_time,
        slurm_gpus=args.slurm_gpus,
        slurm_cpus=args.slurm_cpus,
        slurm_mem=args.slurm_mem,
        slurm_array_parallelism=args.slurm_array_parallelism,
        slurm_local=args.slurm_local,
        slurm_wait=args.slurm_wait,
        submitit_dir=Path(args.submitit_dir) if args.submitit_dir else None,
    )


@command("launch")
def launch(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Start every Not launched job; exit status 1 when any of them failed."""
    _print_counts(jobs)
    pending = [job for job in jobs if job_state(job) is JobState.NOT_LAUNCHED]
    if not pending:
        print("Nothing to launch (run delete_incomplete first to retry incomplete jobs).")
        return 0
    message = f"About to launch {len(pending)} jobs with the {args.command_launcher!r} launcher."
    if not args.skip_confirmation and not confirm(message):
        print("Nothing launched.")
        return 0
    summary = get_launcher(args.command_launcher)(pending, launcher_options(args))
    print(f"Launch finished: {summary}.")
    return 1 if summary.failed else 0


@command("delete_incomplete")
def delete_incomplete(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Remove the folders of Incomplete jobs, except those running right now on this host."""
    sweep_dir = Path(os.path.abspath(args.output_dir)).resolve()
    incomplete = [job for job in jobs if job_state(job) is JobState.INCOMPLETE]
    running = [job for job in incomplete if lock_status(job.output_dir) == "live"]
    doomed = [job for job in incomplete if job not in running]
    if running:
        print(f"Keeping {len(running)} incomplete jobs that are running on this host now.")
    remote = sum(lock_status(job.output_dir) == "remote" for job in doomed)
    if remote:
        print(f"Warning: {remote} of them hold a lock from another host and may still run there; cancel them first.")
    if not doomed:
        print("No incomplete jobs to delete.")
        return 0
    if not args.skip_confirmation and not confirm(f"About to delete {len(doomed)} incomplete jobs."):
        print("Nothing deleted.")
        return 0
    for job in doomed:
        if not job.output_dir.resolve().is_relative_to(sweep_dir):  # never rmtree outside the sweep
            raise ValueError(f"refusing to delete {job.output_dir}: not inside {sweep_dir}")
        shutil.rmtree(job.output_dir)
    print(f"Deleted {len(doomed)} incomplete jobs.")
    return 0


@command("status")
def status(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Print how many jobs are done, incomplete and not launched, overall and per dataset/algorithm."""
    _print_counts(jobs)
    running = sum(job_state(j) is JobState.INCOMPLETE and lock_status(j.output_dir) == "live" for j in jobs)
    if running:
        print(f"{running} incomplete jobs are running on this host now.")
    table: dict[tuple[str, str], Counter] = {}
    for job in jobs:
        key = (job.train_args["dataset"], job.train_args["algorithm"])
        table.setdefault(key, Counter())[job_state(job)] += 1
    width = max(len(d) for d, _ in table)
    algo_width = max(len(a) for _, a in table)
    print(f"{'dataset':<{width}}  {'algorithm':<{algo_width}}  {'done':>6}  {'incomplete':>10}  {'not launched':>12}")
    for (dataset, algorithm), counts in table.items():
        print(
            f"{dataset:<{width}}  {algorithm:<{algo_width}}  {counts[JobState.DONE]:>6}  "
            f"{counts[JobState.INCOMPLETE]:>10}  {counts[JobState.NOT_LAUNCHED]:>12}"
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status (bad input raises ``SystemExit`` with the reason)."""
    try:
        args = parse_args(argv)
        jobs = build_jobs(args)
    except ValueError as error:
        raise SystemExit(f"sweep: error: {error}") from None
    return COMMANDS[args.command](args, jobs)


if __name__ == "__main__":
    sys.exit(main())
