"""Image transforms of the DomainBed protocol.

Training domains get a light augmentation (random resized crop with scale 0.7–1, flip,
colour jitter, random grayscale); test domains and evaluation are only resized. Both end
with ImageNet normalisation, because every backbone we use was pre-trained on ImageNet.

The training augmentation draws its random parameters with
:func:`domainbed.datasets.augment_params.draw_params`, the function the device pipeline
uses too, and applies them here to one image (the CPU path, the reference).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch

from domainbed.datasets.augment_params import (
    BRIGHTNESS,
    CONTRAST,
    DOMAINBED_AUGMENT,
    HUE,
    SATURATION,
    AugmentParams,
    AugmentSpec,
    draw_params,
)
from domainbed.lib.errors import UserError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise UserError(f"image_size must be a positive integer (pixels), got {image_size!r}")
    return image_size


def _to_normalized_tensor() -> list[Callable]:
    """PIL image -> float tensor in [0, 1] -> ImageNet-normalised plain ``torch.Tensor``."""
    from torchvision.transforms import v2

    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        # A plain tensor, not a tv_tensors.Image, so nothing downstream sees a subclass.
        v2.ToPureTensor(),
    ]


@functools.cache
def _jitter_kernels() -> dict[int, Callable]:
    """torchvision's colour kernels by operation id (looked up once, on first use)."""
    from torchvision.transforms.v2 import functional as F

    return {
        BRIGHTNESS: F.adjust_brightness,
        CONTRAST: F.adjust_contrast,
        SATURATION: F.adjust_saturation,
        HUE: F.adjust_hue,
    }


class TrainAugment:
    """DomainBed's training augmentation of one PIL RGB image (or ``(3, H, W)`` uint8
    tensor) into a normalised ``(3, S, S)`` float tensor.

    ``augment(image, generator)`` draws the parameters from ``generator`` (the training
    loader passes one seeded per sample); ``augment(image)`` uses torch's global generator,
    and then returns exactly what ``v2.Compose(augment.transforms)`` returns from the same
    generator state: :attr:`transforms` are the torchvision transforms this is equivalent
    to, kept for inspection and as the reference the tests compare with.
    """

    def __init__(self, image_size: int = 224, spec: AugmentSpec = DOMAINBED_AUGMENT):
        self.size = _check_size(image_size)
        self.spec = spec

    @property
    def transforms(self) -> list[Callable]:
        from torchvision.transforms import v2

        s = self.spec
        jitter = {name: getattr(s, name) for name in ("brightness", "contrast", "saturation", "hue")}
        return [
            v2.RandomResizedCrop(self.size, scale=s.scale, ratio=s.ratio, antialias=True),
            v2.RandomHorizontalFlip(p=s.flip_p),
            v2.ColorJitter(**{k: v for k, v in jitter.items() if v is not None}),
            v2.RandomGrayscale(p=s.grayscale_p),
            *_to_normalized_tensor(),
        ]

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        height, width = F.get_size(image)
        return self.apply(image, draw_params(height, width, self.spec, generator))

    def apply(self, image: Any, p: AugmentParams) -> torch.Tensor:
        """Apply drawn parameters: the operations and argument values of the v2 transforms."""
        from torchvision.transforms.v2 import functional as F

        image = F.resized_crop(image, p.top, p.left, p.height, p.width, [self.size, self.size], antialias=True)
        if p.flip:
            image = F.horizontal_flip(image)
        for op in p.order:
            factor = p.factor(op)
            if factor is not None:
                image = _jitter_kernels()[op](image, factor)
        if p.grayscale:
            image = F.rgb_to_grayscale(image, num_output_channels=3)
        return to_normalized_tensor(image)

    def __repr__(self) -> str:
        return f"TrainAugment(image_size={self.size}, spec={self.spec})"


@functools.cache
def _normalize() -> Callable:
    from torchvision.transforms import v2

    return v2.Compose(_to_normalized_tensor())


def to_normalized_tensor(image: Any) -> torch.Tensor:
    """PIL image or uint8 tensor -> ImageNet-normalised float ``torch.Tensor``."""
    return _normalize()(image)


def train_transform(image_size: int = 224) -> TrainAugment:
    """DomainBed's training augmentation for a PIL RGB image; returns a ``(3, S, S)`` tensor."""
    return TrainAugment(image_size)


def eval_transform(image_size: int = 224) -> Callable:
    """Deterministic evaluation transform: resize to ``S x S`` (aspect not kept) and normalise."""
    from torchvision.transforms import v2

    size = _check_size(image_size)
    return v2.Compose([v2.Resize((size, size), antialias=True), *_to_normalized_tensor()])
