"""DomainBed's augmentation applied to a batch of decoded images on any device.

The parameters are drawn per sample on the CPU by
:func:`domainbed.datasets.augment_params.draw_params` (the draw the CPU path makes), then
applied here with a few batched kernels instead of one PIL call per image per operation:

- crop + resize: per image (the crop boxes differ in size), on uint8 pixels with
  antialiased bilinear interpolation, rounded to uint8 as PIL's resize is;
- flip, the four ColorJitter operations in each sample's own order, grayscale: on the
  float batch, each operation on the rows that take it at that position;
- ImageNet normalisation with the same torchvision kernel as the CPU path.

The colour operations follow torchvision's formulas for float tensors (brightness, contrast
and saturation blend with black, the mean grey level and the grey image; hue rotates the
HSV hue). The CPU path runs them on PIL images in 8-bit steps, so the two paths agree to
a few grey levels, not bit for bit (tests/test_device_pipeline.py measures how closely).
"""

from __future__ import annotations

from typing import Sequence

import torch

from domainbed.datasets.augment_params import BRIGHTNESS, CONTRAST, HUE, SATURATION, AugmentParams
from domainbed.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

# ITU-R 601-2 luma weights, as torchvision's rgb_to_grayscale uses them for tensors.
_LUMA = (0.2989, 0.587, 0.114)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` float -> ``(B, 1, H, W)`` luma."""
    r, g, b = x.unbind(dim=1)
    return (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * x + (1 - factor) * other``, clamped to [0, 1]; ``factor`` per row."""
    f = factor.view(-1, 1, 1, 1)
    return (x * f + other * (1.0 - f)).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * factor.view(-1, 1, 1, 1)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of each row by ``shift`` (a fraction of the circle).

    Value (the max channel) and chroma (max - min) are unchanged by a hue rotation, so the
    result is rebuilt from them: channel ``c`` of hue ``h`` is
    ``v - chroma * clamp(min(k, 4 - k), 0, 1)`` with ``k = (n_c + 6 h) mod 6`` and
    ``n = 5, 3, 1`` for R, G, B (the piecewise-linear HSV to RGB map)."""
    r, g, b = x.unbind(dim=1)
    v, _ = x.max(dim=1)
    chroma = v - x.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    # Hue in sixths of the circle, from the channel that holds the maximum.
    h = torch.where(
        v == r, torch.remainder((g - b) / safe, 6.0),
        torch.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    h = torch.remainder(h + 6.0 * shift.view(-1, 1, 1), 6.0)
    n = torch.tensor([5.0, 3.0, 1.0], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    k = torch.remainder(n + h.unsqueeze(1), 6.0)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return (v.unsqueeze(1) - chroma.unsqueeze(1) * ramp).clamp_(0.0, 1.0)


_OPS = {BRIGHTNESS: adjust_brightness, CONTRAST: adjust_contrast, SATURATION: adjust_saturation, HUE: adjust_hue}


def _apply_rows(x: torch.Tensor, rows: list[int], fn, *args: torch.Tensor) -> torch.Tensor:
    """``fn`` on the rows ``rows`` of ``x`` (all of them without a gather when it is every row)."""
    if len(rows) == len(x):
        return fn(x, *args)
    idx = torch.tensor(rows).to(x.device, non_blocking=True)
    x[idx] = fn(x[idx], *args)
    return x


def color_jitter(x: torch.Tensor, params: Sequence[AugmentParams]) -> torch.Tensor:
    """ColorJitter with each row's own order and factors (float ``(B, 3, H, W)`` in [0, 1])."""
    for position in range(4):
        for op, fn in _OPS.items():
            rows = [i for i, p in enumerate(params) if p.order[position] == op and p.factor(op) is not None]
            if rows:
                factors = torch.tensor([params[i].factor(op) for i in rows], dtype=x.dtype).to(x.device, non_blocking=True)
                x = _apply_rows(x, rows, fn, factors)
    return x


def crop_resize(images: Sequence[torch.Tensor], params: Sequence[AugmentParams] | None, size: int) -> torch.Tensor:
    """Crop each uint8 ``(3, H, W)`` image to its box (the whole image when ``params`` is
    None) and resize it to ``size x size``; returns a uint8 ``(B, 3, size, size)`` batch."""
    from torchvision.transforms.v2 import functional as F

    out = []
    for i, image in enumerate(images):
        if params is not None:
            p = params[i]
            image = image[:, p.top:p.top + p.height, p.left:p.left + p.width]
        out.append(F.resize(image, [size, size], antialias=True))
    return torch.stack(out)


def normalize(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 -> float in [0, 1] -> ImageNet-normalised, with the CPU path's kernels."""
    from torchvision.transforms.v2 import functional as F

    return F.normalize(F.to_dtype(x_uint8, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


def augment_batch(images: Sequence[torch.Tensor], params: Sequence[AugmentParams] | None, size: int) -> torch.Tensor:
    """The training augmentation (``params``) or, when ``params`` is None, the evaluation
    transform (resize only) of decoded uint8 images; returns a normalised float batch."""
    from torchvision.transforms.v2 import functional as F

    x = crop_resize(images, params, size)
    if params is None:
        return normalize(x)
    x = F.to_dtype(x, torch.float32, scale=True)
    flips = [i for i, p in enumerate(params) if p.flip]
    if flips:
        x = _apply_rows(x, flips, lambda t: t.flip(-1))
    x = color_jitter(x, params)
    grays = [i for i, p in enumerate(params) if p.grayscale]
    if grays:
        x = _apply_rows(x, grays, lambda t: grayscale(t).expand(-1, 3, -1, -1))
    return F.normalize(x, list(IMAGENET_MEAN), list(IMAGENET_STD))
