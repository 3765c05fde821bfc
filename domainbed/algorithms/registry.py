"""Name -> class registry for algorithms, filled by the ``@register_algorithm`` decorator."""

from __future__ import annotations

from typing import TypeVar

_ALGORITHMS: dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_algorithm(cls: T) -> T:
    """Register ``cls`` under its class name (its DomainBed name); duplicates are an error."""
    name = cls.__name__
    if name in _ALGORITHMS:
        raise ValueError(f"algorithm {name!r} is registered twice")
    _ALGORITHMS[name] = cls
    return cls


def algorithm_names() -> list[str]:
    return sorted(_ALGORITHMS)


def get_algorithm_class(name: str) -> type:
    try:
        return _ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"unknown algorithm {name!r}. Valid algorithms: {', '.join(algorithm_names())}") from None
