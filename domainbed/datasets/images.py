"""Image-folder datasets: the generic ``ROOT/<domain>/<class>/<image>`` one and the named
DomainBed benchmarks (VLCS, PACS, OfficeHome, TerraIncognita, DomainNet).

Domains are the sorted sub-folders of the dataset folder; classes are the sorted union of
class sub-folders over all domains, so a label means the same class in every domain even
when a domain lacks a class. A file that cannot be decoded during training is replaced by
another image of the same domain (with a warning) instead of ending a long run.

Importing this module does not import torchvision (about 1.2 s, paid by every job of a
sweep): the per-domain readers, which subclass torchvision's ``ImageFolder``, live in
:mod:`domainbed.datasets._folder_domain` and are imported when a dataset is built.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, ClassVar, Sequence

from domainbed.datasets.base import DatasetError, MultipleDomainDataset, register_dataset
from domainbed.datasets.transforms import eval_transform, train_transform
from domainbed.lib.environments import check_test_envs
from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, pow2_int


def domain_folders(folder: str) -> list[str]:
    """The domains of an image-folder dataset: its sub-folders, sorted, hidden ones left out."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))




class ImageFolderDomains(MultipleDomainDataset):
    """Any folder laid out as ``ROOT/<domain>/<class>/<image>``, one environment per domain.

    ``hparams``: ``image_size`` (default 224) and ``data_augmentation`` (default True; when
    off, training domains use the evaluation transform too). Test domains always use the
    evaluation transform.
    """

    N_STEPS: ClassVar[int] = 5001
    CHECKPOINT_FREQ: ClassVar[int] = 300
    N_WORKERS: ClassVar[int] = 4
    HPARAM_FAMILY: ClassVar[str] = "image"
    # Named datasets: the folder under --data_dir that holds them (None: root is the folder).
    SUBFOLDER: ClassVar[str | None] = None

    def __init__(self, root: str, test_envs: Sequence[int], hparams: dict[str, Any] | None):
        hparams = hparams or {}
        root = os.path.expanduser(os.fspath(root))
        self.root = os.path.join(root, self.SUBFOLDER) if self.SUBFOLDER else root
        self.domain_folders = self._find_domains(self.root)
        self._check_domains(self.domain_folders)
        test_envs = self._check_test_envs(test_envs, len(self.domain_folders))

        self.classes = self._find_class_union(self.root, self.domain_folders)
        self.num_classes = len(self.classes)
        size = int(hparams.get("image_size", 224))
        self.input_shape = (3, size, size)

        from domainbed.datasets._folder_domain import ImageDomain  # torchvision: only when building

        augmented = train_transform(size) if hparams.get("data_augmentation", True) else eval_transform(size)
        plain = eval_transform(size)
        self.datasets: list[Any] = [
            ImageDomain(
                os.path.join(self.root, name), self.classes, transform=plain if i in test_envs else augmented
            )
            for i, name in enumerate(self.domain_folders)
        ]
        self.skipped_files = [path for domain in self.datasets for path in domain.skipped_files]
        if self.skipped_files:
            warnings.warn(
                f"skipped {len(self.skipped_files)} files under {self.root} that are empty (0 bytes) "
                f"or not images (e.g. {self.skipped_files[0]}); see .skipped_files for the full list",
                stacklevel=2,
            )

    @property
    def environments(self) -> list[str]:
        """The domain folder names (named datasets return their short DomainBed names)."""
        return list(self.ENVIRONMENTS) if self.ENVIRONMENTS else list(self.domain_folders)

    def _layout_hint(self) -> str:
        return f"Expected layout: {self.root}/<domain>/<class>/<image>."

    def _find_domains(self, folder: str) -> list[str]:
        if not os.path.isdir(folder):
            raise DatasetError(f"dataset folder {folder} does not exist or is not a directory. {self._layout_hint()}")
        domains = domain_folders(folder)
        if not domains:
            raise DatasetError(f"dataset folder {folder} has no domain sub-folders. {self._layout_hint()}")
        return domains

    def _check_domains(self, domains: list[str]) -> None:
        """Hook for named datasets to validate the domain folders they found."""

    @staticmethod
    def _check_test_envs(test_envs: Sequence[int], n_domains: int) -> set[int]:
        try:
            check_test_envs(test_envs, n_domains, flag="test_envs", for_training=False)
        except UserError as error:
            raise DatasetError(str(error)) from None
        return {int(env) for env in test_envs}

    def _find_class_union(self, folder: str, domains: list[str]) -> list[str]:
        classes: set[str] = set()
        for domain in domains:
            with os.scandir(os.path.join(folder, domain)) as entries:
                classes.update(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
        if not classes:
            raise DatasetError(f"no class sub-folders in any domain of {folder}. {self._layout_hint()}")
        return sorted(classes)


class _NamedImageDataset(ImageFolderDomains):
    """A DomainBed benchmark stored as ``<data_dir>/<SUBFOLDER>``; checks its domain count."""

    def _layout_hint(self) -> str:
        data_dir = os.path.dirname(self.root)
        return (
            f"{super()._layout_hint()} Download it with: python -m domainbed.scripts.download "
            f"--data_dir {data_dir} --dataset {type(self).__name__}"
        )

    def _check_domains(self, domains: list[str]) -> None:
        expected = len(self.ENVIRONMENTS)
        if len(domains) != expected:
            raise DatasetError(
                f"{type(self).__name__} at {self.root} should have {expected} domain folders "
                f"(environments {', '.join(self.ENVIRONMENTS)}) but has {len(domains)}: {', '.join(domains)}. "
                f"{self._layout_hint()}"
            )


@register_dataset
class VLCS(_NamedImageDataset):
    SUBFOLDER = "VLCS"
    ENVIRONMENTS = ["C", "L", "S", "V"]


@register_dataset
class PACS(_NamedImageDataset):
    SUBFOLDER = "PACS"
    ENVIRONMENTS = ["A", "C", "P", "S"]


@register_dataset
class OfficeHome(_NamedImageDataset):
    SUBFOLDER = "office_home"
    ENVIRONMENTS = ["A", "C", "P", "R"]


@register_dataset
class TerraIncognita(_NamedImageDataset):
    SUBFOLDER = "terra_incognita"
    ENVIRONMENTS = ["L100", "L38", "L43", "L46"]


@register_dataset
class DomainNet(_NamedImageDataset):
    SUBFOLDER = "domain_net"
    ENVIRONMENTS = ["clip", "info", "paint", "quick", "real", "sketch"]
    CHECKPOINT_FREQ = 1000
    # DomainBed's default (5,000 steps, counted 0..5,000). SWAD and MIRO train DomainNet for
    # 15,000; that count lives in their protocol, sweeps/swad_miro.json, not here.
    N_STEPS = 5001
    # DomainBed draws DomainNet's batch size from 2**U(3, 5), not 2**U(3, 5.5).
    HPARAMS = {"batch_size": HParam(32, pow2_int(3, 5), "per-domain minibatch size")}
