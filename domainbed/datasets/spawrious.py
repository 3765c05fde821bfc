"""Spawrious (Lynch et al., arXiv 2303.05470): dog breeds photographed on backgrounds that are
spuriously correlated with the breed, in DomainBed's six variants.

Layout: ``<data_dir>/spawrious224/<folder>/<location>/<breed>/<image>`` with folders ``0`` and
``1`` (the archive's own layout; ``python -m domainbed.scripts.download --dataset
SpawriousO2O_easy`` fetches it). DomainBed reads the ``spawrious224`` folder itself as its
data dir; a ``--data_dir`` that directly holds ``0/`` is accepted too.

Environments, as in DomainBed: 0 ``Test`` (the test backgrounds, both groups), 1
``SC_group_1`` and 2 ``SC_group_2`` (the two training groups); train with ``--test_envs 0``.

* One-to-one (O2O): each breed sits on one background in both training groups, for 97% and
  87% of its 3,168 images (group folders ``0`` and ``1``); a filler background supplies the
  rest, shared by all breeds.
* Many-to-many (M2M): two breeds share two backgrounds, swapped between the groups, all from
  folder ``0``.

Two deliberate differences from DomainBed: the images of a folder are taken in sorted order
(DomainBed takes ``os.listdir`` order, which depends on the file system), so the per-class
caps select the same files on every machine; and a decode failure is replaced by the next
image of the domain, as for every image dataset here.
"""

from __future__ import annotations

import os
from typing import Any, Callable, ClassVar, Mapping, Sequence

from domainbed.datasets.base import DatasetError, MultipleDomainDataset, register_dataset
from domainbed.datasets.transforms import eval_transform

BREEDS = ("bulldog", "corgi", "dachshund", "labrador")  # label = index here
# DomainBed lists the breed groups in this order; it fixes the order of images in a domain.
GROUP_ORDER = ("bulldog", "dachshund", "labrador", "corgi")
IMAGES_PER_BREED = 3168
EXTENSIONS = (".png", ".jpg", ".jpeg")


def spawrious_train_transform(size: int) -> Callable:
    """Spawrious's training augmentation: resize, flip, colour jitter, grayscale; no random
    crop, which could cut the dog out of the frame."""
    from torchvision.transforms import v2  # imported when a dataset is built, not at discovery
    return v2.Compose(
        [
            v2.Resize((size, size), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.3),
            v2.RandomGrayscale(p=0.1),
            eval_transform(size),
        ]
    )


# A part of a domain: every breed in ``breeds``, from ``<folder>/<location>/<breed>``, at most
# ``limit`` images per breed (None: all).
Part = tuple[Sequence[str], int, str, "int | None"]


class _Spawrious(MultipleDomainDataset):
    ENVIRONMENTS = ["Test", "SC_group_1", "SC_group_2"]
    CHECKPOINT_FREQ = 100  # DomainBed keeps the base class's values for Spawrious
    N_STEPS = 5001
    N_WORKERS = 4
    HPARAM_FAMILY = "image"
    SUBFOLDER = "spawrious224"
    # Per variant: the background of each breed in GROUP_ORDER, the test background of each
    # breed in GROUP_ORDER, and (O2O only) the filler background.
    GROUPS: ClassVar[tuple[str, str, str, str]]
    TESTS: ClassVar[tuple[str, str, str, str]]
    FILLER: ClassVar[str | None] = None
    TOTAL: ClassVar[int] = IMAGES_PER_BREED  # a class attribute so tests can shrink it

    def __init__(self, root: str | None, test_envs: Sequence[int], hparams: Mapping[str, Any]):
        self.root = self.find_root(root)
        size = int(hparams.get("image_size", 224))
        self.input_shape = (3, size, size)
        self.num_classes = len(BREEDS)
        augment = hparams.get("data_augmentation", True)
        plain = eval_transform(size)
        train = spawrious_train_transform(size) if augment else plain
        # DomainBed gives the test domain the plain transform and the two groups the augmented one.
        from domainbed.datasets._folder_domain import FileListDomain  # torchvision: only when building

        parts = [self.test_parts(), self.train_parts(0), self.train_parts(1)]
        self.datasets = [
            FileListDomain(
                os.path.join(self.root, name), self.samples(env_parts), BREEDS,
                transform=plain if (i == 0 or i in test_envs) else train,
            )
            for i, (name, env_parts) in enumerate(zip(self.ENVIRONMENTS, parts))
        ]

    @classmethod
    def find_root(cls, data_dir: str | None) -> str:
        data_dir = os.path.expanduser(os.fspath(data_dir or "."))
        for candidate in (os.path.join(data_dir, cls.SUBFOLDER), data_dir):
            if os.path.isdir(os.path.join(candidate, "0")):
                return candidate
        raise DatasetError(
            f"{cls.__name__}: no Spawrious images under {os.path.join(data_dir, cls.SUBFOLDER)} "
            f"(expected {cls.SUBFOLDER}/0/<location>/<breed>/<image>). Download it with: "
            f"python -m domainbed.scripts.download --data_dir {data_dir} --dataset {cls.__name__}"
        )

    def train_parts(self, group: int) -> list[Part]:
        raise NotImplementedError

    def test_parts(self) -> list[Part]:
        raise NotImplementedError

    def samples(self, parts: list[Part]) -> list[tuple[str, int]]:
        out = []
        for breeds, folder, location, limit in parts:
            for breed in breeds:
                path = os.path.join(self.root, str(folder), location, breed)
                if not os.path.isdir(path):
                    raise DatasetError(
                        f"{type(self).__name__}: missing folder {path}; the Spawrious download is incomplete. "
                        f"Download it again with: python -m domainbed.scripts.download --dataset {type(self).__name__}"
                    )
                names = sorted(n for n in os.listdir(path) if n.endswith(EXTENSIONS))
                out += [(os.path.join(path, n), BREEDS.index(breed)) for n in names[:limit]]
        return out


class _OneToOne(_Spawrious):
    def train_parts(self, group: int) -> list[Part]:
        # Group folder 0 keeps 97% of a breed's images on its background, folder 1 87%.
        correlated = int((0.97, 0.87)[group] * self.TOTAL)
        parts: list[Part] = [((breed,), group, loc, correlated) for breed, loc in zip(GROUP_ORDER, self.GROUPS)]
        assert self.FILLER is not None
        return parts + [(GROUP_ORDER, group, self.FILLER, self.TOTAL - correlated)]

    def test_parts(self) -> list[Part]:
        return [((breed,), group, loc, None) for group in (0, 1) for breed, loc in zip(GROUP_ORDER, self.TESTS)]


class _ManyToMany(_Spawrious):
    # Breed i's background in group 1 is the one of breed SWAP[i] in group 0.
    SWAP = (1, 0, 3, 2)

    def train_parts(self, group: int) -> list[Part]:
        locs = self.GROUPS if group == 0 else tuple(self.GROUPS[j] for j in self.SWAP)
        return [((breed,), 0, loc, self.TOTAL) for breed, loc in zip(GROUP_ORDER, locs)]

    def test_parts(self) -> list[Part]:
        swapped = tuple(self.TESTS[j] for j in self.SWAP)
        return [((breed,), 0, loc, None) for locs in (self.TESTS, swapped) for breed, loc in zip(GROUP_ORDER, locs)]


@register_dataset
class SpawriousO2O_easy(_OneToOne):
    GROUPS = ("desert", "jungle", "dirt", "snow")
    TESTS = ("dirt", "snow", "desert", "jungle")
    FILLER = "beach"


@register_dataset
class SpawriousO2O_medium(_OneToOne):
    GROUPS = ("mountain", "beach", "dirt", "jungle")
    TESTS = ("jungle", "dirt", "beach", "snow")
    FILLER = "desert"


@register_dataset
class SpawriousO2O_hard(_OneToOne):
    GROUPS = ("jungle", "mountain", "snow", "desert")
    TESTS = ("mountain", "snow", "desert", "jungle")
    FILLER = "beach"


@register_dataset
class SpawriousM2M_easy(_ManyToMany):
    GROUPS = ("desert", "mountain", "dirt", "jungle")
    TESTS = ("dirt", "jungle", "mountain", "desert")


@register_dataset
class SpawriousM2M_medium(_ManyToMany):
    GROUPS = ("beach", "snow", "mountain", "desert")
    TESTS = ("desert", "mountain", "beach", "snow")


@register_dataset
class SpawriousM2M_hard(_ManyToMany):
    GROUPS = ("dirt", "jungle", "snow", "beach")
    TESTS = ("snow", "beach", "dirt", "jungle")
