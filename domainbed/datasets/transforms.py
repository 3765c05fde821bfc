"""Image transforms of the DomainBed protocol (DESIGN.md §6).

Training domains get a light augmentation (random resized crop with scale 0.7–1, flip,
colour jitter, random grayscale); test domains and evaluation are only resized. Both end
with ImageNet normalisation, because every backbone we use was pre-trained on ImageNet.
"""

from __future__ import annotations

from typing import Callable

import torch
from torchvision.transforms import v2

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def _check_size(image_size: int) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0:
        raise ValueError(f"image_size must be a positive integer (pixels), got {image_size!r}")
    return image_size


def _to_normalized_tensor() -> list[Callable]:
    """PIL image -> float tensor in [0, 1] -> ImageNet-normalised plain ``torch.Tensor``."""
    return [
        v2.ToImage(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        # A plain tensor, not a tv_tensors.Image, so nothing downstream sees a subclass.
        v2.ToPureTensor(),
    ]


def train_transform(image_size: int = 224) -> Callable:
    """DomainBed's training augmentation for a PIL RGB image; returns a ``(3, S, S)`` tensor."""
    size = _check_size(image_size)
    return v2.Compose(
        [
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.3),
            v2.RandomGrayscale(p=0.1),
            *_to_normalized_tensor(),
        ]
    )


def eval_transform(image_size: int = 224) -> Callable:
    """Deterministic evaluation transform: resize to ``S x S`` (aspect not kept) and normalise."""
    size = _check_size(image_size)
    return v2.Compose([v2.Resize((size, size), antialias=True), *_to_normalized_tensor()])
