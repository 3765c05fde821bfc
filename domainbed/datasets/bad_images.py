"""Undecodable image files: the warning, the process-wide count, and the decoder.

Image datasets replace a file that fails to decode by another image of the same domain
instead of ending a long run; each replacement warns and is counted here, so the training
script can report the total at the end. Imports nothing heavy (no torch, no torchvision).
"""

from __future__ import annotations

import multiprocessing

from PIL import Image

# Shared memory, so that DataLoader workers (forked processes) add to the same counter
# the training script reads at the end.
_bad_image_total = multiprocessing.Value("q", 0)


class BadImageWarning(UserWarning):
    """An image could not be decoded and was replaced by another sample of its domain."""


def record_bad_image() -> None:
    """Count one undecodable file (shared with forked DataLoader workers)."""
    with _bad_image_total.get_lock():
        _bad_image_total.value += 1


def bad_image_count() -> int:
    """Undecodable files met so far by every image domain of this process and of its
    forked DataLoader workers (a file is counted once per process that meets it)."""
    return int(_bad_image_total.value)


def load_rgb(path: str) -> Image.Image:
    """Decode an image file fully (``convert`` forces the decode) as an RGB PIL image."""
    with open(path, "rb") as f:
        return Image.open(f).convert("RGB")
