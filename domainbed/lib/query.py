"""DomainBed's import name for its query language: ``from domainbed.lib.query import Q``.

The implementation is :mod:`domainbed.results.query`; this module only re-exports it, so
users' scripts and notebooks written against DomainBed run unchanged.
"""

from domainbed.results.query import Q, Selector, hashable, make_selector_fn

__all__ = ["Q", "Selector", "hashable", "make_selector_fn"]
