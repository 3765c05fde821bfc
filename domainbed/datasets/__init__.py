"""Datasets: a registry of :class:`MultipleDomainDataset` classes, plus any image folder by path.

Importing this package imports every module in this folder, so a new dataset is one new
file with ``@register_dataset``.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

from domainbed.datasets.base import (
    DatasetError,
    MultipleDomainDataset,
    dataset_names,
    get_dataset_class as _registered_class,
    register_dataset,
)
from domainbed.datasets.images import ImageFolderDomains
from domainbed.lib.discovery import import_submodules

import_submodules(__name__, __path__, skip=("base",))


def is_folder_dataset(name: str) -> bool:
    """True when ``name`` is not a registered dataset but an existing directory."""
    return name not in dataset_names() and os.path.isdir(name)


def get_dataset_class(name: str) -> type[MultipleDomainDataset]:
    """The registered class ``name``, or the image-folder dataset when ``name`` is a folder."""
    if is_folder_dataset(name):
        return ImageFolderDomains
    if name not in dataset_names() and (os.sep in name or name.startswith((".", "~"))):
        # A path, not a name: say so rather than listing the registered names.
        raise DatasetError(f"dataset folder {name} does not exist (expected a ROOT/<domain>/<class>/<image> folder)")
    return _registered_class(name)


def num_environments(name: str) -> int:
    if is_folder_dataset(name):
        return len([d for d in os.listdir(name) if os.path.isdir(os.path.join(name, d)) and not d.startswith(".")])
    return len(_registered_class(name).ENVIRONMENTS)


def build_dataset(
    name: str, data_dir: str | None, test_envs: Sequence[int], hparams: Mapping[str, Any]
) -> MultipleDomainDataset:
    """Instantiate a registered dataset, or the generic image-folder dataset for a path."""
    if is_folder_dataset(name):
        return ImageFolderDomains(name, test_envs, dict(hparams))
    return _registered_class(name)(data_dir, test_envs, dict(hparams))


__all__ = [
    "DatasetError",
    "MultipleDomainDataset",
    "build_dataset",
    "dataset_names",
    "get_dataset_class",
    "is_folder_dataset",
    "num_environments",
    "register_dataset",
]
