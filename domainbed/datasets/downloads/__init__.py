"""Downloaders, one module per family of published archives, registered by dataset name.

Only ``python -m domainbed.scripts.download`` calls them. A new one is a new module here
with a :class:`Downloader` subclass decorated with ``@register_downloader``.

Who uses it: ``python -m domainbed.scripts.download`` only.
"""

from __future__ import annotations

from domainbed.datasets.downloads.base import (
    DOWNLOADERS,
    MIRROR_ENV,
    Downloader,
    DownloadError,
    Fetcher,
    Source,
    register_downloader,
)
from domainbed.lib.discovery import import_submodules

import_submodules(__name__, __path__, skip=("base",))


def downloadable() -> list[str]:
    """Every dataset name a downloader serves, sorted."""
    return DOWNLOADERS.names()


def get_downloader(dataset: str) -> Downloader:
    """A fresh downloader for ``dataset``; unknown names raise a ``ValueError`` listing them."""
    return DOWNLOADERS.get(dataset)()


__all__ = [
    "DOWNLOADERS",
    "MIRROR_ENV",
    "DownloadError",
    "Downloader",
    "Fetcher",
    "Source",
    "downloadable",
    "get_downloader",
    "register_downloader",
]
