"""MNIST (LeCun et al.) for RotatedMNIST and ColoredMNIST: the four IDX files, decompressed
into ``<data_dir>/MNIST/raw/`` where torchvision's ``MNIST`` (and our loader) reads them.
"""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

from domainbed.datasets.downloads.base import Downloader, DownloadError, Source, register_downloader

# torchvision's first MNIST mirror (the original yann.lecun.com address no longer serves them).
MIRROR = "https://ossci-datasets.s3.amazonaws.com/mnist"
# File name -> IDX magic number (0x803: uint8 3-d images; 0x801: uint8 1-d labels).
FILES = {
    "train-images-idx3-ubyte": 2051,
    "train-labels-idx1-ubyte": 2049,
    "t10k-images-idx3-ubyte": 2051,
    "t10k-labels-idx1-ubyte": 2049,
}


@register_downloader
class MNISTDownload(Downloader):
    DATASETS = ("RotatedMNIST", "ColoredMNIST")
    FOLDER = "MNIST/raw"

    def sources(self) -> list[Source]:
        return [Source(f"{MIRROR}/{name}.gz", f"{name}.gz") for name in FILES]

    def layout(self, files: list[Path], staging: Path) -> Path:
        staging.mkdir(parents=True, exist_ok=True)
        for archive, (name, magic) in zip(files, FILES.items()):
            dest = staging / name
            try:
                with gzip.open(archive) as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out)
            except (OSError, EOFError) as error:
                raise DownloadError(f"{archive.name} is not a valid gzip file ({error}); delete it and retry") from None
            with open(dest, "rb") as f:
                head = f.read(4)
            if len(head) < 4 or struct.unpack(">i", head)[0] != magic:
                raise DownloadError(f"{archive.name} does not hold an MNIST IDX file (magic {head.hex()}, expected {magic:08x})")
        return staging
