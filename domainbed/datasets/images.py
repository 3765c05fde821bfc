"""Image-folder datasets: the generic ``ROOT/<domain>/<class>/<image>`` one and the named
DomainBed benchmarks (VLCS, PACS, OfficeHome, TerraIncognita, DomainNet).

Domains are the sorted sub-folders of the dataset folder; classes are the sorted union of
class sub-folders over all domains, so a label means the same class in every domain even
when a domain lacks a class. A file that cannot be decoded during training is replaced by
another image of the same domain (with a warning) instead of ending a long run.
"""

from __future__ import annotations

import numbers
import os
import multiprocessing
import warnings
from typing import Any, Callable, ClassVar, Sequence

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS

from domainbed.datasets.augment_params import sample_generator
from domainbed.datasets.base import DatasetError, MultipleDomainDataset, register_dataset
from domainbed.datasets.transforms import TrainAugment, eval_transform, train_transform

# Stop after this many undecodable files in a row: past that the domain itself is broken
# (wrong format, failed download), and silently cycling through it would hide that.
MAX_CONSECUTIVE_BAD = 100

# Errors PIL raises on broken files: UnidentifiedImageError and "image file is truncated"
# are OSErrors; some plugins raise SyntaxError or ValueError on malformed headers.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# Shared memory, so that DataLoader workers (forked processes) add to the same counter
# the training script reads at the end.
_bad_image_total = multiprocessing.Value("q", 0)


class BadImageWarning(UserWarning):
    """An image could not be decoded and was replaced by another sample of its domain."""


def record_bad_image() -> None:
    """Count one undecodable file (shared with forked DataLoader workers)."""
    with _bad_image_total.get_lock():
        _bad_image_total.value += 1


def bad_image_count() -> int:
    """Undecodable files met so far by every :class:`ImageDomain` of this process and of its
    forked DataLoader workers (a file is counted once per process that meets it)."""
    return int(_bad_image_total.value)


def domain_folders(folder: str) -> list[str]:
    """The domains of an image-folder dataset: its sub-folders, sorted, hidden ones left out."""
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))


def load_rgb(path: str) -> Image.Image:
    """Decode an image file fully (``convert`` forces the decode) as an RGB PIL image."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")


def _is_hidden(path: str, root: str) -> bool:
    rel = os.path.relpath(path, root)
    return any(part.startswith(".") for part in rel.split(os.sep))


class ImageDomain(ImageFolder):
    """One domain: an ``ImageFolder`` over a fixed class list, robust to undecodable files.

    ``classes`` is imposed (not discovered) so that class indices agree across domains;
    class folders missing from this domain simply contribute no samples. Indexing keeps
    non-empty files with an image extension and records the others in ``skipped_files``
    (hidden files and folders are ignored silently).
    """

    def __init__(self, root: str, classes: Sequence[str], transform: Callable | None = None):
        # find_classes() runs inside ImageFolder.__init__, so the class list must exist first.
        self._fixed_classes = list(classes)
        self.skipped_files: list[str] = []
        self.bad_images = 0
        self._bad_indices: set[int] = set()
        super().__init__(
            root, transform=transform, loader=load_rgb, is_valid_file=self._keep_file, allow_empty=True
        )
        if not self.samples:
            raise DatasetError(
                f"domain folder {root} has no images: expected {root}/<class>/<image> with one of "
                f"the extensions {', '.join(IMG_EXTENSIONS)}"
                + (f" ({len(self.skipped_files)} other files were skipped)" if self.skipped_files else "")
            )

    def find_classes(self, directory: str) -> tuple[list[str], dict[str, int]]:
        return list(self._fixed_classes), {name: i for i, name in enumerate(self._fixed_classes)}

    def _keep_file(self, path: str) -> bool:
        if _is_hidden(path, self.root):
            return False
        try:
            empty = os.path.getsize(path) == 0
        except OSError:  # e.g. a dangling symlink: unreadable, so treat it as empty
            empty = True
        if empty or not path.lower().endswith(IMG_EXTENSIONS):
            self.skipped_files.append(path)
            return False
        return True

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        return self.get_seeded(index, None)

    def get_seeded(self, index: int, seed: int | None) -> tuple[Any, Any]:
        """Sample ``index`` with its augmentation drawn from a generator seeded with ``seed``
        (the training loader passes one per sample; ``None``: torch's global generator)."""
        image, target = self.load_with_replacement(index, self.loader)
        if isinstance(self.transform, TrainAugment):
            image = self.transform(image, None if seed is None else sample_generator(seed))
        elif self.transform is not None:
            image = self.transform(image)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return image, target

    def load_with_replacement(self, index: int, read: Callable[[str], Any]) -> tuple[Any, int]:
        """``(read(path), label)`` of sample ``index``; a file ``read`` cannot decode is
        replaced by the next readable one of the domain (wrapping around), with a warning."""
        n = len(self.samples)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for a domain of {n} images")
        index %= n
        last_error: BaseException | None = None
        # Try the requested sample, then the following ones (wrapping around).
        for attempt in range(min(n, MAX_CONSECUTIVE_BAD + 1)):
            i = (index + attempt) % n
            if i in self._bad_indices:
                continue
            path, target = self.samples[i]
            try:
                return read(path), target
            except _DECODE_ERRORS as exc:
                last_error = exc
                self._mark_bad(i, path, exc)
        raise DatasetError(
            f"{min(n, MAX_CONSECUTIVE_BAD + 1)} images in a row failed to decode in domain {self.root} "
            f"(starting at {self.samples[index][0]}); last error: {last_error!r}. "
            "Check that the files are real images, or download the dataset again."
        )

    def _mark_bad(self, index: int, path: str, exc: BaseException) -> None:
        self._bad_indices.add(index)
        self.bad_images += 1
        record_bad_image()
        warnings.warn(
            f"could not decode {path} ({exc!r}); using another image of the same domain instead",
            BadImageWarning,
            stacklevel=2,
        )


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

        augmented = train_transform(size) if hparams.get("data_augmentation", True) else eval_transform(size)
        plain = eval_transform(size)
        self.datasets: list[ImageDomain] = [
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
        bad = [env for env in test_envs if not isinstance(env, numbers.Integral) or not 0 <= env < n_domains]
        if bad:
            raise DatasetError(f"test_envs {bad} out of range: this dataset has {n_domains} domains (0..{n_domains - 1})")
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
