"""Per-domain image readers (torchvision ``ImageFolder`` subclasses), robust to bad files.

:class:`ImageDomain` reads one ``<domain>/<class>/<image>`` folder over a class list fixed
by the dataset, so that a label means the same class in every domain. :class:`FileListDomain`
reads a domain given as an explicit list of ``(image path, label)`` pairs, for datasets
whose domains are not one folder each (Spawrious mixes several locations per domain, WILDS
lists its images in a metadata table). Both replace a file that fails to decode by the
next image of the same domain, with a warning.

The leading underscore keeps this module out of the dataset auto-discovery: it imports
torchvision, which the dataset classes import only when they build their domains.
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Callable, Sequence

from PIL import Image
from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS
from torchvision.datasets.vision import VisionDataset

from domainbed.datasets.bad_images import BadImageWarning, load_rgb, record_bad_image
from domainbed.datasets.base import DatasetError
from domainbed.datasets.transforms import TrainAugment
from domainbed.lib.seeding import sample_generator

__all__ = ["IMG_EXTENSIONS", "FileListDomain", "ImageDomain"]

# Stop after this many undecodable files in a row: past that the domain itself is broken
# (wrong format, failed download), and silently cycling through it would hide that.
MAX_CONSECUTIVE_BAD = 100

# Errors PIL raises on broken files: UnidentifiedImageError and "image file is truncated"
# are OSErrors; some plugins raise SyntaxError or ValueError on malformed headers.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


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


class FileListDomain(ImageDomain):
    """One domain over ``samples`` (``(path, label)`` pairs, in the order given).

    ``classes`` names the labels (``classes[label]``); ``targets`` lists the labels, so
    class-balanced sampling reads them without decoding an image.
    """

    def __init__(
        self,
        root: str,
        samples: Sequence[tuple[str, int]],
        classes: Sequence[str],
        transform: Callable | None = None,
    ):
        # ImageFolder.__init__ would walk ``root`` for class folders; the list is given instead,
        # so only the VisionDataset part (root, transforms) is initialised.
        VisionDataset.__init__(self, root, transform=transform)
        self.classes = list(classes)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        self.samples = [(str(path), int(label)) for path, label in samples]
        self.imgs = self.samples
        self.targets = [label for _, label in self.samples]
        self.loader = load_rgb
        self.extensions = None
        self.skipped_files: list[str] = []
        self.bad_images = 0
        self._bad_indices: set[int] = set()
        if not self.samples:
            raise DatasetError(f"domain {root} has no images")
        bad = sorted({label for label in self.targets if not 0 <= label < len(self.classes)})
        if bad:
            raise DatasetError(f"domain {root} has labels {bad} outside 0..{len(self.classes) - 1}")
