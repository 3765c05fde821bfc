"""Build the project's wheel, and fresh virtual environments to install it in.

Used by the tests that check what a user gets from ``pip install domainbed``: the wheel is
built from a copy of the sources (the build leaves nothing in the checkout), and a fresh
venv sees only torch and what torch needs from the running environment, so that pip
installs every other dependency and extra itself, as on a new machine, while the
multi-GB torch build is never downloaded or copied again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
# What setup.py reads and packages: the package, its resources and the files setup() opens.
SOURCES = ("setup.py", "README.md", "LICENSE", "domainbed", "sweeps", "notebooks")
# Shared with the fresh venvs: torch and torchvision, and everything they require.
SHARED_ROOTS = ("torch", "torchvision")


def build_wheel(tmp_path: Path) -> Path:
    """``pip wheel`` of a copy of the checkout, without dependencies; returns the .whl file."""
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(src)],
        check=True, cwd=tmp_path, capture_output=True,
    )  # fmt: skip
    (wheel,) = wheels.glob("domainbed-*.whl")
    return wheel


def requirement_closure(roots: tuple[str, ...] = SHARED_ROOTS) -> list[metadata.Distribution]:
    """The installed distributions ``roots`` need, recursively, with the extras each
    requirement asks for (torch asks for ``cuda-toolkit[cublas,cudart,...]``)."""
    seen: dict[str, metadata.Distribution] = {}
    extras_done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(root, "") for root in roots]
    while todo:
        raw, extra = todo.pop()
        name = canonicalize_name(raw)
        if (name, extra) in extras_done:
            continue
        extras_done.add((name, extra))
        try:
            dist = seen.get(name) or metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # an optional or platform-specific requirement that is not installed here
        seen[name] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, "")] + [(req.name, e) for e in req.extras]
    return list(seen.values())


def share_torch(venv: Path, link_dir: Path) -> list[str]:
    """Make torch (and its requirements) of this environment visible to ``venv``, and nothing else.

    Their top-level entries of site-packages are symlinked into ``link_dir``, which a
    ``.pth`` file appends to the venv's path: pip counts them as installed and leaves them
    alone, and the venv's own site-packages still comes first. Returns the names shared.
    """
    link_dir.mkdir(parents=True)
    shared = []
    for dist in requirement_closure():
        site = Path(dist.locate_file(""))
        for entry in sorted({f.parts[0] for f in dist.files or [] if f.parts[0] != ".."}):
            if entry == "__pycache__" or entry.endswith(".pth") or (link_dir / entry).exists():
                continue
            if (site / entry).exists():
                (link_dir / entry).symlink_to(site / entry)
        shared.append(dist.metadata["Name"])
    purelib = subprocess.run(
        [str(venv_python(venv)), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "shared_torch.pth").write_text(f"{link_dir}\n")
    return sorted(shared)


def venv_python(venv: Path) -> Path:
    """The interpreter of ``venv`` (POSIX or Windows layout)."""
    scripts = "Scripts" if os.name == "nt" else "bin"
    return venv / scripts / ("python.exe" if os.name == "nt" else "python")


def fresh_venv(venv: Path) -> Path:
    """A new venv without pip (this environment's pip installs into it with ``--python``)
    and with torch shared; returns its interpreter."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, capture_output=True)
    share_torch(venv, venv.parent / f"{venv.name}_shared_torch")
    return venv_python(venv)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that would import the checkout or this venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    ours = str(Path(sysconfig.get_paths()["scripts"]))
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p and p != ours)
    env.update(extra)
    return env
