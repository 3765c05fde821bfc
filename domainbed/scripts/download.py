"""Fetch datasets and pretrained weights on a machine that has internet access.

Training never downloads: it reads ``--data_dir`` and the weight caches. This script is the
one place that touches the network, and only when asked. Run it on a connected machine,
then copy ``--data_dir`` (and the torch hub cache) to the cluster.

    python -m domainbed.scripts.download --data_dir DATA --dataset PACS VLCS OfficeHome
    python -m domainbed.scripts.download --data_dir DATA --dataset all --dry_run
    python -m domainbed.scripts.download --data_dir DATA --dataset DomainNet --archive_dir ~/Downloads
    python -m domainbed.scripts.download --weights resnet50

Each dataset lands in the folder its loader reads (PACS/, VLCS/, office_home/,
terra_incognita/, domain_net/, sviro/, spawrious224/, camelyon17_v1.0/, fmow_v1.1/,
MNIST/raw/); a folder that already exists is left alone. ``--mirror URL`` (or
$DOMAINBED_DOWNLOAD_MIRROR) fetches every file as URL/<file name> instead of from its
published address; ``--archive_dir DIR`` uses files already there under those names.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from domainbed.datasets.downloads import MIRROR_ENV, DownloadError, Fetcher, downloadable, get_downloader
from domainbed.networks.weights import TORCHVISION_FILES, TORCHVISION_URLS

# Datasets that exist without a download.
NO_DOWNLOAD = {
    "RotatedMNISTSubset": "bundled with pip install 'domainbed[assets]'",
    "ColoredMNISTSubset": "bundled with pip install 'domainbed[assets]'",
    "Debug28": "generated",
    "Debug224": "generated",
}


def expand(names: Sequence[str]) -> list[str]:
    """``all`` stands for every downloadable dataset; order kept, duplicates dropped."""
    out: list[str] = []
    for name in names:
        for item in downloadable() if name == "all" else [name]:
            if item not in out:
                out.append(item)
    return out


def check_name(dataset: str) -> None:
    if dataset not in NO_DOWNLOAD and dataset not in downloadable():
        raise ValueError(
            f"unknown dataset {dataset!r}; downloadable: {', '.join(downloadable())} (or all); "
            f"no download needed: {', '.join(NO_DOWNLOAD)}"
        )


def plan(dataset: str, data_dir: Path, fetcher: Fetcher | None = None) -> list[str]:
    """One line per file to fetch, ``address -> dataset folder``; raises for unknown names."""
    check_name(dataset)
    if dataset in NO_DOWNLOAD:
        return []
    return get_downloader(dataset).plan(Path(data_dir), fetcher or Fetcher())


def fetch_datasets(names: Sequence[str], data_dir: Path, fetcher: Fetcher, dry_run: bool = False) -> list[Path]:
    """Download and lay out each dataset once (RotatedMNIST and ColoredMNIST share MNIST)."""
    done: set[type] = set()
    folders = []
    for name in expand(names):
        check_name(name)
        if name in NO_DOWNLOAD:
            print(f"nothing to fetch: {name} needs no download ({NO_DOWNLOAD[name]})")
            continue
        downloader = get_downloader(name)
        if type(downloader) in done:
            continue
        done.add(type(downloader))
        if dry_run:
            for step in downloader.plan(Path(data_dir), fetcher):
                print(f"would fetch: {step}")
        else:
            folders.append(downloader.run(Path(data_dir), fetcher))
    return folders


def fetch_weights(name: str) -> Path:
    import torch

    if name not in TORCHVISION_URLS:
        raise ValueError(f"--weights knows {', '.join(TORCHVISION_URLS)}; for timm models fill the Hugging Face cache")
    target = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[name][0]
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(TORCHVISION_URLS[name], str(target))
    return target


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.download", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", type=Path, default=Path("./domainbed/data/"))
    p.add_argument("--dataset", nargs="*", default=[], help="dataset names, or all")
    p.add_argument("--weights", nargs="*", default=[], help="resnet18 / resnet50 (torchvision IMAGENET1K_V1)")
    p.add_argument("--dry_run", action="store_true", help="print what would be fetched, fetch nothing")
    p.add_argument("--mirror", default=os.environ.get(MIRROR_ENV) or None,
                   help=f"fetch every file as MIRROR/<file name> (default: ${MIRROR_ENV}, else the published addresses)")
    p.add_argument("--archive_dir", type=Path, default=None,
                   help="a folder of files already fetched by hand, under the names the dry run shows")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    p = build_parser()
    args = p.parse_args(argv)
    if not args.dataset and not args.weights:
        p.error("name at least one --dataset (or all) or --weights")
    if args.archive_dir is not None and not args.archive_dir.is_dir():
        p.error(f"--archive_dir {args.archive_dir} is not a folder")
    fetcher = Fetcher(mirror=args.mirror, archive_dir=args.archive_dir)
    try:
        fetch_datasets(args.dataset, args.data_dir, fetcher, args.dry_run)
        for name in args.weights:
            if args.dry_run:
                print(f"would fetch: {TORCHVISION_URLS.get(name, name)}")
            else:
                print(f"saved {fetch_weights(name)}")
    except (ValueError, DownloadError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
