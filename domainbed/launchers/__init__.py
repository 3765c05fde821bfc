"""Command launchers: the ways a sweep's training runs get executed.

* :mod:`~domainbed.launchers.registry` — ``Job``, ``LauncherOptions``, ``LaunchSummary``
  and the registry (``@register_launcher``, ``get_launcher``, ``launcher_names``);
* :mod:`~domainbed.launchers.claims` — atomic job claims and ``.lock`` files, so two
  launches never run the same job;
* :mod:`~domainbed.launchers.local` — ``dummy``, ``local``, ``multi_gpu``;
* :mod:`~domainbed.launchers.slurm` — ``slurm`` through submitit, requeued on pre-emption.

Every other module of this package is imported here, so a new launcher is one new file
whose function carries ``@register_launcher("name")``.

Who uses it: the sweep script and sweep/ (which launcher runs the jobs).
"""

from domainbed.launchers.claims import LOCK_NAME, LOG_NAME, LockStatus, claim, lock_status, read_lock, release
from domainbed.launchers.registry import (
    Job,
    Launcher,
    LauncherOptions,
    LaunchSummary,
    get_launcher,
    launcher_names,
    register_launcher,
)
from domainbed.lib.discovery import import_submodules

import_submodules(__name__, __path__, skip=("registry", "claims"))

__all__ = [
    "LOCK_NAME",
    "LOG_NAME",
    "Job",
    "Launcher",
    "LauncherOptions",
    "LaunchSummary",
    "LockStatus",
    "claim",
    "get_launcher",
    "launcher_names",
    "lock_status",
    "read_lock",
    "register_launcher",
    "release",
]
