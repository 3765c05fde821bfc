"""The dataset interface and its registry (docs/design.md).

A dataset is a :class:`MultipleDomainDataset`: an ordered list of per-domain torch
``Dataset`` objects that each yield ``(x, y)``. Register a new one with
``@register_dataset`` and it is available to ``train``, ``sweep`` and the tests.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, TypeVar

import torch
from torch.utils.data import Dataset

from domainbed.lib.errors import UserError
from domainbed.lib.registry import Registry

T = TypeVar("T", bound=type)


class DatasetError(UserError):
    """A dataset cannot be loaded; the message says which path and how to fix it."""


class MultipleDomainDataset:
    """A list of domains (environments), each a torch ``Dataset`` of ``(x, y)`` pairs.

    Class attributes follow DomainBed: ``ENVIRONMENTS`` (short domain names),
    ``N_STEPS`` (default training steps), ``CHECKPOINT_FREQ`` (steps between
    evaluations), ``N_WORKERS`` (loader workers). Instances set ``input_shape``,
    ``num_classes`` and ``datasets`` (one per environment).
    """

    ENVIRONMENTS: ClassVar[list[str]] = []
    N_STEPS: ClassVar[int] = 5001
    CHECKPOINT_FREQ: ClassVar[int] = 100
    N_WORKERS: ClassVar[int] = 2
    # Default hparams that depend on the dataset family ("small" = MNIST-size images).
    HPARAM_FAMILY: ClassVar[str] = "image"

    input_shape: tuple[int, ...]
    num_classes: int
    datasets: list[Dataset]

    def __getitem__(self, index: int) -> Dataset:
        return self.datasets[index]

    def __len__(self) -> int:
        return len(self.datasets)

    @property
    def environments(self) -> list[str]:
        """Domain names of this instance (may differ from the class list for folders)."""
        return list(self.ENVIRONMENTS)


_DATASETS: Registry[type] = Registry("dataset")


def register_dataset(cls: T) -> T:
    """Class decorator: make a dataset available under its class name."""
    return _DATASETS.register()(cls)


def dataset_names() -> list[str]:
    """Names of every registered dataset, sorted."""
    return _DATASETS.names()


def registered_dataset_class(name: str) -> type[MultipleDomainDataset]:
    """The registered class called ``name``; the error lists the valid names.

    Callers use :func:`domainbed.datasets.get_dataset_class`, which also accepts a folder.
    """
    try:
        return _DATASETS.get(name)
    except ValueError as e:
        raise DatasetError(
            f"{e}. Any folder laid out as ROOT/<domain>/<class>/<image> also works: pass its path as --dataset."
        ) from None


class TensorDomain(Dataset):
    """A domain held as in-memory tensors, with an optional per-sample transform."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable[[Any], Any] | None = None):
        if len(x) != len(y):
            raise ValueError("x and y must have the same length")
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.y[i]
