"""Former home of the command launchers, kept so that existing imports keep working.

The launchers live in the package :mod:`domainbed.launchers` (registry, claims, local and
Slurm launchers, one module each); this module re-exports its public names.
"""

from domainbed.launchers import (
    LOCK_NAME,
    LOG_NAME,
    Job,
    Launcher,
    LauncherOptions,
    LaunchSummary,
    LockStatus,
    claim,
    get_launcher,
    launcher_names,
    lock_status,
    read_lock,
    register_launcher,
    release,
)
from domainbed.launchers.claims import refresh_lock
from domainbed.launchers.local import dummy_launcher, local_launcher, multi_gpu_launcher, visible_gpus
from domainbed.launchers.registry import LAUNCHERS
from domainbed.launchers.slurm import SubmititTrainJob, slurm_launcher

# DomainBed's name: launcher name -> launcher (``REGISTRY["local"]``), for ``Job.launch``.
REGISTRY = LAUNCHERS

__all__ = [
    "REGISTRY",
    "LOCK_NAME",
    "LOG_NAME",
    "Job",
    "Launcher",
    "LauncherOptions",
    "LaunchSummary",
    "LockStatus",
    "SubmititTrainJob",
    "claim",
    "dummy_launcher",
    "get_launcher",
    "launcher_names",
    "local_launcher",
    "lock_status",
    "multi_gpu_launcher",
    "read_lock",
    "refresh_lock",
    "register_launcher",
    "release",
    "slurm_launcher",
    "visible_gpus",
]
