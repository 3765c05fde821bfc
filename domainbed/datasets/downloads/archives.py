"""Datasets published as one archive that holds the finished folder: PACS, VLCS, OfficeHome
(the archives DomainBed links), SVIRO and Spawrious. Unpack, check the domain folders,
rename the top folder to the one the loader reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from domainbed.datasets.downloads.base import (
    Downloader,
    DownloadError,
    Source,
    extract,
    google_drive,
    register_downloader,
    require_folders,
)


class SingleArchive(Downloader):
    SOURCE: ClassVar[Source]
    INNER: ClassVar[str]  # the archive's top folder
    DOMAINS: ClassVar[tuple[str, ...]]  # folders it must contain

    def sources(self) -> list[Source]:
        return [self.SOURCE]

    def layout(self, files: list[Path], staging: Path) -> Path:
        extract(files[0], staging)
        inner = staging / self.INNER
        if not inner.is_dir():
            found = sorted(p.name for p in staging.iterdir())
            raise DownloadError(f"{files[0].name} has no top folder {self.INNER}/ (found {found}); is it the right file?")
        require_folders(inner, self.DOMAINS, self.DATASETS[0])
        return inner


@register_downloader
class PACSDownload(SingleArchive):
    DATASETS = ("PACS",)
    FOLDER = "PACS"
    # Li et al., ICCV 2017 (http://www.eecs.qmul.ac.uk/~dl307/project_iccv2017), as DomainBed links it.
    SOURCE = Source(google_drive("1JFr8f805nMUelQWWmfnJR3y4_SYoN5Pd"), "PACS.zip")
    INNER = "kfold"
    DOMAINS = ("art_painting", "cartoon", "photo", "sketch")


@register_downloader
class VLCSDownload(SingleArchive):
    DATASETS = ("VLCS",)
    FOLDER = "VLCS"
    SOURCE = Source(google_drive("1skwblH1_okBwxWxmRsp9_qi15hyPpxg8"), "VLCS.tar.gz")
    INNER = "VLCS"
    DOMAINS = ("Caltech101", "LabelMe", "SUN09", "VOC2007")


@register_downloader
class OfficeHomeDownload(SingleArchive):
    DATASETS = ("OfficeHome",)
    FOLDER = "office_home"
    # Venkateswara et al., CVPR 2017 (http://hemanthdv.org/OfficeHome-Dataset/).
    SOURCE = Source(google_drive("1uY0pj7oFsjMxRwaD3Sxy0jgel0fsYXLC"), "office_home.zip")
    INNER = "OfficeHomeDataset_10072016"
    DOMAINS = ("Art", "Clipart", "Product", "Real World")


@register_downloader
class SVIRODownload(SingleArchive):
    DATASETS = ("SVIRO",)
    FOLDER = "sviro"
    # The grayscale rectangular classification release (https://sviro.kl.dfki.de).
    SOURCE = Source("https://sviro.kl.dfki.de/?wpdmdl=1731", "sviro_grayscale_rectangle_classification.zip")
    INNER = "SVIRO_DOMAINBED"
    DOMAINS = ("aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe")


@register_downloader
class SpawriousDownload(SingleArchive):
    # One archive (224 px, every background and both group folders) serves all six variants.
    DATASETS = (
        "SpawriousO2O_easy", "SpawriousO2O_medium", "SpawriousO2O_hard",
        "SpawriousM2M_easy", "SpawriousM2M_medium", "SpawriousM2M_hard",
    )
    FOLDER = "spawrious224"
    SOURCE = Source("https://www.dropbox.com/s/e40j553480h3f3s/spawrious224.tar.gz?dl=1", "spawrious224.tar.gz")
    INNER = "spawrious224"
    DOMAINS = ("0", "1")
