"""Import every module of a package, so that their registration decorators run.

Adding an algorithm or a dataset is one new file: the package's ``__init__`` calls
:func:`import_submodules` and the new module's ``@register_...`` decorator does the rest.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def import_submodules(package: str, path: list[str] | tuple[str, ...], skip: tuple[str, ...] = ()) -> list[ModuleType]:
    """Import ``package.<name>`` for every module in ``path`` (sorted by name, minus ``skip``)."""
    modules = []
    for info in sorted(pkgutil.iter_modules(list(path)), key=lambda m: m.name):
        if info.name.startswith("_") or info.name in skip:
            continue
        modules.append(importlib.import_module(f"{package}.{info.name}"))
    return modules
