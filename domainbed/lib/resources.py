"""Files shipped with the package: sweep definitions (``sweeps/``) and notebooks (``notebooks/``).

In a checkout they sit at the top of the repository. An installed wheel carries them as
``domainbed/resources/<folder>/`` (setup.py maps the folders there). :func:`path` looks in
the installed copy first, then in the checkout, so scripts work either way:

    from domainbed.lib import resources
    resources.path("sweeps/offline_demo.json")
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

FOLDERS = ("sweeps", "notebooks")
_PACKAGE = Path(__file__).resolve().parents[1]  # .../domainbed
_INSTALLED = _PACKAGE / "resources"
_CHECKOUT = _PACKAGE.parent


def _checked(relative: str) -> PurePosixPath:
    rel = PurePosixPath(relative)
    if rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2 or rel.parts[0] not in FOLDERS:
        raise ValueError(f"resource {relative!r}: expected '<folder>/<file>' with folder one of {', '.join(FOLDERS)}")
    return rel


def roots() -> list[Path]:
    """Where resources are looked up, in order: the installed copy, then the checkout."""
    return [_INSTALLED, _CHECKOUT]


def path(relative: str) -> Path:
    """The file ``relative`` (e.g. ``"sweeps/offline_demo.json"``); the error lists what exists."""
    rel = _checked(relative)
    for root in roots():
        candidate = root.joinpath(*rel.parts)
        if candidate.is_file():
            return candidate
    available = ", ".join(names(rel.parts[0])) or "none"
    raise FileNotFoundError(
        f"no packaged resource {relative!r} (looked in {', '.join(str(r) for r in roots())}); "
        f"available in {rel.parts[0]}/: {available}"
    )


def _check_folder(name: str) -> None:
    if name not in FOLDERS:
        raise ValueError(f"unknown resource folder {name!r}; valid folders: {', '.join(FOLDERS)}")


def folder(name: str) -> Path:
    """The directory ``name`` (``sweeps`` or ``notebooks``) of the first root that has it."""
    _check_folder(name)
    for root in roots():
        if (root / name).is_dir():
            return root / name
    raise FileNotFoundError(f"no packaged folder {name!r} (looked in {', '.join(str(r) for r in roots())})")


def names(folder_name: str) -> list[str]:
    """File names available in ``folder_name`` (``sweeps`` or ``notebooks``), from every root."""
    _check_folder(folder_name)
    found: set[str] = set()
    for root in roots():
        if (root / folder_name).is_dir():
            found.update(p.name for p in (root / folder_name).iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(found)
