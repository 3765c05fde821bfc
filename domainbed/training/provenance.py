"""Which code produced a run: the package version, the git commit, and the library versions.

:func:`collect_provenance` returns them as a plain dict (for ``provenance.json`` in each run
folder, and for anything that ships a model and wants to say where it came from).
:func:`record_provenance` writes it when a run starts; a resumed run whose code differs
keeps the first entry and appends its own under ``resumed_with``, so a folder never hides
that its steps came from two versions. The commit is read only when the package itself is
in a git checkout (an installed wheel reports ``None``); git missing or failing is not an
error.
"""

from __future__ import annotations

import functools
import importlib
import json
import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from domainbed.training.atomic_files import atomic_write_text
from domainbed.version import __version__

PROVENANCE = "provenance.json"
LIBRARIES = ("torch", "torchvision", "timm")
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _git(root: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run([git, "-C", str(root), *args], capture_output=True, text=True, timeout=10,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_state(package_dir: Path = _PACKAGE_DIR) -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the checkout holding ``package_dir``, or ``(None, None)`` when the
    package is not a checkout's own ``domainbed/`` folder (a wheel installed in a virtualenv
    that happens to sit inside some repository reports ``None`` too). Dirty means tracked
    files changed since the commit (untracked files do not count)."""
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != package_dir.parent:
        return None, None
    commit = _git(package_dir, "rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = _git(package_dir, "status", "--porcelain", "--untracked-files=no")
    return commit, (None if status is None else bool(status))


def _version(name: str) -> str | None:
    """The module's own ``__version__`` (it keeps torch's build tag, e.g. ``+cu130``), else the
    installed distribution's version, else ``None``."""
    try:
        return str(importlib.import_module(name).__version__)
    except Exception:  # not installed, or broken: provenance must never stop a run
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None


@functools.lru_cache(maxsize=1)
def _collect() -> tuple[tuple[str, Any], ...]:
    commit, dirty = git_state()
    info: dict[str, Any] = {"domainbed": __version__, "git_commit": commit, "git_dirty": dirty,
                            "python": platform.python_version()}
    info.update({name: _version(name) for name in LIBRARIES})
    return tuple(info.items())


def collect_provenance() -> dict[str, Any]:
    """``{"domainbed", "git_commit", "git_dirty", "python", "torch", "torchvision", "timm"}``
    of this process (computed once; a missing value is ``None``)."""
    return dict(_collect())


def describe_commit(info: dict[str, Any]) -> str:
    """A short label of the code: the commit's first 10 characters (``+dirty`` when tracked
    files were changed), or the package version when there is no commit."""
    commit = info.get("git_commit")
    if not commit:
        return f"version {info.get('domainbed')} (no git commit)"
    return commit[:10] + ("+dirty" if info.get("git_dirty") else "")


def record_provenance(out: Path) -> dict[str, Any]:
    """Write ``out/provenance.json`` at the start of a run (atomically); on a resume with
    other code, keep the first entry and append this one under ``resumed_with`` (with a
    warning). Returns what the file holds."""
    mine = collect_provenance()
    path = out / PROVENANCE
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        recorded = None
    if not isinstance(recorded, dict):
        recorded = mine
    else:
        first = {k: v for k, v in recorded.items() if k != "resumed_with"}
        seen = [first, *recorded.get("resumed_with", [])]
        if mine not in seen:
            print(f"warning: {out} was started with code {describe_commit(first)} and now resumes with "
                  f"{describe_commit(mine)}; {PROVENANCE} lists both")
            recorded = {**first, "resumed_with": [*recorded.get("resumed_with", []), mine]}
    atomic_write_text(path, json.dumps(recorded, indent=2, sort_keys=True))
    return recorded


def read_provenance(out: Path) -> dict[str, Any] | None:
    """The ``provenance.json`` of a run folder, or ``None`` (absent, unreadable, or a run of
    an earlier version)."""
    try:
        value = json.loads((out / PROVENANCE).read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def commits_of(info: dict[str, Any]) -> list[str]:
    """Labels (:func:`describe_commit`) of the code a run folder's steps came from."""
    labels = [describe_commit(info)]
    for entry in info.get("resumed_with", []):
        label = describe_commit(entry)
        if label not in labels:
            labels.append(label)
    return labels


def mixed_commits_warning(folders: list[Path]) -> str | None:
    """A warning when the run folders' steps came from more than one version of the code
    (commits, or a changed tree), naming each with its number of folders; ``None`` otherwise.
    Folders without ``provenance.json`` (not started, or of an earlier version) are not counted."""
    counts: dict[str, int] = {}
    for folder in folders:
        info = read_provenance(folder)
        if info is not None:
            for label in commits_of(info):
                counts[label] = counts.get(label, 0) + 1
    if len(counts) < 2:
        return None
    listed = ", ".join(f"{label} ({n} jobs)" for label, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (f"warning: the jobs ran code from {len(counts)} different versions: {listed}. Their results may not be "
            f"comparable; each job's {PROVENANCE} says which it used.")
