"""Image files as model inputs: the evaluation transform, folder layouts, unreadable files.

The transform is the one evaluation used in training: resize to the model's input size
(aspect not kept), scale to [0, 1], normalise with the model file's ``normalisation``.
An unreadable file never stops a batch: :class:`ImageFiles` yields it as a failure, and
:func:`collate` keeps the readable images and the failures apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset

from domainbed.lib.errors import UserError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def image_transform(input_shape: Sequence[int], normalisation: Mapping[str, Sequence[float]] | None) -> Callable:
    """PIL image -> ``(C, H, W)`` float tensor as the model expects (1 or 3 channels)."""
    from torchvision.transforms import v2

    channels, height, width = (int(v) for v in input_shape)
    if channels not in (1, 3):
        raise UserError(f"this model takes {channels}-channel inputs; image files can feed 1- or 3-channel models only")
    mode = "RGB" if channels == 3 else "L"
    steps: list[Any] = [lambda im: im.convert(mode), v2.Resize((height, width), antialias=True), v2.ToImage(),
                        v2.ToDtype(torch.float32, scale=True)]
    if normalisation:
        steps.append(v2.Normalize(mean=list(normalisation["mean"]), std=list(normalisation["std"])))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)


def list_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files among ``inputs`` (files as given; folders searched recursively, sorted)."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"{path} is neither an image file nor a folder")
    return found


@dataclass(frozen=True)
class Failure:
    """An input file that could not be read as an image."""

    path: Path
    reason: str


class ImageFiles(Dataset):
    """``files[i]`` -> ``(i, tensor, None)``, or ``(i, None, reason)`` when it is unreadable."""

    def __init__(self, files: Sequence[Path], transform: Callable, labels: Sequence[int] | None = None):
        self.files, self.transform, self.labels = list(files), transform, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, str | None]:
        from PIL import Image

        try:
            with Image.open(self.files[i]) as image:
                return i, self.transform(image), None
        except Exception as err:  # any decoding failure: reported, the rest still run
            return i, None, f"{type(err).__name__}: {(str(err).splitlines() or [''])[0][:120]}"


def collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """Indices and stacked tensors of the readable items, and ``(index, reason)`` of the others."""
    ok = [(i, x) for i, x, _ in items if x is not None]
    bad = [(i, reason) for i, x, reason in items if x is None]
    return [i for i, _ in ok], (torch.stack([x for _, x in ok]) if ok else None), bad


def labelled_folder(root: str | os.PathLike, class_names: Sequence[str]) -> dict[str, list[tuple[Path, int]]]:
    """Labelled images under ``root``, per domain.

    Two layouts: ``root/<class>/<image>`` (one domain, named after ``root``) when every
    sub-folder is one of ``class_names``, else ``root/<domain>/<class>/<image>``. Class
    folders are matched to the model's classes by name; a folder of another name is an error.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; expected ROOT/<class>/<image> or ROOT/<domain>/<class>/<image>")
    index = {name: i for i, name in enumerate(class_names)}
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise UserError(f"{root} has no sub-folders; expected ROOT/<class>/<image> or ROOT/<domain>/<class>/<image>")
    domains = {root.name: root} if all(p.name in index for p in subdirs) else {p.name: p for p in subdirs}
    out: dict[str, list[tuple[Path, int]]] = {}
    for name, folder in domains.items():
        items: list[tuple[Path, int]] = []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if class_dir.name not in index:
                raise UserError(f"class folder {class_dir} is not one of the model's classes "
                                f"({', '.join(class_names)}); rename it or leave it out")
            items += [(p, index[class_dir.name]) for p in list_images([class_dir])]
        if items:
            out[name] = items
    if not out:
        raise UserError(f"no images under {root} (extensions {', '.join(IMAGE_EXTENSIONS)})")
    return out
