"""The random parameters of DomainBed's training augmentation, drawn in one place.

Both input pipelines call :func:`draw_params`: the CPU path applies the result to one PIL
image in a loader worker (:class:`domainbed.datasets.transforms.TrainAugment`), the device
path to a batch of decoded images on the GPU (:mod:`domainbed.datasets.batched_augment`).
A training sample's parameters come from a ``torch.Generator`` seeded with
:func:`domainbed.lib.seeding.sample_seed` ``(loader seed, step, position in the batch)``, so
they do not depend on which pipeline runs, on the number of loader workers, or on where a
resumed run restarted.

The draws replicate torchvision's v2 transforms call for call (RandomResizedCrop,
RandomHorizontalFlip, ColorJitter, RandomGrayscale, in that order): with the global
generator, :func:`draw_params` consumes the same random numbers and returns the same
values as ``v2.Compose`` of those transforms would use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# The per-sample seed lives in lib (the loaders use it too); re-exported for the pipelines.

# ColorJitter's operations, in torchvision's numbering (the permutation draws these ids).
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


@dataclass(frozen=True)
class AugmentSpec:
    """Ranges of the training augmentation. The defaults are DomainBed's: RandomResizedCrop
    with scale 0.7–1 (aspect 3/4–4/3), flip with p 0.5, ColorJitter(0.3, 0.3, 0.3, 0.3)
    and RandomGrayscale(p=0.1). A jitter range of ``None`` switches that operation off."""

    scale: tuple[float, float] = (0.7, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    brightness: tuple[float, float] | None = (0.7, 1.3)
    contrast: tuple[float, float] | None = (0.7, 1.3)
    saturation: tuple[float, float] | None = (0.7, 1.3)
    hue: tuple[float, float] | None = (-0.3, 0.3)
    grayscale_p: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < min <= max, got {self.ratio}")
        for name in ("flip_p", "grayscale_p"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            r = getattr(self, name)
            if r is not None and not 0 <= r[0] <= r[1]:
                raise ValueError(f"{name} range must satisfy 0 <= min <= max, got {r}")
        if self.hue is not None and not -0.5 <= self.hue[0] <= self.hue[1] <= 0.5:
            raise ValueError(f"hue range must lie in [-0.5, 0.5], got {self.hue}")

    def jitter_range(self, op: int) -> tuple[float, float] | None:
        """The range of jitter operation ``op``; ``None`` when it is off. A range that is a
        single neutral value (1, or 0 for hue) is off too, as in torchvision (no draw)."""
        r = getattr(self, JITTER_OPS[op])
        neutral = 0.0 if op == HUE else 1.0
        return None if r is None or r[0] == r[1] == neutral else (float(r[0]), float(r[1]))


DOMAINBED_AUGMENT = AugmentSpec()


@dataclass(frozen=True)
class AugmentParams:
    """One sample's augmentation: crop box (in pixels of the decoded image), flip, the
    jitter order and factors (``None``: that operation is off), grayscale."""

    top: int
    left: int
    height: int
    width: int
    flip: bool
    order: tuple[int, int, int, int]
    brightness: float | None
    contrast: float | None
    saturation: float | None
    hue: float | None
    grayscale: bool

    def factor(self, op: int) -> float | None:
        return getattr(self, JITTER_OPS[op])


def _uniform(lo: float, hi: float, g: torch.Generator | None) -> float:
    return torch.empty(1).uniform_(lo, hi, generator=g).item()


def _crop_box(height: int, width: int, spec: AugmentSpec, g: torch.Generator | None) -> tuple[int, int, int, int]:
    """RandomResizedCrop's box: ten tries at a random area and aspect ratio, then the
    largest central crop whose aspect ratio lies in the range."""
    area = height * width
    # float32 logs, as torchvision stores them, so the draws match bit for bit.
    log_ratio = torch.log(torch.tensor(spec.ratio))
    for _ in range(10):
        target_area = area * _uniform(spec.scale[0], spec.scale[1], g)
        aspect = torch.exp(torch.empty(1).uniform_(float(log_ratio[0]), float(log_ratio[1]), generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(spec.ratio):
        w, h = width, int(round(width / min(spec.ratio)))
    elif in_ratio > max(spec.ratio):
        h, w = height, int(round(height * max(spec.ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def draw_params(height: int, width: int, spec: AugmentSpec = DOMAINBED_AUGMENT,
                generator: torch.Generator | None = None) -> AugmentParams:
    """Draw one sample's parameters for an image of ``height x width`` pixels.

    ``generator=None`` uses torch's global generator (what the v2 transforms use)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height}x{width}")
    g = generator
    top, left, h, w = _crop_box(height, width, spec, g)
    # RandomHorizontalFlip and RandomGrayscale skip when rand >= p (compared in float32).
    flip = not bool(torch.rand(1, generator=g) >= spec.flip_p)
    order = tuple(int(i) for i in torch.randperm(4, generator=g))
    factors = [None if (r := spec.jitter_range(op)) is None else _uniform(r[0], r[1], g) for op in range(4)]
    grayscale = not bool(torch.rand(1, generator=g) >= spec.grayscale_p)
    return AugmentParams(top, left, h, w, flip, order, *factors, grayscale)  # type: ignore[arg-type]
