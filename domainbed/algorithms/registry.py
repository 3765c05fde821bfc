"""Name -> class registry for algorithms, filled by the ``@register_algorithm`` decorator."""

from __future__ import annotations

from typing import TypeVar

from domainbed.lib.registry import Registry

ALGORITHMS: Registry[type] = Registry("algorithm")
T = TypeVar("T", bound=type)


def register_algorithm(cls: T) -> T:
    """Register ``cls`` under its class name (its DomainBed name); duplicates are an error."""
    return ALGORITHMS.register()(cls)


def algorithm_names() -> list[str]:
    return ALGORITHMS.names()


def get_algorithm_class(name: str) -> type:
    return ALGORITHMS.get(name)
