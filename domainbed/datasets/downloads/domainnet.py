"""DomainNet (Peng et al., ICCV 2019, http://ai.bu.edu/M3SDA/): six zips, one per domain, then
DomainBed's duplicate removal (the images listed in DomainBed's
``domainbed/misc/domain_net_duplicates.txt``, fetched alongside the zips).
"""

from __future__ import annotations

from pathlib import Path

from domainbed.datasets.downloads.base import (
    Downloader,
    DownloadError,
    Source,
    extract,
    register_downloader,
    require_folders,
)

BASE = "http://csr.bu.edu/ftp/visda/2019/multi-source"
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
# DomainBed takes clipart and painting from groundtruth/, the releases with corrected labels.
CLEANED = ("clipart", "painting")
DUPLICATES = Source(
    "https://raw.githubusercontent.com/facebookresearch/DomainBed/main/domainbed/misc/domain_net_duplicates.txt",
    "domain_net_duplicates.txt",
)


def remove_listed(root: Path, listing: Path) -> tuple[int, int]:
    """Delete the files listed (one path relative to ``root`` a line) that exist under ``root``.

    Returns ``(removed, absent)``. A line that points outside ``root`` is an error: the list
    comes from the network, and it must not delete anything else.
    """
    removed = absent = 0
    base = root.resolve()
    for line in listing.read_text().splitlines():
        rel = line.strip()
        if not rel:
            continue
        path = (root / rel).resolve()
        if not path.is_relative_to(base) or path == base:
            raise DownloadError(f"{listing} lists {rel!r}, which is outside {root}; not deleting anything more")
        if path.is_file():
            path.unlink()
            removed += 1
        else:
            absent += 1
    return removed, absent


@register_downloader
class DomainNetDownload(Downloader):
    DATASETS = ("DomainNet",)
    FOLDER = "domain_net"

    def sources(self) -> list[Source]:
        zips = [
            Source(f"{BASE}/groundtruth/{d}.zip" if d in CLEANED else f"{BASE}/{d}.zip", f"{d}.zip") for d in DOMAINS
        ]
        return zips + [DUPLICATES]

    def layout(self, files: list[Path], staging: Path) -> Path:
        *zips, listing = files
        for archive in zips:
            extract(archive, staging)
        require_folders(staging, DOMAINS, "DomainNet")
        removed, absent = remove_listed(staging, listing)
        print(f"DomainNet: removed {removed} duplicate images listed by DomainBed ({absent} listed files were absent)")
        return staging
