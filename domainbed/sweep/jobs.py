"""A sweep's jobs: datasets x algorithms x test-env sets x hparams seeds x trials.

The test-env sets are every single env and, unless ``single_test_envs``, every pair
(leave-one-domain-out selection needs the pairs). A subset keeps the singles of the listed
envs and the pairs that contain at least one of them, so leave-one-domain-out still works
for the envs kept. Each job has ``trial_seed = trial`` and ``seed = seed_hash(dataset,
algorithm, test_envs, hparams_seed, trial)``. With ``paired_seeds`` the seed leaves the
algorithm out, ``seed_hash(dataset, test_envs, hparams_seed, trial)``, so the jobs of
different algorithms in one trial share data order, augmentation and the random init of
the parts they have in common: differences between algorithms are then paired
comparisons. The default keeps DomainBed's seeds, so existing sweeps keep their folders.

Job folder: ``OUTPUT_DIR/<md5 hex of json.dumps(train_args, sort_keys=True)>`` where the
hash leaves out ``output_dir`` (it is derived from the hash) and ``device`` (where a run
executes is not what it is). The hash keeps ``data_dir`` as DomainBed does. A job is
*Done* when its folder holds ``done``, *Incomplete* when the folder exists without it,
and *Not launched* otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Sequence

from domainbed import datasets
from domainbed.launchers import Job
from domainbed.lib.environments import check_test_envs
from domainbed.lib.seeding import seed_hash

_NOT_HASHED = ("output_dir", "device")


class JobState(str, Enum):
    """DomainBed's three job states, read from the job folder."""

    DONE = "Done"
    INCOMPLETE = "Incomplete"
    NOT_LAUNCHED = "Not launched"


def job_state(job: Job) -> JobState:
    """Done if ``done`` exists, Incomplete if only the folder does, else Not launched."""
    if (job.output_dir / "done").exists():
        return JobState.DONE
    if job.output_dir.exists():
        return JobState.INCOMPLETE
    return JobState.NOT_LAUNCHED


def test_env_combinations(
    n_envs: int, single_test_envs: bool = False, subset: list[int] | None = None, dataset: str = "this dataset"
) -> list[list[int]]:
    """Test-env sets of a dataset with ``n_envs`` envs: singles, then pairs (see module doc)."""
    if subset:
        check_test_envs(subset, n_envs, flag="--test_envs_subset", dataset=dataset, for_training=False)
    chosen = sorted(set(subset)) if subset else list(range(n_envs))
    combos = [[env] for env in chosen]
    if not single_test_envs:
        combos += [
            [a, b] for a in range(n_envs) for b in range(a + 1, n_envs) if a in chosen or b in chosen
        ]
    return combos


def job_hash(train_args: dict[str, Any]) -> str:
    """md5 hex of the sorted JSON of the train args, without ``output_dir`` and ``device``."""
    hashed = {k: v for k, v in train_args.items() if k not in _NOT_HASHED}
    return hashlib.md5(json.dumps(hashed, sort_keys=True).encode("utf-8"), usedforsecurity=False).hexdigest()


def train_command(train_module: str, train_args: dict[str, Any]) -> list[str]:
    """The argument list running ``train_module`` with ``train_args`` (never a shell string)."""
    argv = [sys.executable, "-m", train_module]
    for key, value in train_args.items():
        if value is None or value is False:
            continue
        argv.append(f"--{key}")
        if value is True:
            continue
        if isinstance(value, (list, tuple)):
            argv.extend(str(v) for v in value)
        else:
            argv.append(str(value))
    return argv


class SweepJob(Job):
    """A :class:`~domainbed.launchers.Job` made from its train args, with DomainBed's ``Job``
    interface (``domainbed.scripts.sweep.Job``): ``SweepJob(train_args, sweep_output_dir)``,
    the states ``NOT_LAUNCHED``/``INCOMPLETE``/``DONE``, :attr:`state`, :attr:`command_str`,
    and the static :meth:`launch` and :meth:`delete`.

    Its folder is ``sweep_output_dir/<job_hash(train_args)>``, checked to stay inside it.
    Unlike DomainBed's, :attr:`state` is read from the folder when asked, not once.
    """

    NOT_LAUNCHED = JobState.NOT_LAUNCHED
    INCOMPLETE = JobState.INCOMPLETE
    DONE = JobState.DONE

    def __init__(self, train_args: dict[str, Any], sweep_output_dir: str | os.PathLike[str],
                 train_module: str = "domainbed.scripts.train"):
        sweep_dir = Path(os.path.abspath(sweep_output_dir))
        job_dir = sweep_dir / job_hash(train_args)
        if not job_dir.resolve().is_relative_to(sweep_dir.resolve()):
            raise ValueError(f"job folder {job_dir} would escape the sweep folder {sweep_dir}")
        full = {**train_args, "output_dir": str(job_dir)}
        super().__init__(argv=train_command(train_module, full), output_dir=job_dir, train_args=full)

    @property
    def state(self) -> JobState:
        return job_state(self)

    @property
    def command_str(self) -> str:
        return self.command

    def __str__(self) -> str:
        a = self.train_args
        info = (a["dataset"], a["algorithm"], a["test_envs"], a["hparams_seed"])
        return f"{self.state.value}: {self.output_dir} {info}"

    @staticmethod
    def launch(jobs: Sequence[Job], launcher_fn: Callable[..., Any] | str) -> Any:
        """Run ``jobs`` with ``launcher_fn``: a launcher's name or one of our launchers
        (``command_launchers.REGISTRY[name]``), which claim each job and resume interrupted
        ones; or, as in DomainBed, a function of the list of command strings, called after
        every job folder is made."""
        from domainbed.launchers import LauncherOptions, get_launcher, launcher_names

        if isinstance(launcher_fn, str):
            launcher_fn = get_launcher(launcher_fn)
        if any(launcher_fn is get_launcher(name) for name in launcher_names()):
            return launcher_fn(list(jobs), LauncherOptions())
        for job in jobs:
            Path(job.output_dir).mkdir(parents=True, exist_ok=True)
        return launcher_fn([job.command for job in jobs])

    @staticmethod
    def delete(jobs: Sequence[Job]) -> None:
        """Remove the folders of ``jobs`` (those that exist)."""
        for job in jobs:
            if Path(job.output_dir).exists():
                shutil.rmtree(job.output_dir)


def make_job(train_args: dict[str, Any], sweep_dir: Path, train_module: str) -> SweepJob:
    """The job of ``train_args`` in ``sweep_dir`` (:class:`SweepJob`)."""
    return SweepJob(train_args, sweep_dir, train_module)


def job_seed(dataset: str, algorithm: str, test_envs: list[int], hparams_seed: int, trial: int, paired: bool = False) -> int:
    """The ``--seed`` of one job: DomainBed's hash, or without the algorithm when ``paired``."""
    if paired:
        return seed_hash(dataset, test_envs, hparams_seed, trial)
    return seed_hash(dataset, algorithm, test_envs, hparams_seed, trial)


def build_jobs(args: argparse.Namespace) -> list[Job]:
    """Every job of the sweep, trial-major so that partial sweeps cover whole trials first."""
    sweep_dir = Path(os.path.abspath(args.output_dir))
    return [make_job(train_args, sweep_dir, args.train_module) for train_args in build_train_args(args)]


def build_train_args(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The train args of every job of the sweep (without ``output_dir``), in job order.

    ``uda_holdout_fraction`` is passed only when set (so domain-generalization sweeps hash
    as before, and as DomainBed's); ``task`` always is, as DomainBed does.
    """
    combos = {
        d: test_env_combinations(datasets.num_environments(d), args.single_test_envs, args.test_envs_subset, d)
        for d in args.datasets
    }
    jobs: list[dict[str, Any]] = []
    for trial in range(args.n_trials):
        for dataset in args.datasets:
            for algorithm in args.algorithms:
                for test_envs in combos[dataset]:
                    for hparams_seed in range(args.n_hparams_from, args.n_hparams):
                        train_args: dict[str, Any] = {
                            "dataset": dataset,
                            "algorithm": algorithm,
                            "test_envs": test_envs,
                            "holdout_fraction": args.holdout_fraction,
                            "hparams_seed": hparams_seed,
                            "data_dir": args.data_dir,
                            "task": args.task,
                            "trial_seed": trial,
                            "seed": job_seed(dataset, algorithm, test_envs, hparams_seed, trial, args.paired_seeds),
                        }
                        # Optional keys are added only when set, so default sweeps hash like DomainBed's.
                        per_dataset = (args.per_dataset or {}).get(dataset, {})
                        optional = {
                            "steps": per_dataset.get("steps", args.steps),
                            "hparams": json.dumps(args.hparams, sort_keys=True) if args.hparams else None,
                            "checkpoint_freq": per_dataset.get("checkpoint_freq", args.checkpoint_freq),
                            "skip_model_save": args.skip_model_save or None,
                            "device": args.device,
                            "uda_holdout_fraction": getattr(args, "uda_holdout_fraction", None),
                        }
                        train_args.update({k: v for k, v in optional.items() if v is not None})
                        jobs.append(train_args)
    return jobs
