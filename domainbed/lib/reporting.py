"""DomainBed's import name for loading a sweep as record dicts: ``from domainbed.lib import reporting``.

The implementation is :mod:`domainbed.results.record_dicts`; this module only re-exports
``load_records`` and ``get_grouped_records``, so users' scripts written against DomainBed
run unchanged.
"""

from domainbed.results.record_dicts import get_grouped_records, load_records

__all__ = ["get_grouped_records", "load_records"]
