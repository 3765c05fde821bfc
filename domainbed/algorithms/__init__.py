"""Algorithms, one file per family; importing this package registers them all.

Every module and sub-package in this folder is imported (a new algorithm is one new file
with ``@register_algorithm``; a method made of several files is a sub-package whose
``__init__`` imports them: ``swad/``, ``ftlp/``). Then the FT-LP rule runs once: each
registered base algorithm that declares ``EXPOSES_FEATURES = True`` gets its
``<Name>_FTLP`` variant (:func:`domainbed.algorithms.ftlp.register_ftlp_variants`).

Besides the classes, the registry answers what the results code asks of an algorithm
(:func:`comparisons`, :func:`reports_averaged_model`), from what each registration declared.

Who uses it: training (the update loop), hparams_registry (the declared hparams),
model_selection (what each registration declares for reports) and inference (rebuilding a
model).
"""

from domainbed.algorithms.base import Algorithm
from domainbed.algorithms.registry import (
    algorithm_names,
    comparisons,
    get_algorithm_class,
    register_algorithm,
    reports_averaged_model,
)
from domainbed.lib.discovery import import_submodules

import_submodules(__name__, __path__, skip=("base", "registry"))

from domainbed.algorithms.ftlp import register_ftlp_variants  # noqa: E402

register_ftlp_variants()

__all__ = ["ALGORITHMS", "Algorithm", "algorithm_names", "comparisons", "get_algorithm_class", "register_algorithm",
           "reports_averaged_model"]


def __getattr__(name: str) -> list[str]:
    """``ALGORITHMS``: DomainBed's list of algorithm names, read from the registry when asked,
    so that algorithms registered later (a user's own) are in it."""
    if name == "ALGORITHMS":
        return algorithm_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
