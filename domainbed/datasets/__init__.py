"""Datasets: a registry of :class:`MultipleDomainDataset` classes, plus any image folder by path.

Importing this package imports every module in this folder, so a new dataset is one new
file with ``@register_dataset``.

Who uses it: training (a run's data), sweep (domains and test-env sets), results (domain names in tables) and inference.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

from domainbed.datasets.base import (
    DatasetError,
    MultipleDomainDataset,
    dataset_names,
    register_dataset,
    registered_dataset_class,
)
from domainbed.datasets.images import ImageFolderDomains, domain_folders
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
    return registered_dataset_class(name)


def environment_names(name: str) -> list[str]:
    """Domain names of dataset ``name``: the registered class's ``ENVIRONMENTS``, or a
    folder dataset's domain sub-folders in the order it loads them."""
    if is_folder_dataset(name):
        return domain_folders(name)
    return list(get_dataset_class(name).ENVIRONMENTS)


def known_environment_names(names: Iterable[str]) -> dict[str, list[str]]:
    """:func:`environment_names` of each dataset in ``names`` that is registered or an
    existing folder; others (records of an older or foreign sweep) are left out."""
    out = {}
    for name in names:
        try:
            out[name] = environment_names(name)
        except DatasetError:
            continue
    return out


def num_environments(name: str) -> int:
    return len(environment_names(name))


def build_dataset(
    name: str, data_dir: str | None, test_envs: Sequence[int], hparams: Mapping[str, Any]
) -> MultipleDomainDataset:
    """Instantiate a registered dataset, or the generic image-folder dataset for a path."""
    if is_folder_dataset(name):
        return ImageFolderDomains(name, test_envs, dict(hparams))
    return registered_dataset_class(name)(data_dir, test_envs, dict(hparams))


def __getattr__(name: str) -> list[str]:
    """``DATASETS``: DomainBed's list of dataset names, read from the registry when asked."""
    if name == "DATASETS":
        return dataset_names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "DatasetError",
    "MultipleDomainDataset",
    "build_dataset",
    "dataset_names",
    "environment_names",
    "get_dataset_class",
    "is_folder_dataset",
    "known_environment_names",
    "num_environments",
    "register_dataset",
]
