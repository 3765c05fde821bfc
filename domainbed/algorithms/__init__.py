"""Algorithms, one file per family; importing this package registers them all."""

from domainbed.algorithms.registry import algorithm_names, get_algorithm_class, register_algorithm
from domainbed.algorithms.base import Algorithm

# Importing a module registers its algorithms (decorator side effect), in this order.
from domainbed.algorithms import erm, coral, swad, ftlp, miro  # noqa: E402,F401

__all__ = ["Algorithm", "algorithm_names", "get_algorithm_class", "register_algorithm"]
