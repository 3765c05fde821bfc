"""WILDS Camelyon17 and FMoW (Koh et al., arXiv 2012.07421): the archives the `wilds`
package downloads, unpacked into ``<data_dir>/<name>_v<version>/`` as that package lays
them out (so both our loader and the package read the result).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from domainbed.datasets.downloads.base import (
    Downloader,
    DownloadError,
    Source,
    extract,
    only_child,
    register_downloader,
)

CODALAB = "https://worksheets.codalab.org/rest/bundles/{}/contents/blob/"


class WILDSArchive(Downloader):
    SOURCE: ClassVar[Source]
    VERSION: ClassVar[str]
    REQUIRED: ClassVar[tuple[str, ...]]  # files the loader needs at the top of the folder

    def sources(self) -> list[Source]:
        return [self.SOURCE]

    def layout(self, files: list[Path], staging: Path) -> Path:
        extract(files[0], staging)
        root = staging
        if not (root / self.REQUIRED[0]).is_file():
            # Some copies wrap everything in one top folder (e.g. camelyon17_v1.0/).
            root = only_child(staging) or staging
        missing = [name for name in self.REQUIRED if not (root / name).is_file()]
        if missing:
            raise DownloadError(f"{files[0].name} lacks {', '.join(missing)}; is it the {self.FOLDER} archive?")
        # The `wilds` package takes this file as the sign of a complete download.
        release = root / f"RELEASE_v{self.VERSION}.txt"
        if not release.exists():
            release.write_text(f"v{self.VERSION}\n")
        return root


@register_downloader
class CamelyonDownload(WILDSArchive):
    DATASETS = ("WILDSCamelyon",)
    VERSION = "1.0"
    FOLDER = "camelyon17_v1.0"
    SOURCE = Source(CODALAB.format("0xe45e15f39fb54e9d9e919556af67aabe"), "camelyon17_v1.0.tar.gz")
    REQUIRED = ("metadata.csv",)


@register_downloader
class FMoWDownload(WILDSArchive):
    DATASETS = ("WILDSFMoW",)
    VERSION = "1.1"
    FOLDER = "fmow_v1.1"
    SOURCE = Source(CODALAB.format("0xaec91eb7c9d548ebb15e1b5e60f966ab"), "fmow_v1.1.tar.gz")
    REQUIRED = ("rgb_metadata.csv", "country_code_mapping.csv")
