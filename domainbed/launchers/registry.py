"""What a launcher is: a job, the options it may read, what it reports, and the registry.

A launcher is a function ``launcher(jobs, options) -> LaunchSummary`` registered under a
name with :func:`register_launcher`; ``sweep launch --command_launcher NAME`` looks it up
with :func:`get_launcher`. Adding one is one new module in this package (it is imported
automatically, see :mod:`domainbed.launchers`).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from domainbed.lib.registry import Registry


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
    threads_per_job: int | None = None  # local launchers: OMP threads per job (default: see launchers.local)
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
    """What a launcher did: jobs it started, that failed, that a signal stopped (they saved a
    checkpoint and resume when relaunched), that another launch owned; and the signal that
    stopped the launcher itself, if one did."""

    started: int = 0
    failed: int = 0
    skipped: int = 0
    interrupted: int = 0
    signal: int | None = None

    def __str__(self) -> str:
        text = f"{self.started} started, {self.failed} failed, {self.skipped} skipped (claimed by another launch)"
        return text + (f", {self.interrupted} interrupted" if self.interrupted else "")


Launcher = Callable[[Sequence[Job], LauncherOptions], LaunchSummary]
LAUNCHERS: Registry[Launcher] = Registry("command launcher", plural="launchers")


def register_launcher(name: str) -> Callable[[Launcher], Launcher]:
    """Decorator registering a launcher under ``name``; a duplicate name raises."""
    return LAUNCHERS.register(name)


def launcher_names() -> list[str]:
    """Names of every registered launcher, sorted."""
    return LAUNCHERS.names()


def get_launcher(name: str) -> Launcher:
    """The launcher registered as ``name``; the error lists the valid names."""
    return LAUNCHERS.get(name)
