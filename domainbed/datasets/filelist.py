"""A domain given as an explicit list of ``(image path, label)`` pairs.

Datasets whose domains are not one ``<domain>/<class>/<image>`` folder each (Spawrious mixes
several locations per domain, WILDS lists its images in a metadata table) build their
domains with :class:`FileListDomain`. It inherits the robustness of :class:`ImageDomain`: a
file that fails to decode is replaced by the next image of the same domain, with a warning.
"""

from __future__ import annotations

from typing import Callable, Sequence

from torchvision.datasets.vision import VisionDataset

from domainbed.datasets.base import DatasetError
from domainbed.datasets.images import ImageDomain, load_rgb


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
