"""The algorithm registry: name -> class, and what each registration declares for the reports.

``@register_algorithm`` records a class under its class name (its DomainBed name). Its
keywords state, where an algorithm is made, the facts that results code reads instead of
guessing them from names:

- ``variant_of``: the algorithm this one adds something to (the FT-LP rule registers
  ``X_FTLP`` with ``variant_of="X"``); the reports pair the variant with it.
- ``control_of``: the algorithm this control arm is a control of (a shuffled prior).
- ``baseline_of``: the algorithm measured against this published method (MIRO for ERM_FTLP).
- ``averaged_model``: the reported model is an average of the trained weights (SWAD).
  Subclasses inherit it, as they inherit the averaging.

:func:`comparisons` and :func:`reports_averaged_model` answer from these declarations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar, overload

from domainbed.lib.registry import Registry

ALGORITHMS: Registry[type] = Registry("algorithm")
T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Declaration:
    """The facts an algorithm's registration declared (see the module docstring)."""

    variant_of: str | None = None
    control_of: str | None = None
    baseline_of: str | None = None
    averaged_model: bool = False


NOTHING_DECLARED = Declaration()
# Keyed by class, not name: a name a test removes from the registry takes its facts along.
_DECLARATIONS: dict[type, Declaration] = {}


@overload
def register_algorithm(cls: T, *, variant_of: str | None = None, control_of: str | None = None,
                       baseline_of: str | None = None, averaged_model: bool = False) -> T: ...
@overload
def register_algorithm(cls: None = None, *, variant_of: str | None = None, control_of: str | None = None,
                       baseline_of: str | None = None, averaged_model: bool = False) -> Callable[[T], T]: ...


def register_algorithm(cls: T | None = None, *, variant_of: str | None = None, control_of: str | None = None,
                       baseline_of: str | None = None, averaged_model: bool = False) -> T | Callable[[T], T]:
    """Register a class under its class name; duplicates are an error.

    Use it bare (``@register_algorithm``) or with the keywords of the module docstring
    (``@register_algorithm(averaged_model=True)``).
    """
    declared = Declaration(variant_of, control_of, baseline_of, bool(averaged_model))

    def decorate(klass: T) -> T:
        ALGORITHMS.register()(klass)
        if declared != NOTHING_DECLARED:
            _DECLARATIONS[klass] = declared
        return klass

    return decorate if cls is None else decorate(cls)


def algorithm_names() -> list[str]:
    return ALGORITHMS.names()


def get_algorithm_class(name: str) -> type:
    return ALGORITHMS.get(name)


def declaration(name: str) -> Declaration:
    """What the registration of ``name`` declared; nothing for a name not registered (the
    records of an older or foreign sweep), whose name therefore suggests nothing."""
    if name not in ALGORITHMS:
        return NOTHING_DECLARED
    return _DECLARATIONS.get(ALGORITHMS.get(name), NOTHING_DECLARED)


def reports_averaged_model(name: str) -> bool:
    """True when the model ``name`` reports is an average of its weights: its class, or a
    class it derives from, was registered with ``averaged_model=True``. False for names not
    registered."""
    if name not in ALGORITHMS:
        return False
    return any(_DECLARATIONS.get(klass, NOTHING_DECLARED).averaged_model for klass in ALGORITHMS.get(name).__mro__)


def comparisons(algorithms: Iterable[str]) -> list[tuple[str, str]]:
    """The (treatment, baseline) pairs the paired-gain tables report, among ``algorithms``.

    First each variant against the algorithm it was made from (``variant_of``), sorted by
    variant; then each algorithm against its control arms (``control_of``) and the published
    methods it is measured against (``baseline_of``), sorted. A pair is kept only when both
    algorithms are in ``algorithms``.
    """
    present = set(algorithms)
    declared = {name: declaration(name) for name in present}
    variants = sorted((name, d.variant_of) for name, d in declared.items() if d.variant_of)
    against = sorted((target, name) for name, d in declared.items() for target in (d.control_of, d.baseline_of) if target)
    return [(t, b) for t, b in variants + against if t in present and b in present]
