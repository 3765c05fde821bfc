"""Run a DomainBed-style sweep: ``launch``, ``delete_incomplete`` or ``status``.

    python -m domainbed.scripts.sweep launch --datasets PACS --algorithms ERM ERM_FTLP \\
        --data_dir DATA --output_dir SWEEP --command_launcher local
    python -m domainbed.scripts.sweep status --sweep ftlp_paper --data_dir DATA --output_dir SWEEP

Jobs are datasets x algorithms x test-env sets x hparams seeds ``[n_hparams_from,
n_hparams)`` x trials (:mod:`domainbed.sweep.jobs` says how test-env sets, seeds, job
folders and job states are made). The hash of a job folder keeps ``data_dir`` as DomainBed
does: launch, status and delete_incomplete must be given the same ``--data_dir`` string.
``launch`` starts the Not launched jobs and resumes the *interrupted* ones (stopped by a
signal or a killed launcher, not running; they resume from their checkpoint), so rerunning
it is safe and is how an interrupted sweep continues; Ctrl-C or SIGTERM lets the running
jobs save and exits 130 / 143. ``status`` tells running, interrupted and failed jobs apart;
``delete_incomplete`` removes Incomplete folders so the next launch retries them from
scratch (needed only for failed jobs).

``--sweep FILE`` (a path, or a name under ``sweeps/``) is a JSON object whose keys are
this script's flag names (``datasets``, ``n_hparams``...) plus ``description``. Flags
given on the command line win over the file; ``--hparams`` is merged key by key over the
file's ``hparams`` (:mod:`domainbed.sweep.options`, :mod:`domainbed.sweep.sweep_file`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Callable

from domainbed.launchers import LauncherOptions, get_launcher, lock_status
from domainbed.launchers.claims import job_condition
from domainbed.lib.registry import Registry
from domainbed.sweep import options
from domainbed.sweep.jobs import JobState, build_jobs, build_train_args, job_state
from domainbed.sweep.jobs import SweepJob as Job  # DomainBed's name; a domainbed.launchers.Job
from domainbed.training.preemption import exit_status
from domainbed.training.provenance import mixed_commits_warning
from domainbed.training.run_lock import folder_in_use

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


INCOMPLETE_CONDITIONS = ("running", "interrupted", "failed")


def _print_counts(jobs: list[Job]) -> Counter:
    """Print DomainBed's three states, the Incomplete ones by condition; returns the conditions."""
    conditions = Counter(job_condition(job.output_dir) for job in jobs)
    incomplete = sum(conditions[c] for c in INCOMPLETE_CONDITIONS)
    detail = ", ".join(f"{conditions[c]} {c}" for c in INCOMPLETE_CONDITIONS if conditions[c])
    print(
        f"{len(jobs)} jobs: {conditions['done']} done, {incomplete} incomplete{f' ({detail})' if detail else ''}, "
        f"{conditions['not launched']} not launched."
    )
    return conditions


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
        threads_per_job=args.threads_per_job,
        submitit_dir=Path(args.submitit_dir) if args.submitit_dir else None,
    )


@command("launch")
def launch(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Start every Not launched job and resume every interrupted one; exit status 1 when any
    of them failed, 130 / 143 when Ctrl-C / SIGTERM stopped the launch."""
    conditions = _print_counts(jobs)
    pending = [job for job in jobs if job_condition(job.output_dir) in ("not launched", "interrupted")]
    if not pending:
        advice = (f" ({conditions['failed']} failed: see their launcher.log, then delete_incomplete to retry them "
                  "from scratch)" if conditions["failed"] else "")
        print(f"Nothing to launch{advice}.")
        return 0
    resumed = sum(job.output_dir.exists() for job in pending)
    detail = f" ({resumed} of them interrupted, resuming from their checkpoints)" if resumed else ""
    message = f"About to launch {len(pending)} jobs{detail} with the {args.command_launcher!r} launcher."
    if args.skip_confirmation:
        print(message)
    elif not confirm(message):
        print("Nothing launched.")
        return 0
    summary = get_launcher(args.command_launcher)(pending, launcher_options(args))
    print(f"Launch finished: {summary}.")
    if summary.signal is not None:
        name = signal.Signals(summary.signal).name
        print(f"{name} received: the running jobs saved a checkpoint and no new job started. Rerun the same launch "
              "command to resume.", file=sys.stderr)
        return exit_status(summary.signal)
    return 1 if summary.failed else 0


@command("delete_incomplete")
def delete_incomplete(args: argparse.Namespace, jobs: list[Job]) -> int:
    """Remove the folders of Incomplete jobs, except those running right now on this host."""
    sweep_dir = Path(os.path.abspath(args.output_dir)).resolve()
    incomplete = [job for job in jobs if job_state(job) is JobState.INCOMPLETE]
    running = [job for job in incomplete if lock_status(job.output_dir) == "live" or folder_in_use(job.output_dir)]
    doomed = [job for job in incomplete if job not in running]
    if running:
        print(f"Keeping {len(running)} incomplete jobs that are running on this host now.")
    remote = sum(lock_status(job.output_dir) == "remote" for job in doomed)
    if remote:
        print(f"Warning: {remote} of them hold a lock from another host and may still run there; cancel them first.")
    if not doomed:
        print("No incomplete jobs to delete.")
        return 0
    interrupted = sum(job_condition(job.output_dir) == "interrupted" for job in doomed)
    note = (f" {interrupted} of them are interrupted and keep a checkpoint: `launch` alone would resume them, "
            "deleting restarts them from step 0." if interrupted else "")
    if not args.skip_confirmation and not confirm(f"About to delete {len(doomed)} incomplete jobs.{note}"):
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
    """Print how many jobs are done, running, interrupted, failed and not launched, overall and
    per dataset/algorithm."""
    conditions = _print_counts(jobs)
    if conditions["interrupted"]:
        print(f"{conditions['interrupted']} interrupted jobs resume from their checkpoints at the next launch.")
    if conditions["failed"]:
        print(f"{conditions['failed']} failed jobs (an error, see launcher.log / err.txt in their folders) are retried "
              "only after delete_incomplete.")
    mixed = mixed_commits_warning([job.output_dir for job in jobs])
    if mixed:
        print(mixed)
    table: dict[tuple[str, str], Counter] = {}
    for job in jobs:
        key = (job.train_args["dataset"], job.train_args["algorithm"])
        table.setdefault(key, Counter())[job_condition(job.output_dir)] += 1
    columns = ("done", *INCOMPLETE_CONDITIONS, "not launched")
    width = max(len(d) for d, _ in table)
    algo_width = max(len(a) for _, a in table)
    print(f"{'dataset':<{width}}  {'algorithm':<{algo_width}}  " + "  ".join(f"{c:>{max(len(c), 4)}}" for c in columns))
    for (dataset, algorithm), counts in table.items():
        print(f"{dataset:<{width}}  {algorithm:<{algo_width}}  "
              + "  ".join(f"{counts[c]:>{max(len(c), 4)}}" for c in columns))
    return 0


def make_args_list(
    n_trials: int, dataset_names: list[str], algorithms: list[str], n_hparams_from: int, n_hparams: int,
    steps: int | None, data_dir: str, task: str, holdout_fraction: float, single_test_envs: bool,
    hparams: str | dict | None, uda_holdout_fraction: float | None = None,
) -> list[dict]:
    """DomainBed's ``make_args_list``: the train args of every job of a sweep, as ``launch``
    builds them (``Job(train_args, sweep_dir)`` makes each job). ``hparams``: a JSON text or
    a dict of fixed hparams."""
    if isinstance(hparams, str):
        try:
            hparams = options.json_object(hparams)
        except argparse.ArgumentTypeError as error:
            raise ValueError(f"hparams {error}") from None
    namespace = argparse.Namespace(
        n_trials=n_trials, datasets=list(dataset_names), algorithms=list(algorithms), n_hparams_from=n_hparams_from,
        n_hparams=n_hparams, steps=steps, data_dir=data_dir, task=task, holdout_fraction=holdout_fraction,
        single_test_envs=single_test_envs, hparams=hparams or None, uda_holdout_fraction=uda_holdout_fraction,
        test_envs_subset=None, paired_seeds=False, per_dataset=None, checkpoint_freq=None, skip_model_save=False,
        device=None,
    )
    return build_train_args(namespace)


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
