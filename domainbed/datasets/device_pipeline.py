"""The device input pipeline: JPEGs decoded and augmented on the training device.

Loader workers only read each file and its header, and draw the sample's augmentation
parameters (:func:`domainbed.datasets.augment_params.draw_params`, seeded by
``(loader seed, step, position)`` exactly as the CPU path is). The main process then
decodes a domain's batch with one ``torchvision.io.decode_jpeg`` call (nvJPEG on CUDA)
and applies the augmentation to the batch (:mod:`domainbed.datasets.batched_augment`).
Files that are not plain RGB or grayscale JPEGs (PNG, CMYK JPEG, ...) are decoded by the
worker with PIL and sent as pixels.

Selected by the hparam ``input_pipeline``: ``auto`` (the device path on CUDA for image
folders whose files are mostly JPEG, the CPU path otherwise), ``cpu`` or ``device``
(``device`` on a CPU-only machine runs the batched path on the CPU, which is how the tests
exercise it). Only training batches take this path; evaluation keeps the CPU loaders.
The loaders themselves are made by :mod:`domainbed.training.input_pipeline`.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from domainbed.datasets.augment_params import AugmentParams, draw_params
from domainbed.datasets.bad_images import BadImageWarning, record_bad_image
from domainbed.datasets.base import DatasetError, MultipleDomainDataset
from domainbed.datasets.batched_augment import augment_batch
from domainbed.datasets.images import ImageFolderDomains
from domainbed.datasets.transforms import TrainAugment
from domainbed.lib.errors import UserError
from domainbed.lib.seeding import sample_generator

# Values of the hparam input_pipeline (declared with the family hparams, default auto).
PIPELINES = ("auto", "cpu", "device")
_JPEG_EXTENSIONS = (".jpg", ".jpeg")


@dataclass
class EncodedImage:
    """One training sample as a worker sends it: the file's JPEG bytes (``encoded``) or
    its pixels decoded with PIL, the size read from the header, and its augmentation."""

    data: torch.Tensor  # 1-D uint8 bytes, or (3, H, W) uint8 pixels
    encoded: bool
    height: int
    width: int
    path: str
    seed: int | None = None
    params: AugmentParams | None = None


@dataclass
class EncodedBatch:
    images: list[EncodedImage]
    labels: torch.Tensor
    spec: Any = None  # the AugmentSpec of the domain (None: evaluation transform, no augmentation)


def read_for_device(path: str) -> EncodedImage:
    """The file's bytes and header size; decodes with PIL only what nvJPEG may not take."""
    from torchvision.transforms.v2 import functional as F

    with open(path, "rb") as f:
        raw = f.read()
    with Image.open(io.BytesIO(raw)) as img:  # reads the header only
        if img.format == "JPEG" and img.mode in ("RGB", "L"):
            data = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            return EncodedImage(data, True, img.height, img.width, path)
        pixels = F.pil_to_tensor(img.convert("RGB"))
    return EncodedImage(pixels, False, int(pixels.shape[1]), int(pixels.shape[2]), path)


def fetch_encoded(root: Dataset, index: int, seed: int) -> tuple[tuple[EncodedImage, Any], int]:
    """The device pipeline's ``fetch`` (see :class:`domainbed.training.loaders.SeededSamples`)."""
    from domainbed.datasets._folder_domain import ImageDomain

    if not isinstance(root, ImageDomain):
        raise DatasetError(
            f"input_pipeline device reads image files, but this domain is a {type(root).__name__}; "
            "use the hparam input_pipeline cpu (or auto)"
        )
    image, target = root.load_with_replacement(index, read_for_device)
    spec = root.transform.spec if isinstance(root.transform, TrainAugment) else None
    if spec is not None:
        image.seed = seed
        image.params = draw_params(image.height, image.width, spec, sample_generator(seed))
    return (image, spec), target


def collate_encoded(samples: Sequence[tuple[tuple[EncodedImage, Any], int]]) -> EncodedBatch:
    assert len({spec for (_, spec), _ in samples}) == 1, "a batch mixes augmented and plain samples"
    return EncodedBatch([image for (image, _), _ in samples], torch.tensor([y for _, y in samples]), samples[0][0][1])


def _decode_jpeg(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 marks its decoders deprecated in favour of TorchCodec, which is
        # not a dependency of this package; the function is still the supported nvJPEG path.
        warnings.simplefilter("ignore", DeprecationWarning)
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)


def _decode_one_on_cpu(image: EncodedImage) -> torch.Tensor | None:
    from torchvision.transforms.v2 import functional as F

    try:
        return _decode_jpeg([image.data], torch.device("cpu"))[0]
    except RuntimeError:
        pass
    try:
        with Image.open(io.BytesIO(image.data.numpy().tobytes())) as img:
            return F.pil_to_tensor(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError):
        return None


def decode_images(images: Sequence[EncodedImage], device: torch.device) -> list[torch.Tensor]:
    """uint8 ``(3, H, W)`` images on ``device``: the JPEGs in one batched call, the others
    copied. If the batched call fails, each file is decoded on the CPU; a file nothing can
    decode is replaced by another image of the batch, with a :class:`BadImageWarning`."""
    out: list[torch.Tensor | None] = [None] * len(images)
    jpegs = [i for i, im in enumerate(images) if im.encoded]
    if jpegs:
        try:
            decoded: list[torch.Tensor | None] = list(_decode_jpeg([images[i].data for i in jpegs], device))
        except RuntimeError:
            decoded = [_decode_one_on_cpu(images[i]) for i in jpegs]
            decoded = [None if d is None else d.to(device) for d in decoded]
        for i, d in zip(jpegs, decoded):
            out[i] = d
    for i, im in enumerate(images):
        if not im.encoded:
            out[i] = im.data.to(device, non_blocking=True)
    good = [i for i, d in enumerate(out) if d is not None]
    if not good:
        raise DatasetError(f"no image of a training batch could be decoded (first file: {images[0].path}); "
                           "check the files, or train with the hparam input_pipeline cpu")
    for i in range(len(out)):
        if out[i] is None:
            record_bad_image()
            warnings.warn(f"could not decode {images[i].path}; using another image of the batch instead",
                          BadImageWarning, stacklevel=2)
            out[i] = out[good[i % len(good)]]
    return out  # type: ignore[return-value]


def transform_batch(batch: EncodedBatch, device: torch.device, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode and augment one domain's batch on ``device``; returns ``(x, y)`` there."""
    pixels = decode_images(batch.images, device)
    params = None
    if batch.spec is not None:
        params = []
        for image, px in zip(batch.images, pixels):
            p = image.params
            h, w = int(px.shape[-2]), int(px.shape[-1])
            if (h, w) != (image.height, image.width):  # header and decoder disagree: draw again
                p = draw_params(h, w, batch.spec, sample_generator(image.seed))
            params.append(p)
    x = augment_batch(pixels, params, image_size)
    return x, batch.labels.to(device, non_blocking=True)


class DeviceBatches:
    """Iterable of ``(x, y)`` on ``device``, made from a loader of :class:`EncodedBatch`."""

    def __init__(self, loader: DataLoader, device: torch.device | str, image_size: int):
        self.loader, self.device, self.image_size = loader, torch.device(device), image_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            yield transform_batch(batch, self.device, self.image_size)


def mostly_jpeg(dataset: MultipleDomainDataset) -> bool:
    paths = [path for domain in dataset.datasets for path, _ in getattr(domain, "samples", [])]
    return bool(paths) and sum(p.lower().endswith(_JPEG_EXTENSIONS) for p in paths) * 2 >= len(paths)


def resolve_input_pipeline(hparams: Mapping[str, Any], dataset: MultipleDomainDataset, device: torch.device) -> str:
    """``cpu`` or ``device`` for the hparam ``input_pipeline`` on this dataset and device."""
    value = str(hparams.get("input_pipeline", "auto"))
    if value not in PIPELINES:
        raise UserError(f"hparam input_pipeline must be one of {', '.join(PIPELINES)}; got {value!r}")
    folders = isinstance(dataset, ImageFolderDomains)
    if value == "device" and not folders:
        raise UserError(
            f"hparam input_pipeline device decodes image files, but {type(dataset).__name__} holds tensors; "
            "use input_pipeline auto or cpu"
        )
    if value == "auto":
        return "device" if torch.device(device).type == "cuda" and folders and mostly_jpeg(dataset) else "cpu"
    return value
